"""e2mc.cluster and e2mc.launcher without SLURM: environment detection, requeue decisions, job arguments,
grids, and the submitit hand-over (the real cluster is exercised in test_slurm_jobs.py)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import submitit

from e2mc import cluster, launcher, resources
from e2mc.naming import ARMS
from e2mc.cluster import ClusterError, RequeueOutcome, SlurmJob
from e2mc.config import load_config
from e2mc.train import train
from fake_data import write_fake_fashion_mnist

ROOT = Path(__file__).resolve().parent.parent

# What `srun` sets in task 1 of a two-node, one-task-per-node step of array task 3 of job 500.
STEP_ENV = {"SLURM_JOB_ID": "503", "SLURM_ARRAY_JOB_ID": "500", "SLURM_ARRAY_TASK_ID": "3",
            "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1",
            "SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2",
            "SLURM_JOB_NODELIST": "gpu[017-018]", "SLURM_RESTART_COUNT": "2"}
# The batch shell of a plain two-task job: SLURM_NTASKS counts the allocation, one process runs.
BATCH_ENV = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "vm"}


class FakeScontrol:
    """Stands in for subprocess.run: answers `scontrol show job` with ``show`` and records every command."""

    def __init__(self, show="JobId=77 JobState=RUNNING Reason=None Requeue=1 Restarts=0 Command=/x/run.sh a b",
                 fail=()):
        self.show, self.fail, self.commands = show, fail, []

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        code = 1 if command[1] in self.fail else 0
        out = self.show if command[:4] == ["scontrol", "--oneliner", "show", "job"] else ""
        return subprocess.CompletedProcess(command, code, out, "scontrol: error: boom" if code else "")


def refuse_to_run(command, **kwargs):
    raise AssertionError(f"ran {command} where nothing should run")


@pytest.fixture
def fake_environ(monkeypatch):
    """Replace os.environ by exactly the given variables (submitit reads os.environ directly)."""
    def use(variables):
        environ = dict(variables)
        monkeypatch.setattr(os, "environ", environ)
        return environ
    return use


# --- detection ----------------------------------------------------------------------------------

def test_step_environment_is_read_field_by_field():
    job = cluster.slurm_job(STEP_ENV)
    assert job == SlurmJob(job_id="503", array_job_id="500", array_task_id=3, in_step=True, num_tasks=2,
                           global_rank=1, local_rank=0, restart_count=2)
    assert job.requeue_id == "500_3"  # the array task, not the attempt's own job id


def test_batch_shell_counts_as_one_process_and_outside_slurm_is_none():
    job = cluster.slurm_job(BATCH_ENV)
    assert (job.in_step, job.num_tasks, job.restart_count, job.requeue_id) == (False, 1, 0, "77")
    assert cluster.slurm_job({"HOME": "/root"}) is None


def test_export_sets_torch_variables_from_slurm_through_submitit(fake_environ):
    environ = fake_environ(STEP_ENV)
    exported = cluster.export_torch_distributed()
    expected = {"MASTER_ADDR": "gpu017", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    assert {k: environ[k] for k in expected} == expected
    assert exported == {k: environ[k] for k in exported}
    assert environ["SUBMITIT_EXECUTOR"] == "slurm"
    assert 20000 <= int(environ["MASTER_PORT"]) <= 60000
    assert "CUDA_VISIBLE_DEVICES" not in environ
    # Rank 0 of the same job computes the same port (derived from the job id, not random per process).
    rank0 = fake_environ({**STEP_ENV, "SLURM_PROCID": "0", "SLURM_NODEID": "0"})
    cluster.export_torch_distributed()
    assert (rank0["MASTER_PORT"], rank0["RANK"]) == (environ["MASTER_PORT"], "0")


@pytest.mark.parametrize("variables", [
    BATCH_ENV,                                                        # batch shell: not a step
    {**STEP_ENV, "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"},  # a single task
    {**STEP_ENV, "RANK": "0", "WORLD_SIZE": "8"},                    # torchrun inside the allocation
    {"PATH": "/usr/bin"},                                             # not SLURM at all
])
def test_export_leaves_environment_alone(fake_environ, variables):
    environ = fake_environ(variables)
    assert cluster.export_torch_distributed() is None
    assert environ == variables


# --- requeue ------------------------------------------------------------------------------------

def test_requeue_command_names_array_task_or_job():
    assert cluster.requeue_command(cluster.slurm_job(STEP_ENV)) == ["scontrol", "requeue", "500_3"]
    assert cluster.requeue_command(cluster.slurm_job(BATCH_ENV)) == ["scontrol", "requeue", "77"]


def test_rank0_requeues_after_usr2_with_the_array_task_id():
    run = FakeScontrol()
    outcome = cluster.requeue_after_stop({"status": "interrupted", "signal": "SIGUSR2"},
                                         {**STEP_ENV, "SLURM_PROCID": "0"}, run)
    assert outcome.requeued
    assert run.commands == [["scontrol", "--oneliner", "show", "job", "500_3"], ["scontrol", "requeue", "500_3"]]
    assert "restart 3" in outcome.message


@pytest.mark.parametrize(("summary", "environ"), [
    ({"status": "interrupted", "signal": "SIGUSR2"}, {"HOME": "/root"}),   # outside SLURM
    ({"status": "interrupted", "signal": "SIGUSR2"}, STEP_ENV),            # rank 1
    ({"status": "finished"}, BATCH_ENV),                                    # nothing stopped it
])
def test_no_requeue_outside_slurm_on_other_ranks_or_after_a_finished_run(summary, environ):
    outcome = cluster.requeue_after_stop(summary, environ, refuse_to_run)
    assert outcome == RequeueOutcome(False, outcome.message) and not outcome.requeued


@pytest.mark.parametrize(("signal_name", "show", "requeued"), [
    ("SIGUSR2", "JobState=RUNNING Reason=None Requeue=1", True),
    ("SIGUSR1", "JobState=RUNNING Reason=None Requeue=1", True),
    ("SIGTERM", "JobState=COMPLETING Reason=TimeLimit Requeue=1", True),   # hit the time limit
    ("SIGTERM", "JobState=PREEMPTED Reason=None Requeue=1", True),
    ("SIGTERM", "JobState=COMPLETING Reason=None Requeue=1", False),       # scancel: stay cancelled
    ("SIGUSR2", "JobState=RUNNING Reason=None Requeue=0", False),          # sbatch --no-requeue
])
def test_requeue_decision_follows_signal_and_job_state(signal_name, show, requeued):
    run = FakeScontrol(show=f"JobId=77 {show} Restarts=0")
    outcome = cluster.requeue_after_stop({"status": "interrupted", "signal": signal_name}, BATCH_ENV, run)
    assert outcome.requeued is requeued
    assert (["scontrol", "requeue", "77"] in run.commands) is requeued


def test_failed_requeue_is_reported_not_raised():
    outcome = cluster.requeue_after_stop({"status": "interrupted", "signal": "SIGUSR2"}, BATCH_ENV,
                                         FakeScontrol(fail=("requeue",)))
    assert not outcome.requeued and "boom" in outcome.message and "resubmit" in outcome.message

    def no_scontrol(command, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "scontrol")

    outcome = cluster.requeue_after_stop({"status": "interrupted", "signal": "SIGUSR2"}, BATCH_ENV, no_scontrol)
    assert not outcome.requeued and "scontrol" in outcome.message and "not requeued" in outcome.message


def test_requeues_are_capped_like_submitits_max_num_timeout():
    """A job requeued E2MC_MAX_REQUEUES times stops requeueing (a too-short time limit loops otherwise)."""
    stopped = {"status": "interrupted", "signal": "SIGUSR2"}
    capped = cluster.requeue_after_stop(stopped, {**BATCH_ENV, "SLURM_RESTART_COUNT": "3", "E2MC_MAX_REQUEUES": "3"},
                                        refuse_to_run)
    assert not capped.requeued and "requeued 3 times" in capped.message and "E2MC_MAX_REQUEUES=3" in capped.message
    run = FakeScontrol()
    below = cluster.requeue_after_stop(stopped, {**BATCH_ENV, "SLURM_RESTART_COUNT": "2", "E2MC_MAX_REQUEUES": "3"},
                                       run)
    assert below.requeued and "restart 3 of at most 3" in below.message
    assert "DUE TO JOB REQUEUE" in below.message  # the log explains the noise SLURM prints next
    default = cluster.requeue_after_stop(
        stopped, {**BATCH_ENV, "SLURM_RESTART_COUNT": str(cluster.DEFAULT_MAX_REQUEUES)}, refuse_to_run)
    assert not default.requeued


@pytest.mark.parametrize(("text", "seconds"), [("00:02:00", 120), ("1-02:00:00", 93600), ("10:30", 630),
                                               ("45", 2700), ("UNLIMITED", None), ("Partition_Limit", None)])
def test_time_limit_reads_scontrols_formats(text, seconds):
    assert cluster.time_limit_seconds(text) == seconds


def test_a_time_limit_at_the_signal_lead_is_refused_in_the_batch_shell():
    """--time=00:02:00 with --signal=USR2@120: the warning fires at start; continue-args refuses it."""
    short = FakeScontrol(show="JobId=77 JobState=RUNNING Reason=None Requeue=1 Restarts=0 TimeLimit=00:02:00")
    with pytest.raises(ClusterError, match=r"not well above the USR2 warning sent 120 s before it.*--time=8:00"):
        cluster.check_job_time_limit({**BATCH_ENV, "E2MC_SIGNAL_LEAD_S": "120"}, short)
    long = FakeScontrol(show="JobId=77 JobState=RUNNING Reason=None Requeue=1 Restarts=0 TimeLimit=00:08:00")
    cluster.check_job_time_limit({**BATCH_ENV, "E2MC_SIGNAL_LEAD_S": "120"}, long)
    cluster.check_job_time_limit({**BATCH_ENV, "E2MC_SIGNAL_LEAD_S": "0"}, refuse_to_run)  # no --signal
    cluster.check_job_time_limit({**STEP_ENV, "E2MC_SIGNAL_LEAD_S": "120"}, refuse_to_run)  # only the batch shell


# --- job arguments ------------------------------------------------------------------------------

def test_array_tasks_map_to_arms_fastest_then_seeds():
    arms = ["original", "e2mc", "mmcr"]
    assert [cluster.task_assignment(arms, t) for t in range(6)] == [
        ("original", 0), ("e2mc", 0), ("mmcr", 0), ("original", 1), ("e2mc", 1), ("mmcr", 1)]
    assert cluster.task_assignment(arms, 4, seeds=[7, 9]) == ("e2mc", 9)
    with pytest.raises(ClusterError, match="--array=0-5"):
        cluster.task_assignment(arms, 6, seeds=[7, 9])


def test_continue_arguments_are_stable_across_requeues():
    environ = {"SLURM_JOB_ID": "41", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "1",
               "E2MC_CONFIG": "configs/mini/vicreg.yaml", "E2MC_ARM": "entropy_only", "E2MC_OUTPUT": "/scratch/r",
               "E2MC_OVERRIDES": "train.epochs=2 'model.heads={expander: [64, 64]}'"}
    expected = ["continue", "--config", "configs/mini/vicreg.yaml", "criterion.name=e2mc", "criterion.cov_coeff=0",
                "train.seed=1", "train.output_dir=/scratch/r/vicreg/entropy_only/seed1", "train.epochs=2",
                "model.heads={expander: [64, 64]}"]
    assert cluster.continue_arguments("vicreg", environ) == expected
    requeued = {**environ, "SLURM_JOB_ID": "97", "SLURM_RESTART_COUNT": "1"}
    assert cluster.continue_arguments("vicreg", requeued) == expected
    # The arguments load: every arm override is a valid configuration key.
    cfg = load_config(ROOT / expected[2], expected[3:])
    assert (cfg.criterion.cov_coeff, cfg.train.seed, cfg.model.heads) == (0.0, 1, {"expander": [64, 64]})


def test_sweep_defaults_and_errors():
    args = cluster.continue_arguments("swav", {"SLURM_ARRAY_TASK_ID": "4", "E2MC_SEEDS": "10,11"},
                                      default_arms=("original", "e2mc", "uniformity"))
    assert args[:3] == ["continue", "--config", "configs/imagenet/swav.yaml"]
    assert args[3:] == ["criterion.name=e2mc", "train.seed=11", "train.output_dir=runs/slurm/swav/e2mc/seed11"]
    with pytest.raises(ClusterError, match="unknown arm 'e2mcc'"):
        cluster.continue_arguments("swav", {"E2MC_ARM": "e2mcc"})
    with pytest.raises(ClusterError, match="E2MC_SEEDS must hold integers"):
        cluster.continue_arguments("swav", {"E2MC_SEEDS": "a b"})


def test_every_arm_is_a_valid_configuration():
    for arm, overrides in ARMS.items():
        cfg = load_config(ROOT / "configs/mini/swav.yaml", list(overrides))
        assert cfg.criterion.name == overrides[0].split("=")[1], arm


def test_evaluate_arguments_point_at_the_training_output():
    environ = {"E2MC_METHOD": "simsiam", "E2MC_ARM": "original", "SLURM_ARRAY_TASK_ID": "2"}
    assert cluster.evaluate_arguments(environ) == [
        "evaluate", "--checkpoint", "runs/slurm/simsiam/original/seed2/checkpoint.pt", "--method", "simsiam",
        "--arm", "original", "--results-dir", "results/slurm/simsiam", "--seeds", "2"]
    # the training seed is the probe seed unless the script's arguments choose the probe seeds
    assert cluster.evaluate_arguments(environ, ["--seeds", "0", "1"])[-3:] == ["--seeds", "0", "1"]
    assert cluster.evaluate_arguments(environ, ["--seeds", "0", "1"]).count("--seeds") == 1
    release = {"E2MC_METHOD": "vicreg", "E2MC_CHECKPOINT": "/ckpt/resnet50_fullckpt.pth", "E2MC_RESULTS": "out"}
    assert cluster.evaluate_arguments(release) == [
        "evaluate", "--checkpoint", "/ckpt/resnet50_fullckpt.pth", "--method", "vicreg", "--results-dir", "out/vicreg"]
    with pytest.raises(ClusterError, match="set E2MC_METHOD"):
        cluster.evaluate_arguments({})


def test_module_entry_prints_one_argument_per_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "E2MC_"))}
    env["E2MC_OVERRIDES"] = "'model.heads={dim: 32}'"
    out = subprocess.run([sys.executable, "-m", "e2mc.cluster", "continue-args", "simsiam"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["continue", "--config", "configs/imagenet/simsiam.yaml", "criterion.name=e2mc",
                                "train.seed=0", "train.output_dir=runs/slurm/simsiam/e2mc/seed0",
                                "model.heads={dim: 32}"]
    bad = subprocess.run([sys.executable, "-m", "e2mc.cluster", "continue-args", "simsiam"],
                         env={**env, "E2MC_ARM": "nope"}, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown arm 'nope'" in bad.stderr


# --- the launcher -------------------------------------------------------------------------------

def test_grid_expands_every_combination_into_distinct_stable_folders():
    specs = launcher.expand_grid("configs/mini/{method}.yaml",
                                 {"method": ["vicreg", "simsiam"], "arm": ["original", "e2mc"],
                                  "criterion.ent_coeff": [1, 10], "train.seed": [0, 1]},
                                 ["train.epochs=1"], "runs/g")
    assert len(specs) == 16 and len({s.output_dir for s in specs}) == 16
    first = specs[0]
    assert first.config == "configs/mini/vicreg.yaml"
    assert first.output_dir == "runs/g/vicreg/original,criterion.ent_coeff=1/seed0"
    assert first.overrides == ("train.epochs=1", "criterion.name=none", "criterion.ent_coeff=1", "train.seed=0",
                               "train.output_dir=runs/g/vicreg/original,criterion.ent_coeff=1/seed0")
    assert specs[-1].output_dir == "runs/g/simsiam/e2mc,criterion.ent_coeff=10/seed1"
    cfg = load_config(specs[-1].config, list(specs[-1].overrides))
    assert (cfg.method, cfg.criterion.name, cfg.criterion.ent_coeff, cfg.train.seed) == ("simsiam", "e2mc", 10.0, 1)


def test_grid_errors_name_the_fix(tmp_path):
    with pytest.raises(ClusterError, match=r"\{method\} placeholder"):
        launcher.expand_grid("configs/mini/vicreg.yaml", {"method": ["vicreg", "swav"]})
    with pytest.raises(ClusterError, match=r"\{method\} placeholder"):
        launcher.expand_grid("configs/mini/{method}.yaml", {"arm": ["e2mc"]})
    with pytest.raises(ClusterError, match="would both train in"):
        launcher.expand_grid("configs/mini/vicreg.yaml", {"arm": ["vc", "vc"]})
    with pytest.raises(ClusterError, match="train the same configuration"):  # SwAV's own transform
        launcher.expand_grid("configs/mini/swav.yaml", {"arm": ["e2mc", "e2mc_gaussian_cdf"]})
    with pytest.raises(ClusterError, match="KEY=V1,V2"):
        launcher.parse_axis("criterion.ent_coeff")
    grid = tmp_path / "grid.yaml"
    grid.write_text("config: configs/mini/swav.yaml\ngrids: {arm: [e2mc]}\n")
    with pytest.raises(ClusterError, match=r"unknown keys \['grids'\]"):
        launcher.read_grid_file(str(grid))


def test_axis_values_are_yaml_and_brackets_group():
    assert launcher.parse_axis("criterion.ent_coeff=1,10.5") == ("criterion.ent_coeff", [1, 10.5])
    assert launcher.parse_axis("model.widths=[8, 16],[4,8]") == ("model.widths", [[8, 16], [4, 8]])
    assert launcher.parse_axis("criterion.params={t: 2},{}") == ("criterion.params", [{"t": 2}, {}])


def test_checkpoint_resubmits_the_same_job():
    job = launcher.TrainingJob(launcher.expand_grid("configs/mini/vicreg.yaml", {"arm": ["e2mc"]})[0])
    delayed = job.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function is job and delayed.args == () and delayed.kwargs == {}


def test_interrupted_job_hands_its_signal_to_the_handler_installed_before(monkeypatch):
    """Inside a submitit job that handler is submitit's (checkpoint + requeue); train() had shadowed it."""
    received = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: received.append(signum))
    try:
        monkeypatch.setattr("e2mc.runs.train", lambda cfg, **kw: {"status": "interrupted", "signal": "SIGUSR2"})
        job = launcher.TrainingJob(launcher.expand_grid("configs/mini/vicreg.yaml", {"arm": ["e2mc"]})[0])
        assert job()["status"] == "interrupted"
        assert received == [signal.SIGUSR2]
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)  # outside submitit: nothing to hand to, no crash
        assert job()["status"] == "interrupted"
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_submit_debug_cluster_trains_the_grid(tmp_path, capsys):
    from e2mc.__main__ import main

    data = write_fake_fashion_mnist(tmp_path / "data", n_train=128, n_test=16)
    init = tmp_path / "init"
    tiny = [f"data.root={data}", "data.batch_size=32", "model.heads={expander: [32, 32]}"]
    train(load_config(ROOT / "configs/mini/pretrain/vicreg.yaml",
                      [*tiny, "train.epochs=0", f"train.output_dir={init}"]))
    code = main(["submit", "--cluster", "debug", "--wait", "--config", str(ROOT / "configs/mini/vicreg.yaml"),
                 "--grid", "arm=original,e2mc", "--output-root", str(tmp_path / "runs"),
                 "--log-dir", str(tmp_path / "submitit"), *tiny, "train.epochs=1",
                 f"train.init={init / 'checkpoint.pt'}"])
    out = capsys.readouterr().out
    assert code == 0, out
    for arm in ("original", "e2mc"):
        run = tmp_path / "runs" / "vicreg" / arm / "seed0"
        assert f"finished\t{run}" in out
        saved = load_config(run / "config.yaml")
        assert saved.criterion.name == {"original": "none", "e2mc": "e2mc"}[arm]


@pytest.mark.parametrize(("name", "runs"), [("paper_main", 18), ("swav_criteria", 12), ("ablations", 9)])
def test_shipped_grid_files_expand(name, runs):
    """The grids of slurm/grids/, on the mini configurations (the ImageNet ones differ in sizes only)."""
    spec = launcher.read_grid_file(str(ROOT / f"slurm/grids/{name}.yaml"))
    config = str(ROOT / spec["config"].replace("configs/imagenet/", "configs/mini/"))
    specs = launcher.expand_grid(config, spec["grid"], spec.get("overrides", []), spec["output_root"])
    assert len(specs) == runs == len({s.output_dir for s in specs})


def test_submit_local_grid_of_seeds_with_every_epoch_draws_fig6(tmp_path, capsys, monkeypatch):
    """A submit grid over train.seed with per-epoch probes into one results folder is plottable: each run
    is probed with its training seed (issue 23: probe seed 0 for both gave DuplicateResultsError "arm:
    base, epoch: 0"). Also: every run goes through e2mc.runs.run_training (the probes are written), on
    CPU --cluster local asks for one task per run by default (two made a gloo group on the same cores),
    --wait reports as runs end, options may follow key=value words, and the provenance of each run
    records the e2mc command it ran, not submitit's _submit.py."""
    from e2mc import figure_style, notebook_io, plots, results
    from e2mc.__main__ import main

    monkeypatch.setattr(resources, "local_gpus", lambda: 0)  # a CPU machine, whatever runs the tests
    data = write_fake_fashion_mnist(tmp_path / "data", n_train=128, n_test=32)
    init = tmp_path / "init"
    tiny = [f"data.root={data}", "data.batch_size=32", "model.heads={expander: [32, 32]}"]
    train(load_config(ROOT / "configs/mini/pretrain/vicreg.yaml",
                      [*tiny, "train.epochs=0", f"train.output_dir={init}"]))
    code = main(["submit", "--cluster", "local", "--config", str(ROOT / "configs/mini/vicreg.yaml"),
                 "--grid", "arm=e2mc", "--grid", "train.seed=0,1", *tiny, "train.epochs=1",
                 "--output-root", str(tmp_path / "runs"), "--log-dir", str(tmp_path / "submitit"),
                 f"train.init={init / 'checkpoint.pt'}", "eval.every_epoch=true", "--wait", "--cpus-per-task", "1",
                 "eval.label_fractions=[0.1]", f"eval.results_dir={tmp_path / 'probes'}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 node(s) x 1 task(s), 0 GPU(s) per node, 1 CPU(s) per task" in out and "waiting for 2 run(s)" in out
    table = results.load(tmp_path / "probes")
    assert sorted(zip(table["seed"], table["epoch"])) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert set(table["arm"]) == {"e2mc"} and set(table["label_fraction"]) == {0.1}
    for seed in (0, 1):  # the probe seed is the training seed
        assert {c["train"]["seed"] for c in table[table["seed"] == seed]["config"]} == {seed}
    written = figure_style.save_figure(plots.fig6_epochs(notebook_io.load_results(tmp_path / "probes"), label_fraction=0.1),
                                tmp_path / "figs", "fig6_epochs", ["png"])
    assert [p.stat().st_size > 0 for p in map(Path, written)] == [True]
    summary = json.loads((tmp_path / "runs" / "vicreg" / "e2mc" / "seed1" / "summary.json").read_text())
    command = summary["provenance"]["command"]
    assert command.startswith("python -m e2mc continue --config") and "train.seed=1" in command, command


@pytest.mark.parametrize(("method", "expected"), [("vicreg", "gaussian_cdf"), ("swav", "sigmoid"),
                                                  ("barlowtwins", "gaussian_cdf")])
def test_the_other_transform_arm_follows_the_method(method, expected):
    """sweep_ablations.sh names the transform ablation once for every method; the registry knows which."""
    words = cluster.continue_arguments(method, {"E2MC_ARM": "e2mc_other_transform",
                                                "E2MC_CONFIG": f"configs/mini/{method}.yaml"})
    assert f"criterion.transform={expected}" in words
    assert any(w.startswith("train.output_dir=") and w.endswith(f"/{method}/e2mc_{expected}/seed0") for w in words)


def test_continue_args_checks_the_configuration():
    code = cluster.main(["continue-args", "vicreg", "--", "criterion.ent_coeff=-1"])
    assert code == 2


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "slurm").glob("*.sh")))
def test_every_job_script_is_a_thin_wrapper_of_common_sh(script):
    """bash reads every script; each job script runs two commands, the shared preamble (found through the
    folder sbatch was called from, since sbatch runs a spooled copy) and e2mc_run, which asks e2mc.cluster
    for the arguments (loading and checking the configuration) before it starts any step."""
    path = ROOT / "slurm" / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    text = path.read_text()
    if script == "common.sh":
        run = text[text.index("e2mc_run() {"):]
        assert run.index("e2mc_arguments") < run.index("e2mc_srun -m e2mc")
        return
    commands = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2, commands
    assert commands[0].startswith('source "${E2MC_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh" || {')
    assert commands[1].startswith("e2mc_run ") and commands[1].endswith(' -- "$@"')


def test_the_generic_script_continues_any_registered_method(tmp_path):
    env = {**os.environ, "E2MC_METHOD": "barlowtwins", "E2MC_CONFIG": "configs/mini/barlowtwins.yaml",
           "E2MC_ROOT": str(ROOT), "E2MC_PYTHON": sys.executable, "E2MC_OUTPUT": str(tmp_path)}
    # What slurm/continue.sh runs before its step: the arguments of this method's job, checked.
    listing = subprocess.run([sys.executable, "-m", "e2mc.cluster", "continue-args", "barlowtwins", "--",
                              "train.epochs=1"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert listing.returncode == 0, listing.stderr
    words = listing.stdout.splitlines()
    assert words[:3] == ["continue", "--config", "configs/mini/barlowtwins.yaml"]
    assert f"train.output_dir={tmp_path}/barlowtwins/e2mc/seed0" in words and words[-1] == "train.epochs=1"


def test_data_workers_fit_the_allocation(monkeypatch):
    """data.workers: 8 in a 2-CPU task would put 9 processes on 2 cores: one CPU stays for training."""
    from e2mc.runs import sized_workers

    cfg = load_config(ROOT / "configs/mini/vicreg.yaml", ["data.workers=8"])
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    sized = sized_workers(cfg)
    assert sized.data.workers == 1 and cfg.data.workers == 8 and sized.hash() == cfg.hash()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "16")
    assert sized_workers(cfg) is cfg


# --- submit: resources and interpreter ----------------------------------------------------------

SINFO = "gpu|64|512000|gpu:a100:4(S:0-1)\ncpu*|2|24000|(null)\ncpu*|8|64000|(null)\n"


class FakeSinfo:
    def __init__(self, stdout=SINFO):
        self.stdout = stdout

    def __call__(self, command, **kwargs):
        assert command[0] == "sinfo", command
        return subprocess.CompletedProcess(command, 0, self.stdout, "")


def submit_args(*words):
    from e2mc.__main__ import build_parser

    return build_parser().parse_args(["submit", "--config", "configs/mini/vicreg.yaml", *words])


@pytest.mark.parametrize(("words", "fits"), [
    ([], "GPU"),                                                   # the default 2 GPUs on the CPU partition
    (["--gpus-per-node", "0"], "largest node of the default partition has 8"),  # 1 x 10 CPUs
    (["--gpus-per-node", "0", "--cpus-per-task", "8"], None),
    (["--gpus-per-node", "0", "--cpus-per-task", "2", "--mem-gb", "100"], "has 62.5 GB"),
    (["--gpus-per-node", "0", "--cpus-per-task", "2", "--nodes", "2"], None),
    (["--gpus-per-node", "0", "--cpus-per-task", "2", "--nodes", "3"], "only 2 node"),
    (["--partition", "gpu", "--gpus-per-node", "4", "--tasks-per-node", "4"], None),
    (["--partition", "gpu", "--gpus-per-node", "8"], "no node of partition gpu has more than 4"),
])
def test_a_request_is_checked_against_sinfo_before_submitting(words, fits):
    args = submit_args(*words)
    nodes = resources.node_resources(args.partition, FakeSinfo())
    if fits is None:
        resources.check_fits(resources.resources(args), nodes, args.partition)
    else:
        with pytest.raises(ClusterError, match=fits):
            resources.check_fits(resources.resources(args), nodes, args.partition)


def test_default_resources_follow_the_cluster_and_the_gpus(monkeypatch):
    monkeypatch.setattr(resources, "local_gpus", lambda: 0)
    assert resources.resources(submit_args()) == resources.Resources(1, 2, 2, 10, None, 720)  # the paper on SLURM
    assert resources.resources(submit_args("--gpus-per-node", "0")).tasks_per_node == 1
    local = resources.resources(submit_args("--cluster", "local"))
    assert (local.tasks_per_node, local.gpus_per_node) == (1, 0)


def test_submit_shows_resources_defaults_and_the_jobs_interpreter(monkeypatch, capsys):
    from e2mc.__main__ import build_parser, main

    monkeypatch.setenv("E2MC_PYTHON", "apptainer exec e2mc.sif python")
    # options after key=value words are read too
    assert main(["submit", "--config", "configs/mini/vicreg.yaml", "train.epochs=1", "--dry-run",
                 "--gpus-per-node", "0", "data.limit=512"]) == 0
    out = capsys.readouterr().out
    assert "each run on slurm: 1 node(s) x 1 task(s), 0 GPU(s) per node, 10 CPU(s) per task, the partition's " \
           "default memory, 720 min; jobs run apptainer exec e2mc.sif python (E2MC_PYTHON)" in out
    assert "train.epochs=1 data.limit=512" in out
    parser = build_parser()
    help_text = " ".join(parser._subparsers._group_actions[0].choices["submit"].format_help().split())
    assert "time limit in minutes (default: 720)" in help_text and "(default: 10)" in help_text
    executor = launcher.make_executor(submit_args("--cluster", "local"), resources.Resources(1, 1, 0, 1, None, 5))
    assert executor._executor.python == "apptainer exec e2mc.sif python"


def test_submit_refuses_a_time_limit_near_the_signal_delay(capsys):
    from e2mc.__main__ import main

    assert main(["submit", "--config", "configs/mini/vicreg.yaml", "--time", "2", "--dry-run"]) == 2
    assert "not well above the USR2 warning sent 120 s" in capsys.readouterr().err

"""The job scripts in slurm/ and `python -m e2mc submit` on the real one-node SLURM cluster.

The mini configuration on tiny fake data (1 CPU per task, no GPU): an array of two seeds, the
linear probes of both and the Fig. 6 notebook drawn from them (the documented workflow), a job whose
time limit is at its USR2 lead (refused), a job preempted with USR2 that requeues itself and ends where an
uninterrupted run ends, a two-task DDP run on gloo whose ranks hold the same weights, and a
submitit job array, one task of it preempted.
All jobs are submitted by one module fixture so that they overlap on the two CPUs; a requeued job
waits cred_expire + 1 s (21 s with scripts/local_slurm.sh) before it starts again.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import papermill as pm
import pytest
import torch

from e2mc import checkpoints
from e2mc.config import load_config
from e2mc.meter import read_metrics
from e2mc.train import train
from fake_data import write_fake_fashion_mnist
from run_records import comparable_records, segment_starts
from slurm_cluster import TERMINAL_STATES, _clean_environment, job_info, slurm_cluster, submit, wait_for  # noqa: F401
from test_notebooks import kernel  # noqa: F401  (pytest fixture)
from test_plots import assert_png

ROOT = Path(__file__).resolve().parent.parent
JOB_TIMEOUT_S = 150  # every job here normally ends within ~60 s; the node is shared
SIGNAL_AFTER_S = 90  # how long a running job may take to log its first step before the test gives up
QUEUE_TIMEOUT_S = 600  # how long a job may wait for a CPU: on a loaded node it queues behind the others
HEADS = {"vicreg": "{expander: [64, 64]}", "swav": "{hidden_dim: 32, output_dim: 16, n_prototypes: 10}",
         "simsiam": "{dim: 32, pred_dim: 8, hidden_dim: 32}"}
ONE_CPU = ["--gpus-per-node=0", "--ntasks-per-node=1", "--cpus-per-task=1"]
PREEMPTED_EPOCHS = 8

# Stands in for the interpreter (E2MC_PYTHON="python rank_probe.py"): runs `-m <module> ...` as asked,
# and on every rank records the parameters that rank holds whenever training saves a checkpoint.
RANK_PROBE = '''
import os, runpy, sys, torch
import e2mc.train
from e2mc.distributed import rank, world_size

save = e2mc.train.save_checkpoint
def recording_save(run, *args, **kwargs):
    save(run, *args, **kwargs)
    state = {name: p.detach().clone() for name, p in run.network.named_parameters()}
    torch.save({"world_size": world_size(), "rank": rank(), "slurm_procid": os.environ["SLURM_PROCID"],
                "parameters": state}, run.output_dir / f"probe-rank{rank()}.pt")
e2mc.train.save_checkpoint = recording_save
assert sys.argv[1] == "-m", sys.argv
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
'''


def tiny(method, data_root, epochs, limit):
    overrides = [f"data.root={data_root}", "data.batch_size=64", f"data.limit={limit}",
                 f"model.heads={HEADS[method]}", f"train.epochs={epochs}", "train.log_every=1", "train.device=cpu"]
    return overrides + (["loss.params={queue_length: 128}"] if method == "swav" else [])


def continued(method, data_root, inits, epochs, limit):
    return [*tiny(method, data_root, epochs, limit), f"train.init={inits[method]}"]


def quoted(overrides):
    return " ".join(f"'{o}'" for o in overrides)


def wait_for_first_step(output_dir, job_id, log):
    # The step clock starts when the job does: on a shared node it may queue behind the other jobs first.
    wait_for(job_id, QUEUE_TIMEOUT_S, until={"RUNNING", *TERMINAL_STATES})
    deadline = time.monotonic() + SIGNAL_AFTER_S
    metrics = Path(output_dir) / "metrics.jsonl"
    while not (metrics.exists() and '"kind": "step"' in metrics.read_text()):
        assert time.monotonic() < deadline, f"job {job_id} logged no step in {SIGNAL_AFTER_S} s\n{explain(job_id, log)}"
        time.sleep(0.1)


def explain(job_id, log):
    """scontrol's view of the job and its log (a file, or a folder of submitit logs)."""
    log = Path(log)
    logs = sorted(log.iterdir()) if log.is_dir() else [log]
    text = "\n".join(p.read_text() for p in logs if p.suffix in (".out", ".err") and p.exists()) or "(no log)"
    return f"job {job_id}: {job_info(job_id)}\nlog:\n{text}"


def finished(job_id, log):
    state = wait_for(job_id, JOB_TIMEOUT_S)
    assert state == "COMPLETED", explain(job_id, log)
    return job_info(job_id)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def _submit_all(submitted: dict, root: Path, data: Path, inits: dict, env: dict) -> None:
    """Submit the jobs of this module (sbatch scripts and a submitit array) into ``submitted``."""
    # Preempted first: its restart delay then overlaps with the other jobs. The two preempted runs
    # are long enough (8 epochs of 16 steps) that the signal lands while they train.
    preempt = continued("swav", data, inits, epochs=PREEMPTED_EPOCHS, limit=1024)
    submitted["preempt"] = submit(
        ROOT / "slurm/continue_swav.sh",
        env={**env, "E2MC_CONFIG": "configs/mini/swav.yaml", "E2MC_OUTPUT": str(root / "preempt"),
             "E2MC_OVERRIDES": quoted(preempt)},
        options=[*ONE_CPU, "--array=0", "--job-name=e2mc-test-preempt", f"--output={root}/preempt-%A_%a.out"])
    submitted["preempt_overrides"] = preempt

    submitted["array"] = submit(
        ROOT / "slurm/continue_vicreg.sh", "train.log_every=2",
        env={**env, "E2MC_CONFIG": "configs/mini/vicreg.yaml", "E2MC_OUTPUT": str(root / "array"),
             "E2MC_OVERRIDES": quoted(continued("vicreg", data, inits, epochs=1, limit=256))},
        options=[*ONE_CPU, "--array=0-1", "--job-name=e2mc-test-array", f"--output={root}/array-%A_%a.out"])

    # Linear probes of the two seeds once they are trained (a cheap probe: 2 epochs on half the labels).
    # (No --seeds: each training seed is its own probe seed, so the results folder is plottable.)
    submitted["eval"] = submit(
        ROOT / "slurm/eval_linear.sh", "--label-fractions", "0.5", "--probe-epochs", "2",
        "--workers", "0",
        env={**env, "E2MC_METHOD": "vicreg", "E2MC_OUTPUT": str(root / "array"), "E2MC_RESULTS": str(root / "results")},
        options=["--gpus-per-node=0", "--cpus-per-task=1", "--array=0-1", f"--dependency=afterok:{submitted['array']}",
                 "--job-name=e2mc-test-eval", f"--output={root}/eval-%A_%a.out"])

    submitit_out = root / "submitit_runs"
    command = [sys.executable, "-m", "e2mc", "submit", "--cluster", "slurm", "--config", "configs/mini/vicreg.yaml",
               "--grid", "arm=original,e2mc", "--output-root", str(submitit_out),
               "--log-dir", str(root / "submitit" / "%j"), "--tasks-per-node", "1", "--gpus-per-node", "0",
               "--cpus-per-task", "1", "--time", "10", "--job-name", "e2mc-test-submitit",
               *continued("vicreg", data, inits, epochs=PREEMPTED_EPOCHS, limit=1024),
               # the documented grid with per-epoch probes, into one folder the notebooks then draw
               "eval.every_epoch=true", "eval.label_fractions=[0.5]", f"eval.results_dir={root / 'submitit_results'}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=_clean_environment(None))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    submitted["submitit"] = [(job_id, Path(output)) for job_id, output in lines]
    submitted["submitit_log"] = root / "submitit"

    probe = root / "rank_probe.py"
    probe.write_text(RANK_PROBE)
    submitted["ddp"] = submit(
        ROOT / "slurm/continue_simsiam.sh",
        env={**env, "E2MC_PYTHON": f"{sys.executable} {probe}", "E2MC_CONFIG": "configs/mini/simsiam.yaml",
             "E2MC_OUTPUT": str(root / "ddp"),
             "E2MC_OVERRIDES": quoted(continued("simsiam", data, inits, epochs=1, limit=256))},
        options=["--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "--array=0",
                 "--job-name=e2mc-test-ddp", f"--output={root}/ddp-%A_%a.out"])

    # Last, so that it delays no other job: a time limit at the script's USR2 lead (--signal=USR2@120),
    # refused at once (it would stop and requeue in a loop).
    submitted["short"] = submit(
        ROOT / "slurm/continue_vicreg.sh",
        env={**env, "E2MC_CONFIG": "configs/mini/vicreg.yaml", "E2MC_OUTPUT": str(root / "short"),
             "E2MC_OVERRIDES": quoted(continued("vicreg", data, inits, epochs=1, limit=256))},
        options=[*ONE_CPU, "--array=0", "--time=00:02:00", "--job-name=e2mc-test-short",
                 f"--output={root}/short-%A_%a.out"])


@pytest.fixture(scope="module")
def jobs(slurm_cluster, tmp_path_factory):  # noqa: F811  (fixture argument)
    if slurm_cluster.cpus < 2:
        pytest.fail(f"these tests need a node with 2 CPUs, the cluster has {slurm_cluster.cpus}")
    root = tmp_path_factory.mktemp("slurm_e2mc")
    data = write_fake_fashion_mnist(root / "data", n_train=1024, n_test=64)
    inits = {}
    for method in ("vicreg", "swav", "simsiam"):  # epoch-0 checkpoints stand in for the releases
        out = root / "init" / method
        train(load_config(ROOT / f"configs/mini/pretrain/{method}.yaml",
                          [*tiny(method, data, 0, 64), f"train.output_dir={out}"]))
        inits[method] = out / "checkpoint.pt"
    env = {"E2MC_ROOT": str(ROOT), "E2MC_PYTHON": sys.executable}
    submitted = {"root": root}
    # Nothing starts before every job is submitted (submitting takes seconds; a tiny run may be over by
    # then, and its preemption below would come too late): the partition is down while we submit.
    partition = slurm_cluster.partition
    subprocess.run(["scontrol", "update", f"PartitionName={partition}", "State=DOWN"], check=True, timeout=30)
    try:
        _submit_all(submitted, root, data, inits, env)
    finally:
        subprocess.run(["scontrol", "update", f"PartitionName={partition}", "State=UP"], check=True, timeout=30)

    # Preempt two jobs as soon as each trains (both would be over before their tests ran).
    job, run = f"{submitted['preempt']}_0", root / "preempt" / "swav" / "e2mc" / "seed0"
    wait_for_first_step(run, job, root / f"preempt-{job}.out")
    # To the batch shell only, which passes it on to the training step (slurm/common.sh).
    subprocess.run(["scancel", "--signal=USR2", "--batch", job], check=True, timeout=30)
    job, run = submitted["submitit"][1]
    wait_for_first_step(run, job, submitted["submitit_log"] / job)
    # To the job steps, as SLURM's --signal=USR2@120 does; submitit requeues through checkpoint().
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    return submitted


def test_preempted_job_requeues_itself_and_ends_like_an_uninterrupted_run(jobs):
    root, job = jobs["root"], f"{jobs['preempt']}_0"
    run, log = root / "preempt" / "swav" / "e2mc" / "seed0", root / f"preempt-{jobs['preempt']}_0.out"
    # The uninterrupted reference, run here while the job waits to restart; one thread, as in the job
    # (slurm/common.sh sets OMP_NUM_THREADS to the task's CPUs), since float sums depend on the split.
    reference = root / "preempt_reference"
    subprocess.run([sys.executable, "-m", "e2mc", "continue", "--config", "configs/mini/swav.yaml",
                    "criterion.name=e2mc", "train.seed=0", f"train.output_dir={reference}", *jobs["preempt_overrides"]],
                   cwd=ROOT, env={**_clean_environment(None), "OMP_NUM_THREADS": "1"}, check=True,
                   capture_output=True, timeout=JOB_TIMEOUT_S)
    info = finished(job, log)
    assert info["Restarts"] == "1", explain(job, log)
    text = log.read_text()
    assert "stopped by SIGUSR2 at epoch" in text and "requeued job" in text, text
    assert "DUE TO JOB REQUEUE' and 'srun: error: ... Terminated' below are expected" in text, text
    assert f"resumed from {run / 'checkpoint.pt'}" in text, text
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert_same_weights(checkpoints.load(run / "checkpoint.pt")["model"],
                        checkpoints.load(reference / "checkpoint.pt")["model"])
    assert comparable_records(run) == comparable_records(reference)
    assert len(segment_starts(run)) == 2 and segment_starts(reference) == [(0, 0)]


def test_array_of_two_seeds_writes_two_runs(jobs):
    root, array = jobs["root"], jobs["array"]
    weights = []
    for seed in (0, 1):
        job, log = f"{array}_{seed}", root / f"array-{array}_{seed}.out"
        finished(job, log)
        assert f"[e2mc] job {array}_{seed} (job id " in log.read_text()  # the id squeue and scancel show
        run = root / "array" / "vicreg" / "e2mc" / f"seed{seed}"
        summary = json.loads((run / "summary.json").read_text())
        assert (summary["status"], summary["epoch"], summary["config"]["train"]["seed"]) == ("finished", 1, seed)
        assert summary["config"]["train"]["log_every"] == 2  # the script's own argument reached the run
        state = checkpoints.load(run / "checkpoint.pt")
        assert (state["epoch"], state["config"]["train"]["output_dir"]) == (1, str(run))
        weights.append(state["model"])
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), "seeds 0 and 1 trained alike"


def test_eval_script_probes_each_seed_and_the_notebook_draws_them(jobs, kernel):
    """The documented workflow: training array -> eval_linear.sh array -> notebook -> figure. Each training
    seed is probed with its own seed (probe seeds 0, 1, 2 for every run made the folder unplottable)."""
    root, array = jobs["root"], jobs["eval"]
    for task in (0, 1):
        finished(f"{array}_{task}", root / f"eval-{array}_{task}.out")
    results = [json.loads(p.read_text()) for p in sorted((root / "results" / "vicreg").glob("*.json"))]
    runs = {str(root / "array" / "vicreg" / "e2mc" / f"seed{seed}" / "checkpoint.pt"): seed for seed in (0, 1)}
    assert sorted(r["checkpoint"] for r in results) == sorted(runs)
    for r in results:
        assert (r["kind"], r["method"], r["arm"], r["label_fraction"], r["epoch"]) == \
            ("linear_probe", "vicreg", "e2mc", 0.5, 1)
        assert r["config"]["train"]["seed"] == r["seed"] == runs[r["checkpoint"]]
        assert 0 <= r["metrics"]["top1"] <= 100
    pm.execute_notebook("notebooks/fig6_epochs.ipynb", str(root / "fig6.ipynb"), kernel_name=kernel, cwd=str(ROOT),
                        parameters={"results_dir": str(root / "results"), "output_dir": str(root / "figs"),
                                    "formats": ["png"], "label_fraction": 0.5}, progress_bar=False)
    assert_png(root / "figs" / "fig6_epochs.png")


def test_a_time_limit_at_the_signal_lead_is_refused_with_a_reason(jobs):
    root, job = jobs["root"], f"{jobs['short']}_0"
    log = root / f"short-{job}.out"
    assert wait_for(job, JOB_TIMEOUT_S) == "FAILED", explain(job, log)
    assert "not well above the USR2 warning sent 120 s before it" in log.read_text()
    assert not (root / "short").exists()  # refused before training


def test_two_task_ddp_run_ends_with_both_ranks_agreeing(jobs):
    root, job = jobs["root"], f"{jobs['ddp']}_0"
    finished(job, root / f"ddp-{jobs['ddp']}_0.out")
    run = root / "ddp" / "simsiam" / "e2mc" / "seed0"
    probes = [torch.load(run / f"probe-rank{r}.pt") for r in (0, 1)]
    assert [(p["world_size"], p["rank"], p["slurm_procid"]) for p in probes] == [(2, 0, "0"), (2, 1, "1")]
    assert_same_weights(probes[0]["parameters"], probes[1]["parameters"])
    saved = checkpoints.load(run / "checkpoint.pt")
    assert saved["epoch"] == 1
    assert_same_weights({k: saved["model"][k] for k in probes[0]["parameters"]}, probes[0]["parameters"])


def test_submitit_array_trains_and_a_preempted_task_resumes(jobs):
    (first, first_run), (second, second_run) = jobs["submitit"]
    log = jobs["submitit_log"]
    assert first.endswith("_0") and second.endswith("_1"), jobs["submitit"]
    for job, run in jobs["submitit"]:
        finished(job, log / job)
        summary = json.loads((run / "summary.json").read_text())
        assert (summary["status"], summary["epoch"]) == ("finished", PREEMPTED_EPOCHS)
        epochs = [r["epoch"] for r in read_metrics(run, "epoch")]
        assert epochs == list(range(1, PREEMPTED_EPOCHS + 1)), f"{run}: epoch lines {epochs}"
    assert job_info(first)["Restarts"] == "0"
    assert job_info(second)["Restarts"] == "1", explain(second, log / second)
    assert "Requeued job" in "".join(p.read_text() for p in (log / second).glob("*_log.*"))
    assert json.loads((first_run / "summary.json").read_text())["criterion"] == "none"
    assert json.loads((second_run / "summary.json").read_text())["criterion"] == "e2mc"


def test_submit_grid_with_per_epoch_probes_draws_fig6(jobs, kernel):
    """The documented submit workflow on SLURM: a grid with eval.every_epoch=true -> one results folder
    -> the Fig. 6 notebook. Every epoch is probed exactly once, also across the preempted task's requeue."""
    for job, _ in jobs["submitit"]:
        finished(job, jobs["submitit_log"] / job)
    results_dir = jobs["root"] / "submitit_results"
    probes = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    found = sorted((r["arm"], r["epoch"]) for r in probes)
    assert found == sorted((arm, e) for arm in ("original", "e2mc") for e in range(PREEMPTED_EPOCHS + 1)), found
    pm.execute_notebook("notebooks/fig6_epochs.ipynb", str(jobs["root"] / "fig6-submit.ipynb"), kernel_name=kernel,
                        cwd=str(ROOT), parameters={"results_dir": str(results_dir),
                                                   "output_dir": str(jobs["root"] / "figs-submit"),
                                                   "formats": ["png"], "label_fraction": 0.5}, progress_bar=False)
    assert_png(jobs["root"] / "figs-submit" / "fig6_epochs.png")

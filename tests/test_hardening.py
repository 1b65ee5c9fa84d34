"""Regression tests for what a hostile tester and a first cluster user broke (issue 13): each failed
before its fix. Tiny runs on fake Fashion-MNIST, through the real command line where the defect was."""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from e2mc import checkpoints
from e2mc.config import ConfigError, load_config
from e2mc.meter import read_metrics
from e2mc.runlock import RunFolderBusyError
from e2mc.train import train
sys.path.insert(0, str(Path(__file__).parent))
from fake_data import write_fake_fashion_mnist  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PRETRAIN = ROOT / "configs/mini/pretrain/vicreg.yaml"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=256, n_test=64)


def tiny(data_root, output_dir, epochs=1, *extra):
    return [f"data.root={data_root}", "data.batch_size=64", "model.heads={expander: [32, 32]}",
            f"train.epochs={epochs}", f"train.output_dir={output_dir}", "train.log_every=1",
            "optim.warmup_epochs=0", *extra]  # no warm-up longer than these short runs


def e2mc_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "e2mc", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, cwd=ROOT)


# --- every subcommand of the command line, end to end ------------------------------------------

@pytest.mark.parametrize("command", ["continue", "pretrain", "evaluate", "sweep", "diagnose", "reproduce",
                                     "export-base", "notebooks", "submit", "migrate"])
def test_every_subcommand_answers_help(command):
    completed = e2mc_cli(command, "--help")
    assert completed.returncode == 0 and "usage: e2mc " + command in completed.stdout, completed.stderr


def test_sweep_runs_through_the_command_line(tmp_path, data_root):
    """`sweep --run` overwrote the subcommand's handler: every sweep crashed with 'str' is not callable."""
    run = tmp_path / "run"
    train(load_config(PRETRAIN, tiny(data_root, run, 1, "train.keep_epoch_checkpoints=true")))
    completed = e2mc_cli("sweep", "--run", run, "--label-fractions", "0.1", "--probe-epochs", "2",
                         "--results-dir", tmp_path / "out", "--device", "cpu")
    assert completed.returncode == 0, completed.stderr
    assert len(list((tmp_path / "out").glob("linear_probe_*.json"))) == 2  # epochs 0 and 1


# --- one run folder, one run, one configuration ------------------------------------------------

def test_a_second_process_cannot_train_in_a_busy_run_folder(tmp_path, data_root):
    run = tmp_path / "run"
    run.mkdir()
    holder = os.open(run, os.O_RDONLY)  # another live process holds the lock on the folder
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        (run / "run.lock").write_text("pid 4242 on elsewhere\n")
        with pytest.raises(RunFolderBusyError, match="in use by pid 4242 on elsewhere"):
            train(load_config(PRETRAIN, tiny(data_root, run)))
        assert not (run / "metrics.jsonl").exists()
    finally:
        os.close(holder)
    # the lock of a process that is gone (its run.lock stays) does not block: the kernel released it
    assert train(load_config(PRETRAIN, tiny(data_root, run)))["status"] == "finished"
    assert len(read_metrics(run, "epoch")) == 1


def test_two_identical_commands_at_once_train_once(tmp_path, data_root):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "e2mc", "pretrain", "--config", str(PRETRAIN), *tiny(data_root, run, 2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
    outcomes = [p.communicate() + (p.returncode,) for p in processes]
    codes = sorted(code for _, _, code in outcomes)
    refused = [err for _, err, code in outcomes if code != 0]
    # Either the second found the folder locked, or (on a slow start) the run already finished.
    assert codes == [0, 0] or (codes == [0, 2] and "is in use by pid" in refused[0]), outcomes
    assert [r["epoch"] for r in read_metrics(run, "epoch")] == [1, 2]  # every record once


def test_resume_refuses_any_change_that_alters_training(tmp_path, data_root):
    run = tmp_path / "run"
    train(load_config(PRETRAIN, tiny(data_root, run, 1, "optim.schedule=constant")))
    changed = tiny(data_root, run, 2, "optim.schedule=constant", "optim.base_lr=0.5", "train.seed=7")
    with pytest.raises(ConfigError, match=r"optim.base_lr: 0.3 -> 0.5.*train.seed: 0 -> 7.*start over"):
        train(load_config(PRETRAIN, changed))
    # more epochs at a constant learning rate, another device or evaluation setting: resumes
    more = tiny(data_root, run, 2, "optim.schedule=constant", "train.device=cpu", "eval.every_epoch=true")
    assert train(load_config(PRETRAIN, more))["epoch"] == 2
    with pytest.raises(ConfigError, match="below the epochs already trained"):
        train(load_config(PRETRAIN, tiny(data_root, run, 1, "optim.schedule=constant")))


def test_more_epochs_under_a_cosine_schedule_are_refused(tmp_path, data_root):
    run = tmp_path / "run"
    train(load_config(PRETRAIN, tiny(data_root, run, 1)))
    with pytest.raises(ConfigError, match="cosine schedule is laid out over it"):
        train(load_config(PRETRAIN, tiny(data_root, run, 3)))


def test_the_cli_names_a_changed_configuration_in_one_line(tmp_path, data_root):
    run = tmp_path / "run"
    train(load_config(PRETRAIN, tiny(data_root, run, 1)))
    completed = e2mc_cli("pretrain", "--config", PRETRAIN, *tiny(data_root, run, 1, "criterion.ent_coeff=50"))
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert "criterion.ent_coeff: 10.0 -> 50.0" in completed.stderr


# --- timing records after a resume ------------------------------------------------------------

def test_a_resumed_epoch_counts_its_images_and_seconds_once(tmp_path, data_root):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "e2mc", "pretrain", "--config", str(PRETRAIN),
               *tiny(data_root, run, 2, "data.batch_size=32")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:  # stop in the middle of the first epoch
        if metrics.exists() and any(json.loads(l)["kind"] == "step" and json.loads(l)["step"] >= 2
                                    for l in metrics.read_text().splitlines()):
            break
        time.sleep(0.02)
    process.send_signal(15)
    process.communicate(timeout=120)
    first = checkpoints.load(run / "checkpoint.pt")
    resumed_at, seconds_before = first["step"], first["epoch_sums"].get("seconds", 0.0)
    assert first["epoch"] == 0 and 0 < resumed_at < 8 and seconds_before > 0
    subprocess.run(command, env=env, check=True, capture_output=True)
    epoch = read_metrics(run, "epoch")[0]
    steps_after = 8 - resumed_at  # 256 images / 32
    # images/s of the resumed epoch: only the images trained after the resume, over their time
    assert epoch["seconds"] > seconds_before
    assert epoch["images_per_s"] == pytest.approx(32 * steps_after / (epoch["seconds"] - seconds_before), rel=0.5)
    summary = json.loads((run / "summary.json").read_text())
    epochs = read_metrics(run, "epoch")
    assert summary["seconds"] >= sum(e["seconds"] for e in epochs)  # every segment, not only the last


# --- non-finite weights -------------------------------------------------------------------------

def test_nan_weights_are_refused_by_training_and_by_evaluation(tmp_path, data_root):
    run = tmp_path / "base"
    train(load_config(PRETRAIN, tiny(data_root, run, 0)))
    state = checkpoints.load(run / "checkpoint.pt")
    state["model"]["backbone.blocks.0.weight"].fill_(float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(checkpoints.CheckpointError, match="nan.pt holds non-finite weights"):
        train(load_config(ROOT / "configs/mini/vicreg.yaml",
                          tiny(data_root, tmp_path / "cont", 1, f"train.init={tmp_path / 'nan.pt'}")))
    assert not (tmp_path / "cont" / "checkpoint.pt").exists()  # nothing reported as a "last good state"
    completed = e2mc_cli("evaluate", "--checkpoint", tmp_path / "nan.pt", "--results-dir", tmp_path / "out",
                         "--data-root", data_root, "--device", "cpu")
    assert completed.returncode == 2 and "non-finite weights" in completed.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    completed = e2mc_cli("diagnose", "--checkpoint", tmp_path / "nan.pt", "--results-dir", tmp_path / "out",
                         "--data-root", data_root, "--device", "cpu")
    assert completed.returncode == 2 and "non-finite weights" in completed.stderr


# --- validation before anything is written -------------------------------------------------------

@pytest.mark.parametrize(("override", "message"), [
    ("criterion.ent_coeff=.nan", "criterion.ent_coeff must be a finite number"),
    ("criterion.cov_coeff=.inf", "criterion.cov_coeff must be a finite number"),
    ("train.log_every=0", "train.log_every must be >= 1"),
    ("data.limit=-1", "data.limit must be >= 1"),
    ("data.limit=0", "data.limit must be >= 1"),
    ("optim.base_lr=-1", "optim.base_lr must be > 0"),
    ("criterion.params={t: 2}", "criterion.params is for the alternative criteria"),
    ("eval.probe.on=pixels", "eval.probe.on must be one of features, images"),
    ("eval.label_fractions=[]", "must not be empty"),
])
def test_bad_values_are_named_before_the_run_folder_exists(tmp_path, data_root, override, message):
    run = tmp_path / "run"
    completed = e2mc_cli("pretrain", "--config", PRETRAIN, *tiny(data_root, run), override)
    assert completed.returncode == 2 and message in completed.stderr, completed.stderr
    assert "Traceback" not in completed.stderr and not run.exists()


def test_a_yaml_alias_bomb_is_refused(tmp_path):
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
        for i in range(6)]
    path = tmp_path / "bomb.yaml"
    path.write_text("method: vicreg\ncriterion:\n  name: uniformity\n  params:\n" + "".join(
        f"    {line}\n" for line in bomb))
    with pytest.raises(ConfigError, match="alias bomb"):
        load_config(path)


@pytest.mark.parametrize("text", ["method: [unclosed", "method: !!python/object:os.system {}"])
def test_bad_yaml_names_the_file(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"{path} is not valid YAML"):
        load_config(path)


@pytest.mark.parametrize(("args", "message"), [
    (["continue", "--config", "configs/mini/vicreg.yaml", "train.init=/nowhere/base.pt"], "checkpoint not found"),
    (["continue", "--config", "configs/mini/vicreg.yaml", "loss.params={bogus: 1}"], "loss.params does not fit"),
    (["evaluate", "--checkpoint", "x.pt", "--results-dir", "out", "--batch-size", "0"], "eval.batch_size must be >= 1"),
    (["reproduce", "--entry", "vicreg:e2mc"], "--entry takes METHOD:ARM:SEED"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    completed = e2mc_cli(*args)
    assert completed.returncode == 2 and message in completed.stderr, completed.stderr
    assert "Traceback" not in completed.stderr


def test_files_the_configuration_names_are_checked_before_the_data(tmp_path):
    """A fresh machine without Fashion-MNIST: a missing train.init is reported as such, not as missing
    data (an empty data.root stands for the absent dataset; an explicit root is the only place looked)."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    completed = e2mc_cli("continue", "--config", "configs/mini/vicreg.yaml", f"data.root={empty}",
                         f"train.output_dir={tmp_path / 'run'}", "train.init=/nowhere/base.pt")
    assert completed.returncode == 2 and "checkpoint not found: /nowhere/base.pt" in completed.stderr, completed.stderr
    assert "Fashion-MNIST" not in completed.stderr
    assert not list(empty.iterdir())  # no download was attempted into it
    folder = tmp_path / "a-folder"
    folder.mkdir()
    completed = e2mc_cli("continue", "--config", "configs/mini/vicreg.yaml", f"data.root={empty}",
                         f"train.output_dir={tmp_path / 'run'}", f"train.init={folder}")
    assert completed.returncode == 2 and "is a folder, not a file" in completed.stderr, completed.stderr


def test_an_official_key_mismatch_names_the_file(tmp_path, data_root):
    release = tmp_path / "resnet50_fullckpt.pth"
    torch.save({"epoch": 1, "model": {"module.backbone.conv1.weight": torch.zeros(1)}}, release)
    completed = e2mc_cli("continue", "--config", "configs/mini/vicreg.yaml", *tiny(data_root, tmp_path / "r"),
                         f"train.init={release}")
    assert completed.returncode == 2 and "resnet50_fullckpt.pth does not match the vicreg model" in completed.stderr
    assert "<in-memory checkpoint>" not in completed.stderr


# --- partial writes and inflated files ------------------------------------------------------------

def test_a_killed_writers_temporary_file_is_cleaned_at_the_next_start(tmp_path, data_root):
    run = tmp_path / "run"
    train(load_config(PRETRAIN, tiny(data_root, run, 1, "optim.schedule=constant")))
    leftover = run / ".checkpoint.pt.abc123.tmp"
    leftover.write_bytes(b"half a checkpoint")
    train(load_config(PRETRAIN, tiny(data_root, run, 2, "optim.schedule=constant")))
    assert not leftover.exists()


def test_a_checkpoint_that_inflates_is_refused_before_it_is_read(tmp_path):
    honest = tmp_path / "honest.pt"
    torch.save({"w": torch.zeros(1000)}, honest)
    assert checkpoints.load(honest)["w"].shape == (1000,)
    inflated = tmp_path / "inflated.pt"
    with zipfile.ZipFile(honest) as source, zipfile.ZipFile(inflated, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data/0"):
                data = bytes(50_000_000)  # a storage far larger than the file
            target.writestr(info.filename, data)
    assert inflated.stat().st_size < 200_000
    with pytest.raises(checkpoints.CheckpointError, match="expands to 50"):
        checkpoints.load(inflated)


def test_timing_migration_corrects_a_resumed_run_by_hand_numbers():
    from e2mc.migrations import correct_timing

    # 4 steps per epoch of 10 images; resumed at epoch 1 step 1 (3 steps after the resume, 6 s), and
    # the last segment's wall time is 20 s for 6 + 8 s of epochs
    epochs = [{"epoch": 1, "global_step": 4, "seconds": 8.0, "images_per_s": 5.0},
              {"epoch": 2, "global_step": 8, "seconds": 6.0, "images_per_s": 40 / 6.0},
              {"epoch": 3, "global_step": 12, "seconds": 8.0, "images_per_s": 5.0}]
    record = {"kind": "training", "config": {"data": {"batch_size": 10}},
              "extra": {"epochs": epochs, "run_seconds": 20.0,
                        "segments": [{"epoch": 0, "step": 0, "global_step": 0},
                                     {"epoch": 1, "step": 1, "global_step": 5}]}}
    fixed = correct_timing(record)
    resumed = fixed["extra"]["epochs"][1]
    assert resumed["images_per_s"] == pytest.approx(30 / 6.0)  # 3 steps of 10 images in 6 s
    assert resumed["seconds"] == pytest.approx(8.0) and resumed["seconds_measured_after_resume"] == 6.0
    assert fixed["extra"]["run_seconds"] == pytest.approx(20.0 / 14.0 * 24.0)
    assert fixed["extra"]["timing_migration"]["recorded_run_seconds"] == 20.0
    assert correct_timing(fixed) is None  # once only
    assert correct_timing({**record, "extra": {**record["extra"], "segments": record["extra"]["segments"][:1]}}) is None


def test_a_run_sizes_its_threads_from_the_allocation_and_restores_them(monkeypatch):
    """submitit jobs ran 2 torch threads on a 1-CPU allocation; every launcher goes through run_training."""
    from e2mc import runs

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    seen = []
    monkeypatch.setattr("e2mc.runs.train", lambda cfg, epoch_end_hooks: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs.run_training(load_config(PRETRAIN))
        assert seen == [1] and torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # an explicit setting wins
        runs.run_training(load_config(PRETRAIN))
        assert seen == [1, 2]
    finally:
        torch.set_num_threads(before)


def test_non_finite_features_are_an_error_not_a_result():
    from e2mc.evaluation import TensorImages, extract_features
    from e2mc.methods import build_model

    network = build_model("vicreg", "convnet", backbone_widths=(4, 4, 4, 4), expander=(8,)).eval()
    with torch.no_grad():  # finite weights whose product overflows float32 after two blocks
        for module in network.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1e30)
    assert all(torch.isfinite(t).all() for t in network.state_dict().values() if t.is_floating_point())
    images = TensorImages(torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="features are not finite for"):
        extract_features(network, images)


def test_a_truncated_release_is_one_line_naming_it(tmp_path, data_root):
    release = tmp_path / "resnet50_fullckpt.pth"
    torch.save({"epoch": 1, "model": {"module.backbone.conv1.weight": torch.zeros(64, 1, 3, 3)}}, release)
    release.write_bytes(release.read_bytes()[:300])
    completed = e2mc_cli("continue", "--config", "configs/mini/vicreg.yaml", *tiny(data_root, tmp_path / "r"),
                         f"train.init={release}")
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert str(release) in completed.stderr and "truncated" in completed.stderr

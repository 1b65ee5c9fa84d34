"""Run-folder faults of issue 20 (items 2-6, 10, 13): what a kill, an error or a user's hand does to a run
folder, and that the next start neither resumes wrongly nor loses owed work. Each failed before its fix.
Tiny runs on fake Fashion-MNIST; a kill between two writes is simulated by an error in the second."""
from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from e2mc import checkpoints, reproduce
from e2mc.config import load_config
from e2mc.evaluation import sweep
from e2mc.epoch import NonFiniteLossError, _non_finite_report
from e2mc.meter import read_metrics
from e2mc.runlock import RunFolderBusyError, RunFolderError
from e2mc.train import train
sys.path.insert(0, str(Path(__file__).parent))
from fake_data import write_fake_fashion_mnist  # noqa: E402
from run_records import comparable_records  # noqa: E402
from test_train import assert_same_weights, cli, final_weights, tiny_overrides, wait_for_step_line  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=256, n_test=64)


def pretrain(method, data_root, output_dir, epochs=2, *extra):
    overrides = [*tiny_overrides(method, data_root, output_dir, epochs, criterion="none"), *extra]
    return load_config(ROOT / f"configs/mini/pretrain/{method}.yaml", overrides)


class Killed(Exception):
    """Stands for a SIGKILL between two writes."""


def fail_once_writing(monkeypatch, name, when=lambda obj: True):
    """Make the next checkpoints.save_atomic of a file called ``name`` (for which ``when(obj)``) raise
    :class:`Killed` before writing it; later writes go through."""
    real, armed = checkpoints.save_atomic, [True]

    def save_atomic(obj, path):
        if armed[0] and Path(path).name == name and when(obj):
            armed[0] = False
            raise Killed(name)
        return real(obj, path)

    monkeypatch.setattr(checkpoints, "save_atomic", save_atomic)


# --- 2. the model and the loss state are one checkpoint ------------------------------------------

def test_swav_queue_and_model_are_saved_together(tmp_path, data_root, monkeypatch):
    """The queue was written to loss-state-rank0.pt before checkpoint.pt: a kill between paired the new
    queue with the old model, and the resumed losses differed from an uninterrupted run's."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    train(pretrain("swav", data_root, reference))
    fail_once_writing(monkeypatch, "checkpoint.pt", lambda state: state["epoch"] == 2)
    with pytest.raises(Killed):
        train(pretrain("swav", data_root, killed))
    monkeypatch.undo()
    train(pretrain("swav", data_root, killed))
    assert comparable_records(killed) == comparable_records(reference)
    assert_same_weights(final_weights(killed), final_weights(reference))
    assert not list(killed.glob("loss-state-rank*.pt"))
    assert checkpoints.load(killed / "checkpoint.pt")["objective_states"][0]["queue"].shape[1] == 128  # the queue


def test_a_checkpoint_without_the_queue_is_refused_or_taken_from_the_old_file(tmp_path, data_root):
    """A deleted loss-state file resumed silently with an empty queue. A run folder of the old layout
    (queue in loss-state-rank0.pt) still resumes exactly; without that file it is refused."""
    old, constant = tmp_path / "old", tmp_path / "constant"
    train(pretrain("swav", data_root, old, 1, "optim.schedule=constant"))
    state = checkpoints.load(old / "checkpoint.pt")
    queue = state.pop("objective_states")[0]
    checkpoints.save_atomic(state, old / "checkpoint.pt")  # as written before the queue moved in
    with pytest.raises(RunFolderError, match=r"holds no loss state \(swav's queue\) and .*loss-state-rank0.pt is "
                                             "missing"):
        train(pretrain("swav", data_root, old, 2, "optim.schedule=constant"))
    checkpoints.save_atomic(queue, old / "loss-state-rank0.pt")
    train(pretrain("swav", data_root, old, 2, "optim.schedule=constant"))
    train(pretrain("swav", data_root, constant, 2, "optim.schedule=constant"))
    assert comparable_records(old) == comparable_records(constant)
    assert_same_weights(final_weights(old), final_weights(constant))
    assert not (old / "loss-state-rank0.pt").exists()  # taken into checkpoint.pt
    assert "objective_states" in checkpoints.load(old / "checkpoint.pt")


# --- 3. what a completed epoch owes is done after a resume ---------------------------------------

def test_an_epoch_checkpoint_lost_to_a_kill_is_written_on_resume(tmp_path, data_root, monkeypatch):
    run = tmp_path / "run"
    fail_once_writing(monkeypatch, "checkpoint-epoch001.pt")
    with pytest.raises(Killed):
        train(pretrain("vicreg", data_root, run, 2, "train.keep_epoch_checkpoints=true"))
    monkeypatch.undo()
    train(pretrain("vicreg", data_root, run, 2, "train.keep_epoch_checkpoints=true"))
    assert sorted(p.name for p in run.glob("checkpoint-epoch*.pt")) == [
        "checkpoint-epoch000.pt", "checkpoint-epoch001.pt", "checkpoint-epoch002.pt"]
    assert checkpoints.load(run / "checkpoint-epoch001.pt")["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(run, "epoch")] == [1, 2]


def test_epoch_end_hooks_lost_to_a_kill_run_on_resume(tmp_path, data_root):
    """A kill between an epoch's checkpoint and its per-epoch evaluation lost that evaluation for good."""
    run, calls = tmp_path / "run", []

    def killed_at_epoch_1(epochs_done, network, output_dir):
        if epochs_done == 1:
            raise Killed("in the hook")
        calls.append(epochs_done)

    with pytest.raises(Killed):
        train(pretrain("vicreg", data_root, run), epoch_end_hooks=[killed_at_epoch_1])
    train(pretrain("vicreg", data_root, run), epoch_end_hooks=[lambda e, network, out: calls.append(e)])
    assert calls == [1, 2]
    train(pretrain("vicreg", data_root, run), epoch_end_hooks=[lambda e, network, out: calls.append(e)])
    assert calls == [1, 2]  # a finished run whose hooks all returned owes nothing


# --- 4. and 5. records and checkpoint disagree ---------------------------------------------------

def test_metrics_shorter_than_the_checkpoint_recorded_are_refused_not_padded(tmp_path, data_root):
    run = tmp_path / "run"
    train(pretrain("vicreg", data_root, run, 1))
    metrics = run / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:100])
    with pytest.raises(RunFolderError, match=f"{metrics} holds 100 bytes but .*checkpoint.pt recorded"):
        train(pretrain("vicreg", data_root, run, 1))
    assert metrics.stat().st_size == 100 and b"\0" not in metrics.read_bytes()


def test_export_base_names_broken_metrics_and_writes_nothing(tmp_path, data_root):
    run = tmp_path / "run"
    train(pretrain("vicreg", data_root, run, 1))
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b"\0" * 64 + b"\n")
    destination = tmp_path / "bases" / "vicreg.pt"
    with pytest.raises(ValueError, match=f"{run / 'metrics.jsonl'} line .* is not a JSON record"):
        reproduce.export_base_checkpoint(run, destination)
    assert not destination.exists()


def test_a_deleted_checkpoint_is_refused_not_restarted_into_old_records(tmp_path, data_root):
    run = tmp_path / "run"
    train(pretrain("vicreg", data_root, run, 1))
    before = (run / "metrics.jsonl").read_bytes()
    (run / "checkpoint.pt").unlink()
    with pytest.raises(RunFolderError, match="holds metrics.jsonl but no checkpoint.pt.*new train.output_dir"):
        train(pretrain("vicreg", data_root, run, 1))
    assert (run / "metrics.jsonl").read_bytes() == before


# --- 6. the lock, and failed starts --------------------------------------------------------------

def test_the_lock_is_the_folder_itself_and_leaves_nothing_behind(tmp_path, data_root):
    """Deleting run.lock let a second trainer run beside the first, and run.lock stayed after every run."""
    run = tmp_path / "run"
    run.mkdir()
    holder = os.open(run, os.O_RDONLY)  # another live trainer, whose run.lock a user deleted
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(RunFolderBusyError, match="is in use by another process"):
            train(pretrain("vicreg", data_root, run, 1))
    finally:
        os.close(holder)
    assert not (run / "metrics.jsonl").exists()
    train(pretrain("vicreg", data_root, run, 1))
    assert not (run / "run.lock").exists()


def test_a_failed_start_leaves_no_run_folder(tmp_path, data_root):
    other = tmp_path / "simsiam"
    train(load_config(ROOT / "configs/mini/pretrain/simsiam.yaml",
                      tiny_overrides("simsiam", data_root, other, 1, criterion="none")))
    run = tmp_path / "runs" / "vicreg"
    with pytest.raises(ValueError, match="holds a simsiam network"):
        train(pretrain("vicreg", data_root, run, 1, f"train.init={other / 'checkpoint.pt'}"))
    assert not run.exists()


# --- 10. advice after a non-finite loss ------------------------------------------------------------

def test_the_non_finite_advice_works_when_followed(tmp_path, data_root):
    """The advice said to lower optim.base_lr and rerun to resume, which a resume refuses."""
    good, out = tmp_path / "good", tmp_path / "run"
    train(pretrain("vicreg", data_root, good, 1))
    exploding = tiny_overrides("vicreg", data_root, out, epochs=2) + [
        f"train.init={good / 'checkpoint.pt'}", "optim.base_lr=1e30", "optim.schedule=constant"]
    with pytest.raises(NonFiniteLossError) as error:
        train(load_config(ROOT / "configs/mini/vicreg.yaml", exploding))
    advice = str(error.value)
    assert f"train.init={out / 'checkpoint.pt'}" in advice and "new train.output_dir" in advice
    followed = tiny_overrides("vicreg", data_root, tmp_path / "new", epochs=1) + [
        f"train.init={out / 'checkpoint.pt'}", "optim.base_lr=0.01", "optim.schedule=constant"]
    assert train(load_config(ROOT / "configs/mini/vicreg.yaml", followed))["status"] == "finished"


def test_an_infinite_coefficient_is_named_not_the_learning_rate(tmp_path, data_root):
    """With an infinite coefficient the advice still blamed the learning rate. (The configuration
    refuses one in criterion.*; the loss's own params reach training unchecked.)"""
    cfg = pretrain("vicreg", data_root, tmp_path / "run", 1)
    cfg = dataclasses.replace(cfg, criterion=dataclasses.replace(cfg.criterion, ent_coeff=math.inf))
    run = types.SimpleNamespace(cfg=cfg, epoch=0, output_dir=tmp_path / "run")
    report = _non_finite_report({"loss": torch.tensor(math.inf)}, run, 3, 0.2)
    assert "criterion.ent_coeff" in report and "base_lr" not in report


# --- 13. signals, and a foreign file in a run folder ------------------------------------------------

@pytest.mark.parametrize(("sent", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_run_saves_and_exits_with_the_signal_status(tmp_path, data_root, sent, code):
    """SIGTERM exited 0; Ctrl-C printed a traceback and saved nothing."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(cli("simsiam", tiny_overrides("simsiam", data_root, run)), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    wait_for_step_line(run / "metrics.jsonl", epoch=0, process=process)
    process.send_signal(sent)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == code, out
    assert "Traceback" not in out and f"stopped by {signal.Signals(sent).name}" in out
    state = checkpoints.load(run / "checkpoint.pt")
    assert (state["epoch"], state["step"]) != (0, 0)
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"


def test_a_foreign_epoch_checkpoint_is_refused_by_sweep(tmp_path, data_root):
    """Another run's file copied in as checkpoint-epoch005.pt was swept and labelled as this run's."""
    run = tmp_path / "run"
    train(pretrain("vicreg", data_root, run, 1, "train.keep_epoch_checkpoints=true"))
    shutil.copy(run / "checkpoint-epoch001.pt", run / "checkpoint-epoch005.pt")
    with pytest.raises(ValueError, match=r"checkpoint-epoch005.pt holds vicreg .* at epoch 1, but the run .* "
                                         r"would have written vicreg .* at epoch 5"):
        sweep(run, tmp_path / "results", epochs=[5], device="cpu", workers=0)
    assert not (tmp_path / "results").exists()


def test_reproduce_does_not_mark_an_entry_done_with_a_gap_in_its_probes(tmp_path, monkeypatch):
    """An entry whose per-epoch probes had a gap (lost to a kill) was marked done and drawn with it."""
    from test_reproduce import one_epoch_grid

    data_root, bases = one_epoch_grid(tmp_path, monkeypatch)
    results, runs = tmp_path / "results", tmp_path / "runs"
    assert reproduce.run_one("vicreg", "e2mc", 0, results, runs, str(data_root), bases) == "done"
    next((results / "training").glob("training_vicreg_e2mc_*.json")).unlink()
    next((results / "linear_probe").glob("linear_probe_vicreg_e2mc_*_e001_f1pct_*.json")).unlink()
    with pytest.raises(RuntimeError, match=r"vicreg/e2mc seed 0 trained, but its per-epoch probes are missing "
                                           r"\(epoch 1 at 0.01\)"):
        reproduce.run_one("vicreg", "e2mc", 0, results, runs, str(data_root), bases)
    assert not list((results / "training").glob("training_vicreg_e2mc_*.json"))

"""The training loop's epoch meter (e2mc.meter): its state is what a mid-epoch checkpoint carries, so
it must round-trip through a checkpoint, and a checkpoint written by the loop before the meter existed
(``epoch_sums`` as it laid them out) must still resume into the epoch line of an uninterrupted run."""
import signal
import statistics
from pathlib import Path

import pytest

from e2mc import checkpoints, meter
from e2mc.config import load_config
from e2mc.distributed import StopRequest
from e2mc.meter import EpochMeter
from e2mc.meter import read_metrics
from e2mc.train import train
from test_train import data_root, tiny_overrides  # noqa: F401  (data_root is a fixture)

ROOT = Path(__file__).resolve().parent.parent
SIMSIAM = ROOT / "configs/mini/pretrain/simsiam.yaml"


class Clock:
    """A stand-in for time.time that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_meter_resumed_from_its_saved_state_gives_the_means_of_the_whole_epoch(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(meter.time, "time", clock)
    terms = [{"loss": 0.5 * i, "ssl_loss": float(i * i)} for i in range(7)]
    stats = {1: {"rank": 3.0}, 4: {"rank": 5.0}, 6: {"rank": 10.0}}  # the logged steps' diagnostics

    before = EpochMeter(images_per_step=8, first_step=0)
    for step in range(3):
        before.update(terms[step])
        if step in stats:
            before.update_diagnostics(stats[step])
        clock.now += 2.0
    checkpoints.save_atomic({"epoch_sums": before.state()}, tmp_path / "checkpoint.pt")
    saved = checkpoints.load(tmp_path / "checkpoint.pt")["epoch_sums"]
    assert saved["seconds"] == 6.0 and saved["counted"] == 3

    clock.now += 100.0  # the time between the interruption and the resume is no training time
    after = EpochMeter(images_per_step=8, first_step=3, state=saved)
    for step in range(3, 7):
        after.update(terms[step])
        if step in stats:
            after.update_diagnostics(stats[step])
        clock.now += 1.0
    record = after.epoch_record(steps_per_epoch=7)
    assert record["loss"] == pytest.approx(statistics.mean(t["loss"] for t in terms))
    assert record["ssl_loss"] == pytest.approx(statistics.mean(t["ssl_loss"] for t in terms))
    assert record["rank"] == pytest.approx(statistics.mean([3.0, 5.0, 10.0]))
    assert record["seconds"] == pytest.approx(6.0 + 4.0)
    assert record["images_per_s"] == pytest.approx(8 * 4 / 4.0)  # only the steps after the resume


def test_the_window_rate_counts_the_steps_since_the_last_line_or_the_resume(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(meter.time, "time", clock)
    resumed = EpochMeter(images_per_step=10, first_step=5)
    clock.now += 2.0
    assert resumed.window_rate(step=5, log_every=4) == pytest.approx(10 * 1 / 2.0)  # 1 step since the resume
    clock.now += 8.0
    assert resumed.window_rate(step=9, log_every=4) == pytest.approx(10 * 4 / 8.0)


def test_a_checkpoint_written_before_the_meter_resumes_into_the_uninterrupted_epoch_line(tmp_path, data_root,
                                                                                         monkeypatch):
    run = tmp_path / "run"
    cfg = load_config(SIMSIAM, tiny_overrides("simsiam", data_root, run, epochs=1))  # 4 steps, each logged
    asked = []

    def stop_after_two_steps(self):
        asked.append(1)
        if len(asked) == 3:  # the loop asks once before the epoch, then after every step
            self.signal = signal.SIGUSR1
        return self.signal is not None

    monkeypatch.setattr(StopRequest, "requested", stop_after_two_steps)
    assert train(cfg)["status"] == "interrupted"
    monkeypatch.undo()
    state = checkpoints.load(run / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (0, 2)
    # epoch_sums as the loop wrote them before the meter: running sums of the terms and diagnostics
    # of the steps done, how many steps each sums, and the epoch's seconds so far
    done = read_metrics(run, "step")
    term_names = [k for k in done[0] if k == "loss" or k.startswith(("ssl_", "add_"))]
    diag_names = [k for k in done[0] if k not in {*term_names, "kind", "epoch", "step", "global_step", "lr",
                                                   "images_per_s"}]
    assert term_names and diag_names
    state["epoch_sums"] = {"sums": {k: sum(r[k] for r in done) for k in term_names},
                           "diag_sums": {k: sum(r[k] for r in done) for k in diag_names},
                           "counted": 2, "diag_counted": 2, "seconds": 30.0}
    checkpoints.save_atomic(state, run / "checkpoint.pt")

    assert train(cfg)["status"] == "finished"
    steps = read_metrics(run, "step")
    assert [r["step"] for r in steps] == [0, 1, 2, 3]
    epoch = read_metrics(run, "epoch")[0]
    for name in term_names + diag_names:
        assert epoch[name] == pytest.approx(statistics.mean(r[name] for r in steps)), name
    assert epoch["seconds"] > 30.0

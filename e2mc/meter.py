"""The numbers of a training run as the loop logs them: the epoch's running means and images/s
(:class:`EpochMeter`), and ``metrics.jsonl``, the run folder's file of records they go to
(:class:`MetricsLog` appends, :func:`read_metrics` reads back).

The loop feeds an :class:`EpochMeter` every step's loss terms and, on the steps it logs, the
embedding diagnostics; the meter turns them into the epoch's line. An epoch that a stop signal
interrupts saves :meth:`EpochMeter.state` in its checkpoint (the ``epoch_sums`` entry) and the resumed
epoch's meter starts from it, so that the epoch line after a resume holds the means of an
uninterrupted run; its images/s counts only the images trained after the resume, over their time.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from e2mc.errors import write_error


class EpochMeter:
    """Sums and clocks of one epoch, from its first step (``first_step``: 0, or where a resume starts).

    ``state``: what :meth:`state` returned when the epoch was interrupted (``{}`` or None for a new
    epoch): ``{"sums", "diag_sums"}`` (name -> sum), ``{"counted", "diag_counted"}`` (steps summed)
    and ``"seconds"`` (the epoch's training time before the interruption)."""

    def __init__(self, images_per_step: int, first_step: int, state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self.images_per_step, self.first_step = images_per_step, first_step
        self.sums: dict[str, float] = defaultdict(float, state.get("sums", {}))
        self.diag_sums: dict[str, float] = defaultdict(float, state.get("diag_sums", {}))
        self.counted, self.diag_counted = state.get("counted", 0), state.get("diag_counted", 0)
        self.earlier_seconds = state.get("seconds", 0.0)
        self.started = self.window_started = time.time()

    def update(self, terms: dict[str, float]) -> None:
        """Add one step's loss terms."""
        for name, value in terms.items():
            self.sums[name] += value
        self.counted += 1

    def update_diagnostics(self, stats: dict[str, float]) -> None:
        """Add the embedding diagnostics measured at a logged step."""
        for name, value in stats.items():
            self.diag_sums[name] += value
        self.diag_counted += 1

    def window_rate(self, step: int, log_every: int) -> float:
        """Images/s since the last step line (or since the resume), for the line of ``step``; the next
        window starts now."""
        now = time.time()
        steps = min(log_every, step + 1 - self.first_step)
        rate = self.images_per_step * steps / max(now - self.window_started, 1e-9)
        self.window_started = now
        return rate

    def state(self) -> dict[str, Any]:
        """What an interrupted epoch's checkpoint carries to resume this meter."""
        return {"sums": dict(self.sums), "diag_sums": dict(self.diag_sums), "counted": self.counted,
                "diag_counted": self.diag_counted, "seconds": self.earlier_seconds + time.time() - self.started}

    def epoch_record(self, steps_per_epoch: int) -> dict[str, float]:
        """The means of the epoch's terms and diagnostics, its images/s (the images trained since
        ``first_step`` over their time) and ``seconds`` (its whole training time, resumes included)."""
        elapsed = time.time() - self.started
        return {**{k: v / max(self.counted, 1) for k, v in self.sums.items()},
                **{k: v / max(self.diag_counted, 1) for k, v in self.diag_sums.items()},
                "images_per_s": self.images_per_step * (steps_per_epoch - self.first_step) / max(elapsed, 1e-9),
                "seconds": self.earlier_seconds + elapsed}


class MetricsLog:
    """Appends JSON lines on rank 0; on resume, cuts the file back to what the checkpoint had seen."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, size: int) -> None:
        """Cut the file back to the ``size`` bytes a checkpoint recorded (the caller has checked that
        the file holds at least that many: a shorter one is refused, never padded)."""
        if self.enabled and self.path.exists():
            with open(self.path, "r+b") as f:
                f.truncate(size)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            size = self.size()
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:  # full disk, ...: no half line, and no empty file, left behind
                with contextlib.suppress(OSError):
                    if size:
                        os.truncate(self.path, size)
                    else:
                        self.path.unlink()
                raise write_error(self.path, e) from e


def read_metrics(output_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``, in order; only those of ``kind`` ("step", "epoch",
    "segment") when given."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {output_dir} is not the output_dir of a training run")
    records = []
    for number, line in enumerate(path.read_bytes().decode(errors="replace").splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number} is not a JSON record ({error.msg}): the file is damaged; "
                                 "restore it, or train the run again in a new folder") from None
            if not (isinstance(record, dict) and "kind" in record):
                raise ValueError(f"{path} line {number} is not a metrics record (no \"kind\"): the file is damaged")
            records.append(record)
    return [r for r in records if kind is None or r["kind"] == kind]

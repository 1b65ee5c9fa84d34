"""A training run's metrics.jsonl as the interruption and resume tests compare it."""
from __future__ import annotations

from e2mc.meter import read_metrics

TIMING_KEYS = {"images_per_s", "seconds"}


def comparable_records(output_dir) -> list[dict]:
    """The step and epoch records without their timings: what an interruption must leave unchanged.
    (Segment records say where each piece of the run started, so they differ by design.)"""
    return [{k: v for k, v in rec.items() if k not in TIMING_KEYS}
            for rec in read_metrics(output_dir) if rec["kind"] != "segment"]


def segment_starts(output_dir) -> list[tuple[int, int]]:
    """(epoch, step) at which each piece of a run started, from its segment records."""
    return [(rec["epoch"], rec["step"]) for rec in read_metrics(output_dir, "segment")]

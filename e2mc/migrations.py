"""Commands that correct committed result files when a defect is found in how they were written.

Results are evidence: they are never edited by hand. When the code that wrote them is found wrong, a
migration here rewrites the affected files, keeps what was recorded beside the correction, and notes in
each file what was changed, by which command, when.

    python -m e2mc migrate timing --results results/mini
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from e2mc.provenance import provenance, write_json_atomic

TIMING_NOTE = ("Before this correction, the epoch in which a run resumed reported its images/s as the whole "
               "epoch's images over the time since the resume, and run_seconds counted only the last segment. "
               "images_per_s of that epoch now counts the images trained after the resume; its seconds are "
               "estimated for the whole epoch at the speed measured after the resume; run_seconds is every "
               "epoch's seconds scaled by the last segment's ratio of wall time (probes included) to epoch time.")


def correct_timing(record: dict) -> dict | None:
    """The training result ``record`` with the timing of a resumed run corrected (see :data:`TIMING_NOTE`);
    None when the run was trained in one piece or the record is already corrected."""
    extra = record.get("extra", {})
    segments, epochs = extra.get("segments", []), extra.get("epochs", [])
    if record.get("kind") != "training" or len(segments) < 2 or "timing_migration" in extra or not epochs:
        return None
    steps = epochs[0]["global_step"] - (segments[0]["global_step"] if segments else 0)
    batch = record["config"]["data"]["batch_size"]
    corrected = [dict(e) for e in epochs]
    by_epoch = {e["epoch"]: e for e in corrected}
    for segment in segments[1:]:
        resumed = by_epoch.get(segment["epoch"] + 1)
        if resumed is None or segment["step"] == 0:
            continue  # resumed at an epoch boundary: that epoch's numbers were right
        remaining = steps - segment["step"]
        measured = resumed["seconds"]
        resumed.update(seconds_measured_after_resume=measured, images_per_s=batch * remaining / measured,
                       seconds=measured * steps / remaining)
    last = segments[-1]
    in_last = [e.get("seconds_measured_after_resume", e["seconds"]) for e in epochs if e["epoch"] > last["epoch"]]
    ratio = extra["run_seconds"] / sum(in_last) if in_last and sum(in_last) > 0 else 1.0
    fixed = json.loads(json.dumps(record))
    fixed["extra"].update(epochs=corrected, run_seconds=ratio * sum(e["seconds"] for e in corrected),
                          timing_migration={"provenance": provenance(), "note": TIMING_NOTE,
                                            "recorded_run_seconds": extra["run_seconds"],
                                            "recorded_epochs": epochs})
    return fixed


def migrate_timing(results_dir: Path) -> list[Path]:
    """Correct every resumed training result under ``results_dir``; returns the files rewritten."""
    changed = []
    for path in sorted(Path(results_dir).glob("training/*.json")):
        fixed = correct_timing(json.loads(path.read_text()))
        if fixed is not None:
            write_json_atomic(path, fixed)
            changed.append(path)
    return changed


def run_time_summary(results_dir: Path) -> str:
    """Median run_seconds per method and the total, as the README reports them."""
    per_method: dict[str, list[float]] = {}
    for path in Path(results_dir).glob("training/*.json"):
        record = json.loads(path.read_text())
        per_method.setdefault(record["method"], []).append(record["extra"]["run_seconds"])
    lines = [f"{method}: median {statistics.median(v) / 60:.1f} min over {len(v)} runs"
             for method, v in sorted(per_method.items())]
    total = sum(sum(v) for v in per_method.values())
    return "\n".join(lines + [f"all: {total / 3600:.1f} h"])


def _timing_command(args) -> int:
    for results_dir in args.results:
        changed = migrate_timing(Path(results_dir))
        print(f"[migrate] {results_dir}: corrected {len(changed)} resumed run(s)")
        for path in changed:
            print(f"  {path}")
        print(run_time_summary(Path(results_dir)))
    return 0


def add_commands(sub) -> None:
    text = "correct committed result files written by a defective version (each file notes the correction)"
    p = sub.add_parser("migrate", help=text, description=text)
    what = p.add_subparsers(dest="migration", required=True)
    q = what.add_parser("timing", help="images/s and run_seconds of runs that were resumed (issue 13)")
    q.add_argument("--results", nargs="+", default=["results/mini"], help="results folders")
    q.set_defaults(run=_timing_command)

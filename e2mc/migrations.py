"""Commands that correct committed result files when a defect is found in how they were written.

Results are evidence: they are never edited by hand. When the code that wrote them is found wrong, a
migration here rewrites the affected files, keeps what was recorded beside the correction, and notes in
each file what was changed, by which command, when. ``paths`` is the exception: it changes no evidence,
only where the writing machine kept its files, so it notes nothing (the commit that ran it names it).

    python -m e2mc migrate timing --results results/mini
    python -m e2mc migrate paths --results results
"""
from __future__ import annotations

import collections
import json
import re
import statistics
from pathlib import Path
from typing import Any, Iterator

from e2mc.provenance import REPO_ROOT, module_invocation, provenance, require_clean_tree, write_json_atomic

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
    require_clean_tree(*args.results)
    for results_dir in args.results:
        changed = migrate_timing(Path(results_dir))
        print(f"[migrate] {results_dir}: corrected {len(changed)} resumed run(s)")
        for path in changed:
            print(f"  {path}")
        print(run_time_summary(Path(results_dir)))
    return 0


# --- absolute paths of the machine that wrote a file -------------------------------------------------

# An absolute path: a "/" at the start of a string or after a space, "=" or quote, and what follows up to
# the next space or quote.
ABSOLUTE_PATH = re.compile(r"""(?<![^\s="'(])/[^\s"')]+""")
MAIN_MODULE = "/e2mc/__main__.py"


def _strings(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string inside a JSON value with its place (``provenance.command``, ``extra.segments[].origin``)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, f"{where}[]")
    elif isinstance(value, str):
        yield where, value


def absolute_paths(record: Any) -> list[tuple[str, str]]:
    """(place, path) of every absolute path written in ``record``'s strings."""
    return [(where, path) for where, text in _strings(record) for path in ABSOLUTE_PATH.findall(text)]


def checkout_roots(records: list[Any]) -> set[str]:
    """The folders of the checkouts that wrote ``records``: those whose ``e2mc/__main__.py`` a recorded
    command ran (``python -m e2mc`` records that path), and this checkout."""
    roots = {str(REPO_ROOT)}
    for record in records:
        for _, path in absolute_paths(record):
            if path.endswith(MAIN_MODULE):
                roots.add(path[: -len(MAIN_MODULE)])
    return roots


def relative_text(text: str, roots: set[str], command: bool = False) -> str:
    """``text`` with every absolute path inside one of ``roots`` made relative to it (the root itself
    becomes "."); with ``command``, a leading ``.../e2mc/__main__.py`` becomes ``python -m e2mc`` as
    :func:`e2mc.provenance.command_line` records it today. Other paths stay as they are."""
    for root in sorted(roots, key=len, reverse=True):  # a checkout inside another: the inner one first
        text = re.sub(rf"""(?<![^\s="'(]){re.escape(root)}(?:/|(?=[\s"')]|$))""",
                      lambda m: "" if m.group().endswith("/") else ".", text)
    if command:
        text = " ".join(module_invocation(text.split(" ")))
    return text


def relative_paths(value: Any, roots: set[str], key: str | None = None) -> Any:
    """A copy of the JSON value ``value`` in which only strings changed (see :func:`relative_text`;
    the value of a ``command`` key is read as a command line)."""
    if isinstance(value, dict):
        return {k: relative_paths(item, roots, k) for k, item in value.items()}
    if isinstance(value, list):
        return [relative_paths(item, roots, key) for item in value]
    if isinstance(value, str):
        return relative_text(value, roots, command=key == "command")
    return value


def _path_counts(records: dict[Path, Any]) -> collections.Counter:
    """Absolute paths per place (``provenance.command``, ``config.eval.results_dir``, ...)."""
    return collections.Counter(where for record in records.values() for where, _ in absolute_paths(record))


def migrate_paths(folders: list[Path], roots: set[str] | None = None, dry_run: bool = False
                  ) -> tuple[list[Path], collections.Counter, collections.Counter]:
    """Make every absolute path of a checkout in the JSON files under ``folders`` relative to it.

    Only strings change: numbers, the recorded ``config_hash`` and file names stay as written (the
    fields that change are left out of ``Config.hash()``: see e2mc.config.LOCATION_FIELDS). Paths
    outside the checkouts (a dataset folder such as /usr/share/datasets/...) are kept: they say where
    the data were. ``roots`` default to :func:`checkout_roots` of every file. Returns the files
    rewritten (or that would be, with ``dry_run``) and the absolute paths per place before and after.
    """
    records = {path: json.loads(path.read_text()) for folder in folders for path in sorted(Path(folder).rglob("*.json"))}
    roots = checkout_roots(list(records.values())) if roots is None else set(roots)
    migrated = {path: relative_paths(record, roots) for path, record in records.items()}
    changed = [path for path in records if migrated[path] != records[path]]
    if not dry_run:
        for path in changed:
            write_json_atomic(path, migrated[path])
    return changed, _path_counts(records), _path_counts(migrated)


def _paths_command(args) -> int:
    if not args.dry_run:
        require_clean_tree(*args.results)
    changed, before, after = migrate_paths([Path(f) for f in args.results],
                                           set(args.root) if args.root else None, args.dry_run)
    print(f"[migrate] absolute paths per field, before -> after ({' '.join(args.results)}):")
    for where in sorted(before, key=lambda w: -before[w]):
        print(f"  {before[where]:6d} -> {after[where]:6d}  {where}")
    verb = "would rewrite" if args.dry_run else "rewrote"
    print(f"[migrate] {verb} {len(changed)} file(s); {sum(after.values())} absolute path(s) remain")
    return 0


def add_commands(sub) -> None:
    text = "correct committed result files written by a defective version (each file notes the correction)"
    p = sub.add_parser("migrate", help=text, description=text)
    what = p.add_subparsers(dest="migration", required=True)
    q = what.add_parser("timing", help="images/s and run_seconds of runs that were resumed (issue 13)")
    q.add_argument("--results", nargs="+", default=["results/mini"], help="results folders")
    q.set_defaults(run=_timing_command)
    q = what.add_parser("paths", help="absolute paths of the machine that wrote a result made relative to the "
                                      "repository (commands, configuration folders, checkpoints; issue 21)")
    q.add_argument("--results", nargs="+", default=["results"], help="folders whose *.json files are migrated")
    q.add_argument("--root", action="append", default=None, metavar="FOLDER",
                   help="a checkout folder the files name (default: every folder whose e2mc/__main__.py a "
                        "recorded command ran, and this checkout); repeatable")
    q.add_argument("--dry-run", action="store_true", help="count the absolute paths; write nothing")
    q.set_defaults(run=_paths_command)

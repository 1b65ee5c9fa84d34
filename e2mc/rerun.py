"""Computing finished entries of an experiment again: their results and run folder are set aside first.

``reproduce`` skips an entry whose results are there. To compute one again (after a fix, or because
its files record a checkout with uncommitted changes, so the code that made them cannot be recovered),
``reproduce --rerun METHOD:ARM:SEED ...`` or ``reproduce --rerun-dirty`` moves every result file of
the entry, and its run folder, into ``<runs>/replaced/<UTC time>/`` and then runs it as usual. Nothing
is deleted: the old files stay there to compare against the new ones.
"""
from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path

from e2mc.config import LABEL_FRACTIONS
from e2mc.errors import UserError
from e2mc.experiments import DATASET, Part, arm_results_dir, entries, find_arm
from e2mc.results import find_results
from e2mc.runfolder import run_folder

Entry = tuple[str, str, int]  # (method, arm label or "base", seed), as `reproduce --entry` spells it
REPLACED_DIR = "replaced"


def entry_results(part: Part, entry: Entry, results_dir: Path) -> list[Path]:
    """Every result file of ``entry`` in ``results_dir``, whatever configuration hash it carries: for an
    arm its training record, probes (every epoch and fraction), transfer probes and diagnostics of that
    seed; for the base (label "base") the probes and transfer probes of every seed of the part and its
    diagnostics. Raises UserError for an entry that is not an arm or the base."""
    method, label, seed = entry
    if label == "plateau":
        raise UserError(f"{method}:plateau:{seed} cannot be re-run this way (its probes come from the "
                        "pre-training run): move results/<part>/plateau/linear_probe files away and run again")
    if label == "base":
        folder, arm, seeds = Path(results_dir), "base", part.seeds
    else:
        found = find_arm(part, method, label)
        folder, arm, seeds = arm_results_dir(results_dir, found), found.name, (seed,)
    files = find_results(folder / "diagnostics", "diagnostics", method, arm, DATASET, "*", None, seeds[0])
    for s in seeds:
        files += find_results(folder / "training", "training", method, arm, DATASET, "*", None, s)
        for fraction in LABEL_FRACTIONS:
            files += find_results(folder / "linear_probe", "linear_probe", method, arm, DATASET, "*", fraction, s)
        for dataset in part.transfer_datasets():
            files += find_results(folder / "transfer", "transfer", method, arm, dataset, "*", 1.0, s)
    return files


def recorded_dirty(path: Path) -> bool:
    """Whether the result file ``path`` was computed by code with uncommitted changes: its own
    provenance, or that of a training segment it records (a run resumed from a dirty checkout)."""
    record = json.loads(path.read_text())
    segments = (record.get("extra") or {}).get("segments") or []
    return any(bool((p or {}).get("git_dirty")) for p in [record.get("provenance"),
                                                           *(s.get("provenance") for s in segments)])


def dirty_entries(part: Part, results_dir: Path) -> list[Entry]:
    """The entries of ``part`` with a result file in ``results_dir`` that :func:`recorded_dirty`."""
    return [entry for entry in entries(part) if entry[1] != "plateau"
            and any(recorded_dirty(path) for path in entry_results(part, entry, results_dir))]


def set_aside(part: Part, chosen: list[Entry], results_dir: Path, runs_dir: Path) -> tuple[Path, int]:
    """Move every result file of the ``chosen`` entries and their run folders into
    ``<runs_dir>/replaced/<UTC time>/`` (``results/...`` and ``runs/...`` below it, as they lay), so that
    ``reproduce`` computes them again. Returns that folder and the number of files and folders moved."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    attic = Path(runs_dir) / REPLACED_DIR / stamp
    moves = []
    for entry in chosen:
        method, label, seed = entry
        moves += [(path, attic / "results" / path.relative_to(results_dir))
                  for path in entry_results(part, entry, results_dir)]
        folder = run_folder(runs_dir, method, label, seed)
        if label != "base" and folder.exists():
            moves.append((folder, attic / "runs" / folder.relative_to(runs_dir)))
    for source, destination in moves:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(destination))
    return attic, len(moves)

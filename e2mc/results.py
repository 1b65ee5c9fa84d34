"""Result files: one JSON per evaluation, in one schema, and loading a folder of them as a table.

Every file under ``results/`` is a JSON object with the fields below (docs/results-schema.md has
the full description and examples)::

    {"schema": "e2mc-result-v1", "kind": "linear_probe" | "finetune" | "transfer" | "diagnostics" | "training",
     "method": a method of e2mc.methods, "arm": str, "criterion": {"name", "transform", "ent_coeff",
     "cov_coeff", "params"}, "epoch": int, "label_fraction": float | null, "seed": int, "dataset": str,
     "metrics": {name: number}, "extra": {...}, "config": {...}, "config_hash": str | null,
     "checkpoint": str | null, "provenance": {...}, "started": iso, "finished": iso}

:func:`write_result` fills in ``schema``, ``provenance`` and the timestamps, checks the record and
writes it atomically; :func:`load` reads a folder into a :class:`pandas.DataFrame` with one row per
file, the metrics and the criterion flattened into columns.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from e2mc.config import Config, config_from_dict
from e2mc.errors import UserError
from e2mc.methods import method_names
from e2mc.provenance import provenance, repo_relative, utc_now, write_json_atomic

SCHEMA = "e2mc-result-v1"
KINDS = ("linear_probe", "finetune", "transfer", "diagnostics", "training")
CRITERION_FIELDS = ("name", "transform", "ent_coeff", "cov_coeff", "params")
PROVENANCE_FIELDS = ("command", "git_commit", "git_dirty", "host", "device", "python", "torch", "date")
FIELDS = ("schema", "kind", "method", "arm", "criterion", "epoch", "label_fraction", "seed", "dataset",
          "metrics", "extra", "config", "config_hash", "checkpoint", "provenance", "started", "finished")
# Top-level fields that become DataFrame columns as they are (metrics must not reuse these names).
SCALAR_COLUMNS = ("kind", "method", "arm", "epoch", "label_fraction", "seed", "dataset", "checkpoint",
                  "config_hash", "started", "finished")


# Folders that loading a results folder leaves out (see load).
SEPARATE_FOLDERS = ("checkpoints", "plateau", "variants", "figures")  # figures: drawn from a folder outside results/


class ResultFileError(UserError):
    """One or more result files do not follow the schema; the message names each file and its problems."""


# ----------------------------------------------------------------------------- building records

def config_hash(config: Any) -> str | None:
    """``Config.hash()`` of a configuration given as a Config or its dict; None for no configuration."""
    if isinstance(config, Config):
        return config.hash()
    return config_from_dict(json.loads(json.dumps(dict(config)))).hash() if config else None


def _timestamp(value: str | _dt.datetime | None) -> str | None:
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.isoformat(timespec="seconds")
    return value


def build_result(*, kind: str, method: str, arm: str, criterion: dict, epoch: int, label_fraction: float | None,
                 seed: int, dataset: str, metrics: dict[str, float], extra: dict | None = None,
                 config: Any = None, checkpoint: str | os.PathLike | None = None,
                 started: str | _dt.datetime | None = None, finished: str | _dt.datetime | None = None,
                 device: Any = None, command: list[str] | None = None) -> dict[str, Any]:
    """A complete result record (a dict in the schema), checked; see :func:`write_result`."""
    config_dict = config.to_dict() if isinstance(config, Config) else dict(config or {})
    finished = _timestamp(finished) or utc_now()
    record = {
        "schema": SCHEMA, "kind": kind, "method": method, "arm": arm, "criterion": dict(criterion),
        "epoch": epoch, "label_fraction": None if label_fraction is None else float(label_fraction),
        "seed": seed, "dataset": dataset,
        # numpy and torch scalars become plain numbers; anything else is left for validate() to name
        "metrics": {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()},
        "extra": dict(extra or {}), "config": config_dict, "config_hash": config_hash(config),
        "checkpoint": None if checkpoint is None else repo_relative(checkpoint),
        "provenance": provenance(device, command), "started": _timestamp(started) or finished, "finished": finished,
    }
    problems = validate(record)
    if problems:
        raise ValueError("the result does not follow the schema " + SCHEMA + ": " + "; ".join(problems))
    return record


def write_result(path: str | os.PathLike, **fields) -> Path:
    """Check a result and write it to ``path`` atomically (readers never see half a file).

    Keyword arguments are those of :func:`build_result`: ``kind``, ``method``, ``arm``,
    ``criterion`` (see :func:`e2mc.criteria.criterion_record`), ``epoch``, ``label_fraction``, ``seed``,
    ``dataset``, ``metrics`` (flat dict of numbers), and optionally ``extra``, ``config``
    (a :class:`e2mc.config.Config` or its dict; the hash is computed from it), ``checkpoint``,
    ``started`` / ``finished`` (ISO strings or datetimes; ``finished`` defaults to now,
    ``started`` to ``finished``), ``device`` and ``command`` (for the provenance block).
    Raises ValueError listing every field that breaks the schema. Returns the path.
    """
    return write_json_atomic(path, build_result(**fields))


def result_filename(kind: str, method: str, arm: str, dataset: str, epoch: int | str, label_fraction: float | None,
                    seed: int, config_hash: str | None) -> str:
    """A file name that differs for every (kind, method, arm, dataset, epoch, fraction, seed, config).

    E.g. ``linear_probe_vicreg_e2mc_fashion_mnist_e003_f1pct_s0_1a2b3c4d.json``; ``epoch`` or
    ``config_hash`` "*" makes it a glob pattern matching every epoch or configuration.
    """
    fraction = "na" if label_fraction is None else f"{100 * label_fraction:g}pct"
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{kind}_{method}_{arm}_{dataset}")
    epoch_text = epoch if epoch == "*" else f"{epoch:03d}"
    return f"{safe}_e{epoch_text}_f{fraction}_s{seed}_{(config_hash or 'noconfig')[:8]}.json"


def find_results(results_dir: str | os.PathLike, kind: str, method: str, arm: str, dataset: str, epoch: int | str,
                 label_fraction: float | None, seed: int) -> list[Path]:
    """The files in ``results_dir`` that hold this result (``epoch`` "*": at any epoch), whatever
    configuration hash their names carry, in name order; see :func:`existing_result` to match the hash."""
    pattern = result_filename(kind, method, arm, dataset, epoch, label_fraction, seed, "*")
    return sorted(Path(results_dir).glob(pattern))


class ConflictingResultError(UserError):
    """A results folder already holds this result computed with another configuration."""


def existing_result(results_dir: str | os.PathLike, kind: str, method: str, arm: str, dataset: str, epoch: int,
                    label_fraction: float | None, seed: int, expected_hash: str | None) -> Path | None:
    """The file in ``results_dir`` that already holds this result, whatever hash its name carries;
    None when there is none.

    A file's name carries the configuration hash of the code that wrote it, and ``Config.hash`` has
    changed (it once included where a run lived), so the name alone would make a resumed
    reproduction redo finished work. A file matches when the configuration it records hashes,
    today, to ``expected_hash`` (a ``Config.hash()``; None for a result without configuration).
    Raises :class:`ConflictingResultError` when the folder holds this result for another
    configuration, rather than let two of one seed into a table.
    """
    for path in find_results(results_dir, kind, method, arm, dataset, epoch, label_fraction, seed):
        recorded = config_hash(json.loads(path.read_text()).get("config"))
        if recorded == expected_hash:
            return path
        raise ConflictingResultError(
            f"{path} holds {kind} {method}/{arm} epoch {epoch} seed {seed} computed with another configuration "
            f"(hash {recorded}, not {expected_hash}); write to another results folder, or move that file away "
            "to compute it again")
    return None


# ----------------------------------------------------------------------------- checking

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_iso(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        _dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def validate(record: Any) -> list[str]:
    """Everything in ``record`` that breaks the schema, as short sentences; empty when it is valid."""
    if not isinstance(record, dict):
        return [f"the file must hold a JSON object, got {type(record).__name__}"]
    problems = []
    missing = [f for f in FIELDS if f not in record]
    if missing:
        problems.append("missing field(s) " + ", ".join(missing))
    unknown = [f for f in record if f not in FIELDS]
    if unknown:
        problems.append("unknown field(s) " + ", ".join(unknown) + " (put free-form data under 'extra')")

    def check(field: str, ok: bool, expected: str) -> None:
        if field in record and not ok:
            problems.append(f"{field} must be {expected}, got {record[field]!r}")

    get = record.get
    check("schema", get("schema") == SCHEMA, repr(SCHEMA))
    check("kind", get("kind") in KINDS, "one of " + ", ".join(KINDS))
    check("method", get("method") in method_names(), "one of " + ", ".join(method_names()))
    check("arm", isinstance(get("arm"), str) and get("arm") != "", "a non-empty string")
    check("epoch", _is_int(get("epoch")) and get("epoch") >= 0, "an integer >= 0")
    fraction = get("label_fraction")
    check("label_fraction", fraction is None or (_is_number(fraction) and 0 < fraction <= 1),
          "null or a number in (0, 1]")
    check("seed", _is_int(get("seed")), "an integer")
    check("dataset", isinstance(get("dataset"), str) and get("dataset") != "", "a non-empty string")
    check("extra", isinstance(get("extra"), dict), "an object")
    check("config", isinstance(get("config"), dict), "an object")
    check("config_hash", get("config_hash") is None or isinstance(get("config_hash"), str), "null or a string")
    check("checkpoint", get("checkpoint") is None or isinstance(get("checkpoint"), str), "null or a string")
    check("started", _is_iso(get("started")), "an ISO 8601 time")
    check("finished", _is_iso(get("finished")), "an ISO 8601 time")

    criterion = get("criterion")
    if "criterion" in record:
        if not isinstance(criterion, dict) or set(criterion) != set(CRITERION_FIELDS):
            problems.append(f"criterion must be an object with exactly the keys {', '.join(CRITERION_FIELDS)}, "
                            f"got {criterion!r}")
        else:
            if not isinstance(criterion["name"], str):
                problems.append(f"criterion.name must be a string, got {criterion['name']!r}")
            if not (criterion["transform"] is None or isinstance(criterion["transform"], str)):
                problems.append(f"criterion.transform must be null or a string, got {criterion['transform']!r}")
            for key in ("ent_coeff", "cov_coeff"):
                if not (criterion[key] is None or _is_number(criterion[key])):
                    problems.append(f"criterion.{key} must be null or a number, got {criterion[key]!r}")
            if not isinstance(criterion["params"], dict):
                problems.append(f"criterion.params must be an object, got {criterion['params']!r}")

    metrics = get("metrics")
    if "metrics" in record:
        if not isinstance(metrics, dict):
            problems.append(f"metrics must be an object of numbers, got {metrics!r}")
        else:
            bad = [f"{k}={v!r}" for k, v in metrics.items() if not _is_number(v)]
            if bad:
                problems.append("metrics must be numbers (lists and text go under 'extra'): " + ", ".join(bad))
            clashes = [k for k in metrics if k in SCALAR_COLUMNS or k == "file" or k.startswith(("criterion_",
                                                                                                  "provenance_"))]
            if clashes:
                problems.append("metric name(s) " + ", ".join(clashes) + " clash with the table's columns; rename them")

    prov = get("provenance")
    if "provenance" in record:
        if not isinstance(prov, dict):
            problems.append(f"provenance must be an object, got {prov!r}")
        else:
            lacking = [k for k in PROVENANCE_FIELDS if k not in prov]
            if lacking:
                problems.append("provenance lacks " + ", ".join(lacking) + " (use e2mc.provenance.provenance())")
    return problems


# ----------------------------------------------------------------------------- loading

def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """One result file, checked; raises :class:`ResultFileError` naming the file and its problems."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ResultFileError(f"{path}: not valid JSON ({e})") from None
    problems = validate(record)
    if problems:
        raise ResultFileError(f"{path}: " + "; ".join(problems))
    return record


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """One table row: the scalar fields, ``criterion_<key>`` (params as canonical JSON text, so that
    rows can be grouped by it), every metric under its own name, ``provenance_<key>``, and the
    ``extra`` and ``config`` objects as they are."""
    row = {key: record[key] for key in SCALAR_COLUMNS}
    for key in CRITERION_FIELDS:
        value = record["criterion"][key]
        row[f"criterion_{key}"] = json.dumps(value, sort_keys=True) if key == "params" else value
    row.update(record["metrics"])
    for key, value in record["provenance"].items():
        row[f"provenance_{key}"] = value
    row["extra"], row["config"] = record["extra"], record["config"]
    return row


def load(directory: str | os.PathLike, pattern: str = "**/*.json"):
    """All result files under ``directory`` (recursively) as a pandas DataFrame, one row per file.

    Columns: ``file`` (path relative to ``directory``), the scalar fields (kind, method, arm, epoch,
    label_fraction, seed, dataset, checkpoint, config_hash, started, finished), ``criterion_name``,
    ``criterion_transform``, ``criterion_ent_coeff``, ``criterion_cov_coeff``, ``criterion_params``
    (JSON text), one column per metric (NaN where a file lacks it), ``provenance_*``, ``extra`` and
    ``config``. Rows are sorted by file name.

    Files under a ``checkpoints/`` folder (base models and their provenance) are not results and are
    skipped, and so are those under a ``plateau/`` or ``variants/`` folder: results of their own
    (the pre-training plateau, the grid's variants such as another learning rate; see
    e2mc.reproduce) that would otherwise mix into the tables of the folder; load them by their path. Every file is checked first; if any is malformed, :class:`ResultFileError` lists each
    offending file with what is wrong, and nothing is returned.
    """
    import pandas as pd

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"result folder {directory} does not exist; pass the --results-dir the "
                                "evaluation wrote to")
    # checkpoints/ holds model files and their provenance, not results; plateau/ and variants/ their own results
    paths = sorted(p for p in directory.glob(pattern)
                   if p.is_file() and not set(SEPARATE_FOLDERS) & set(p.relative_to(directory).parts[:-1]))
    if not paths:
        raise FileNotFoundError(f"no result files ({pattern}) under {directory}")
    rows, errors = [], []
    for path in paths:
        try:
            record = read_result(path)
        except ResultFileError as e:
            errors.append(str(e))
            continue
        except OSError as e:
            errors.append(f"{path}: cannot be read ({e})")
            continue
        rows.append({"file": str(path.relative_to(directory)), **flatten(record)})
    if errors:
        raise ResultFileError(f"{len(errors)} of {len(paths)} result file(s) under {directory} are malformed; "
                              "fix or remove them (write results with e2mc.results.write_result):\n  "
                              + "\n  ".join(errors))
    return pd.DataFrame(rows)


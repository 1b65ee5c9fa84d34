"""Selecting results from a frame of result files, and the statistics every figure and table uses.

The frame is what :func:`e2mc.results.load` returns (one row per result JSON). Every summary is the
mean over seeds with the half-width of a two-sided Student-t interval; :mod:`e2mc.plots` and
:mod:`e2mc.tables` both draw from here, and neither imports the other.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from e2mc.errors import UserError
from e2mc.naming import PROBE_METRICS, method_order

REPRODUCE_HINT = "run make reproduce first"


class MissingResultsError(UserError, LookupError):
    """The results a figure or table needs are not in the frame (or its directory)."""


class DuplicateResultsError(UserError):
    """A cell of a table or figure would average two results of the same seed."""


# --- statistics ---------------------------------------------------------------------------------

def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, int]:
    """Mean, half-width of the two-sided Student-t confidence interval of the mean, and count.

    ``half_width = t_{(1+confidence)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation
    (ddof 1). One value gives a NaN half-width (no interval from a single seed); NaNs are an error.
    """
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if np.isnan(x).any():
        raise UserError(f"mean_ci got NaN among {x.tolist()}; a result file lacks this metric")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = x.size
    if n == 1:
        return float(x[0]), math.nan, 1
    sem = x.std(ddof=1) / math.sqrt(n)
    return float(x.mean()), float(stats.t.ppf((1 + confidence) / 2, n - 1) * sem), n


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float, int]:
    """Mean of the paired differences ``a[i] - b[i]``, half-width of their two-sided Student-t interval,
    and the number of pairs (:func:`mean_ci` of the differences: ``t_{(1+confidence)/2, n-1} * s_d /
    sqrt(n)``). ``a`` and ``b`` are per-seed values paired by position (same length); one pair gives a
    NaN half-width. Pairing removes the seed-to-seed variation both arms share (same label subset and
    classifier initialisation), so the interval is narrower than that of two independent means."""
    x, y = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired_difference needs two sequences of the same length, got {x.shape} and {y.shape}")
    return mean_ci(x - y, confidence)


def paired_differences(rows: pd.DataFrame, arm: str, baseline: str, metric: str, by: Sequence[str],
                       confidence: float = 0.95) -> pd.DataFrame:
    """``arm`` minus ``baseline`` on ``metric``, paired on ``seed`` (never on row order), per group of
    ``by`` (e.g. method and epoch for a curve of differences). One row per group in which some seed has
    both arms, with ``mean``, ``ci`` (:func:`paired_difference`; NaN with one pair), ``n``, the epochs
    of either side (``epoch``, ``baseline_epoch``: their largest) and ``dropped_seeds`` (the seeds of
    the group present in only one arm, a list). Raises :class:`DuplicateResultsError` when one arm has
    two results of a seed in a group, :class:`MissingResultsError` when a paired value is missing."""
    require_columns(rows, [*by, "arm", "seed", "epoch", metric])
    records = []
    for key, group in rows.groupby(list(by), dropna=False, sort=True):
        where = dict(zip(by, key))
        sides = []
        for which in (arm, baseline):
            side = group[group["arm"] == which]
            if side["seed"].duplicated().any():
                files = side.loc[side["seed"].duplicated(keep=False), "file"].tolist() if "file" in side else []
                raise DuplicateResultsError(f"{which} {where} has more than one result per seed in "
                                            f"{source_of(rows)}: {files}; {duplicate_advice(side)}")
            sides.append(side.set_index("seed"))
        common = sorted(set(sides[0].index) & set(sides[1].index))
        only = sorted(int(s) for s in set(sides[0].index) ^ set(sides[1].index))
        if not common:
            continue
        values = [side.loc[common, metric] for side in sides]
        for which, side_values in zip((arm, baseline), values):
            if side_values.isna().any():
                raise MissingResultsError(f"{metric} is missing from {which} {where} results in {source_of(rows)}")
        mean, half_width, n = paired_difference(values[0], values[1], confidence)
        records.append({**where, "mean": mean, "ci": half_width, "n": n,
                        "epoch": int(sides[0]["epoch"].max()), "baseline_epoch": int(sides[1]["epoch"].max()),
                        "dropped_seeds": only})
    columns = [*by, "mean", "ci", "n", "epoch", "baseline_epoch", "dropped_seeds"]
    return pd.DataFrame(records, columns=list(dict.fromkeys(columns)))


def summarize(frame: pd.DataFrame, by: Sequence[str], value: str, confidence: float = 0.95) -> pd.DataFrame:
    """One row per group of ``by`` (missing keys such as a null label fraction form their own group),
    with columns ``mean``, ``ci`` (half-width) and ``n`` of ``frame[value]`` over the group's rows
    (its seeds). Rows are sorted by ``by``."""
    require_columns(frame, [*by, value])
    rows = []
    for key, group in frame.groupby(list(by), dropna=False, sort=True):
        if group[value].isna().any():
            files = group.loc[group[value].isna(), "file"].tolist() if "file" in group else []
            raise MissingResultsError(f"{value} is missing from {group[value].isna().sum()} result(s) with "
                                      f"{dict(zip(by, key))} in {source_of(frame)} {files}")
        if "seed" in group and "seed" not in by and group["seed"].duplicated().any():
            # two results of one seed (e.g. two configurations in one folder) would count as two seeds
            files = group.loc[group["seed"].duplicated(keep=False), "file"].tolist() if "file" in group else []
            raise DuplicateResultsError(f"{dict(zip(by, key))} has more than one result per seed in "
                                        f"{source_of(frame)}: {files}; {duplicate_advice(group)}")
        mean, half_width, n = mean_ci(group[value], confidence)
        rows.append({**dict(zip(by, key)), "mean": mean, "ci": half_width, "n": n})
    return pd.DataFrame(rows, columns=[*by, "mean", "ci", "n"])


def _training_run(row: pd.Series) -> str | None:
    """The training run a result evaluates: its checkpoint, else (a per-epoch probe, no checkpoint
    file) its configuration's output folder and seed."""
    if isinstance(row.get("checkpoint"), str):
        return row["checkpoint"]
    train = row.get("config", {}).get("train", {}) if isinstance(row.get("config"), dict) else {}
    return f"{train.get('output_dir')}:{train.get('seed')}" if train else None


def duplicate_advice(rows: pd.DataFrame) -> str:
    """What to do about ``rows`` holding two results of one seed: several training runs probed with the
    same probe seed (they evaluate different runs), or one run under several configurations."""
    twice = rows[rows["seed"].duplicated(keep=False)]
    runs = twice.apply(_training_run, axis=1) if not twice.empty else pd.Series(dtype=object)
    if runs.notna().all() and runs.groupby(twice["seed"]).nunique().max() > 1:
        return ("they evaluate different training runs with the same probe seed, and a seed of a results folder "
                "stands for one training run: probe each run with its training seed (eval.seeds=[<train.seed>], "
                "the default of slurm/eval_linear.sh, submit and reproduce), or give each run a results folder")
    return "one training run was evaluated under several configurations: keep one configuration per results " \
           "folder (move the others to a folder of their own)"


# --- selecting results --------------------------------------------------------------------------

def source_of(frame: pd.DataFrame) -> str:
    """The results directory a frame came from, for error messages (``frame.attrs["results_dir"]``)."""
    return str(frame.attrs.get("results_dir", "the given results"))


def require_columns(frame: pd.DataFrame, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MissingResultsError(
            f"results in {source_of(frame)} have no column(s) {missing} (present: {sorted(map(str, frame.columns))}); "
            f"they are not e2mc-result-v1 files or lack these metrics; {REPRODUCE_HINT}")


def select(frame: pd.DataFrame, kind: str, label_fraction: float | None = None, **equal) -> pd.DataFrame:
    """Rows of ``kind`` (and ``label_fraction``, compared with a float tolerance, and ``column=value``
    for each keyword); raises :class:`MissingResultsError` naming the directory when none are left."""
    if frame.empty:
        raise MissingResultsError(f"no result files in {source_of(frame)}; {REPRODUCE_HINT}")
    require_columns(frame, ["kind", *equal])
    mask = frame["kind"] == kind
    conditions = []
    if label_fraction is not None:
        require_columns(frame, ["label_fraction"])
        fractions = pd.to_numeric(frame["label_fraction"], errors="coerce")
        mask &= np.isclose(fractions, label_fraction, rtol=0, atol=1e-9)
        conditions.append(f"label_fraction {label_fraction:g}")
    for column, value in equal.items():
        if isinstance(value, (list, tuple, set)):
            mask &= frame[column].isin(list(value))
            conditions.append(f"{column} in {list(value)}")
        else:
            mask &= frame[column] == value
            conditions.append(f"{column} {value!r}")
    what = f"{kind} results" + (" with " + " and ".join(conditions) if conditions else "")
    rows = frame[mask]
    if rows.empty:
        raise MissingResultsError(f"no {what} in {source_of(frame)}; {REPRODUCE_HINT}")
    return rows


def final_epoch_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """For each (method, arm), only its rows at the last epoch any of its results reached."""
    last = rows.groupby(["method", "arm"])["epoch"].transform("max")
    return rows[rows["epoch"] == last]


def with_base(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` plus, for each method without ``base`` results, the epoch-0 results of one of its
    continued arms relabelled ``base``. Epoch 0 of every arm is the same starting checkpoint (the
    per-epoch evaluation records it under the arm's name); one arm ("original" when present, else the
    first by name) stands for it, so no measurement is counted twice."""
    stand_ins = []
    for _, of_method in rows.groupby("method"):
        start = of_method[of_method["epoch"] == 0]
        if (of_method["arm"] == "base").any() or start.empty:
            continue
        arm = "original" if (start["arm"] == "original").any() else sorted(start["arm"].unique())[0]
        stand_ins.append(start[start["arm"] == arm].assign(arm="base"))
    if not stand_ins:
        return rows
    combined = pd.concat([rows, *stand_ins], ignore_index=True)
    combined.attrs = dict(rows.attrs)
    return combined


def order_methods(methods: Iterable[str]) -> list[str]:
    """The paper's order (VICReg, SwAV, SimSiam), then any other method alphabetically."""
    methods = set(methods)
    order = method_order()
    return [m for m in order if m in methods] + sorted(methods - set(order))


def order_arms(arms: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """``arms`` (each once) in the order of ``preferred``, then any other arm alphabetically."""
    arms = set(arms)
    return [a for a in dict.fromkeys(preferred) if a in arms] + sorted(arms - set(preferred))


def training_epochs(frame: pd.DataFrame) -> pd.DataFrame:
    """The per-epoch records of ``kind="training"`` results in long form: one row per (result, epoch)
    with method, arm, seed, epoch and every key of the record (``extra["epochs"]``)."""
    runs = select(frame, "training")
    require_columns(runs, ["method", "arm", "seed", "extra"])
    records = []
    for _, run in runs.iterrows():
        extra = run["extra"]
        epochs = extra.get("epochs") if isinstance(extra, dict) else None
        if not epochs:
            raise MissingResultsError(
                f"a training result in {source_of(frame)} ({run['method']}/{run['arm']}, seed {run['seed']}) "
                f"has no extra['epochs'] list; {REPRODUCE_HINT}")
        for record in epochs:
            if "epoch" not in record:
                raise MissingResultsError(f"training records in {source_of(frame)} lack 'epoch': {record}")
            records.append({"method": run["method"], "arm": run["arm"], "seed": run["seed"], **record})
    epochs = pd.DataFrame(records)
    epochs.attrs["results_dir"] = source_of(frame)
    return epochs


def lead_metrics(frame: pd.DataFrame, kind: str = "linear_probe") -> tuple[str, ...]:
    """The probe numbers every ``kind`` result records, in the order to read them
    (:data:`e2mc.naming.PROBE_METRICS`: the last epoch, no selection; the validation-selected epoch;
    the best test epoch, the authors' optimistic protocol); ``("top1",)`` when none is recorded by all."""
    rows = frame[frame["kind"] == kind] if "kind" in frame else frame
    present = tuple(m for m in PROBE_METRICS if m in rows.columns and len(rows) and rows[m].notna().all())
    return present or ("top1",)

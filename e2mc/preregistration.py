"""The pre-registered test of the paper's claim on the converged SwAV base (docs/preregistration.md).

Everything the test decides is fixed here, in code, before its data existed: the endpoint (which
metric, label fraction, epoch, seeds and pairing), the test (two-sided paired t-test at alpha 0.05),
the positive control, the exploratory endpoints and the sentence that reports the outcome. The
analysis reads a results frame (:func:`e2mc.results.load` of ``results/mini-converged``) and does
not look at anything else; do not change this module after the study's results are committed.

    >>> outcome = analyse(load("results/mini-converged"))
    >>> print(primary_sentence(outcome.primary))

Units: accuracies and their differences are in percentage points of test top-1.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats

from e2mc.errors import UserError
from e2mc.frames import DuplicateResultsError, MissingResultsError, require_columns, select, source_of

METHOD = "swav"
TREATMENT, BASELINE, CONTROL = "e2mc", "original", "mmcr"
SEEDS = tuple(range(8))         # training seed = probe seed; n = 8 pairs
OBSERVED_BEFORE = (0, 1, 2)     # seeds of original and E2MC whose results existed when this was written
ALPHA = 0.05                    # two-sided
POWER = 0.80                    # the power the design is sized for
EPOCH = 20                      # of continued training; the probe of the final model
KIND = "linear_probe"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One paired comparison: ``arm`` minus ``baseline`` on ``metric`` of the ``label_fraction`` probe
    after ``epoch`` epochs, paired by seed over ``seeds``."""

    name: str
    arm: str
    baseline: str
    metric: str
    label_fraction: float
    epoch: int = EPOCH
    seeds: tuple[int, ...] = SEEDS

    @property
    def description(self) -> str:
        return (f"{self.arm} − {self.baseline}, {METRIC_RULES[self.metric]}, {self.label_fraction:.0%} labels, "
                f"epoch {self.epoch}")


# What each probe number is: the selection rule every report names.
METRIC_RULES = {"top1_last": "last probe epoch (no selection)",
                "top1_val_selected": "validation-selected probe epoch",
                "top1": "best test epoch (the authors' protocol; optimistic)"}

PRIMARY = Endpoint("primary", TREATMENT, BASELINE, "top1_last", 0.01)
POSITIVE_CONTROL = Endpoint("positive control", CONTROL, BASELINE, "top1_last", 0.01)
# Exploratory: reported, labelled as such, never used to decide.
EXPLORATORY = tuple(
    [Endpoint(f"exploratory: {metric}, {fraction:.0%}", TREATMENT, BASELINE, metric, fraction)
     for fraction in (0.01, 0.1, 1.0) for metric in ("top1_last", "top1_val_selected", "top1")
     if (metric, fraction) != ("top1_last", 0.01)]
    + [Endpoint(f"exploratory control: {metric}, {fraction:.0%}", CONTROL, BASELINE, metric, fraction)
       for fraction in (0.1, 1.0) for metric in ("top1_last",)])


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """A two-sided paired t-test of ``differences`` (arm − baseline, one per seed, in points)."""

    endpoint: Endpoint
    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    mean: float
    sd: float              # sample standard deviation of the differences (ddof 1)
    half_width: float      # of the (1 - alpha) t-interval of the mean difference
    t: float
    df: int
    p: float
    alpha: float = ALPHA

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def interval(self) -> tuple[float, float]:
        return self.mean - self.half_width, self.mean + self.half_width

    @property
    def significant(self) -> bool:
        return self.p < self.alpha


def paired_t_test(differences: Sequence[float], endpoint: Endpoint = PRIMARY, seeds: Sequence[int] | None = None,
                  alpha: float = ALPHA) -> PairedTest:
    """The two-sided one-sample t-test of the mean of ``differences`` against 0 (= the paired t-test
    of the two arms), with the ``1 - alpha`` t-interval. Needs at least two differences; a zero
    standard deviation gives t = ±inf (p = 0) for a non-zero mean and NaN for a zero one."""
    d = np.asarray(list(differences), dtype=float)
    if d.ndim != 1 or d.size < 2:
        raise UserError(f"a paired t-test needs at least two differences, got {d.size}")
    if not np.isfinite(d).all():
        raise ValueError(f"differences must be finite, got {d.tolist()}")
    n, mean, sd = d.size, float(d.mean()), float(d.std(ddof=1))
    df = n - 1
    se = sd / math.sqrt(n)
    if se == 0:
        t = math.nan if mean == 0 else math.copysign(math.inf, mean)
        p = math.nan if mean == 0 else 0.0
    else:
        t = mean / se
        p = float(2 * stats.t.sf(abs(t), df))
    half_width = float(stats.t.ppf(1 - alpha / 2, df) * se)
    return PairedTest(endpoint, tuple(int(s) for s in (seeds if seeds is not None else range(n))),
                      tuple(float(x) for x in d), mean, sd, half_width, float(t), df, p, alpha)


# --- power ----------------------------------------------------------------------------------------

def power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs to reject when the true mean difference is
    ``effect`` and the differences' standard deviation ``sd`` (noncentral t with n - 1 degrees of
    freedom and noncentrality ``effect / (sd / sqrt(n))``)."""
    if n < 2 or sd <= 0:
        raise ValueError(f"power needs n >= 2 and sd > 0, got n={n}, sd={sd}")
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    noncentrality = effect / (sd / math.sqrt(n))
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality))


def minimum_detectable_effect(sd: float, n: int, alpha: float = ALPHA, target: float = POWER) -> float:
    """The smallest true mean difference (same units as ``sd``) that the two-sided paired t-test with
    ``n`` pairs detects with probability ``target``."""
    if not alpha < target < 1:
        raise ValueError(f"target power must lie in (alpha, 1), got {target}")
    upper = sd
    while power(upper, sd, n, alpha) < target:
        upper *= 2
    return float(optimize.brentq(lambda e: power(e, sd, n, alpha) - target, 0.0, upper, xtol=1e-10))


@dataclasses.dataclass(frozen=True)
class PowerAnalysis:
    """The design's power from pilot differences: their sd, the effect n pairs detect with ``POWER``,
    and the same with the sd at the upper end of its one-sided 80% confidence bound (the pilot sd
    rests on few degrees of freedom, so the plain estimate is optimistic as often as not)."""

    pilot_differences: tuple[float, ...]
    pilot_sd: float
    n: int
    detectable: float
    sd_upper: float
    detectable_at_sd_upper: float


def power_analysis(pilot_differences: Sequence[float], n: int = len(SEEDS), alpha: float = ALPHA,
                   target: float = POWER, sd_confidence: float = 0.8) -> PowerAnalysis:
    d = np.asarray(list(pilot_differences), dtype=float)
    if d.size < 2:
        raise UserError("a power analysis needs at least two pilot differences")
    sd = float(d.std(ddof=1))
    df = d.size - 1
    # (df s^2 / sigma^2) ~ chi2(df): the upper one-sided bound of sigma
    sd_upper = float(sd * math.sqrt(df / stats.chi2.ppf(1 - sd_confidence, df)))
    return PowerAnalysis(tuple(float(x) for x in d), sd, n, minimum_detectable_effect(sd, n, alpha, target),
                         sd_upper, minimum_detectable_effect(sd_upper, n, alpha, target))


# --- reading the results ----------------------------------------------------------------------------

def paired_values(frame: pd.DataFrame, endpoint: Endpoint, require_all: bool = True) -> pd.DataFrame:
    """One row per seed of ``endpoint.seeds`` with both arms: columns seed, arm, baseline, difference
    (arm − baseline, points). ``require_all``: raise :class:`MissingResultsError` naming the seeds
    whose results are missing (the pre-registered test runs on all of them or not at all)."""
    rows = select(frame, KIND, label_fraction=endpoint.label_fraction, method=METHOD,
                  arm=[endpoint.arm, endpoint.baseline])
    require_columns(rows, ["seed", "epoch", endpoint.metric])
    rows = rows[(rows["epoch"] == endpoint.epoch) & rows["seed"].isin(endpoint.seeds)]
    sides = {}
    for arm in (endpoint.arm, endpoint.baseline):
        side = rows[rows["arm"] == arm]
        if side["seed"].duplicated().any():
            raise DuplicateResultsError(f"{arm} has two {KIND} results of one seed at epoch {endpoint.epoch} in "
                                        f"{source_of(frame)}: {side.loc[side['seed'].duplicated(keep=False), 'file'].tolist()}")
        sides[arm] = side.set_index("seed")[endpoint.metric]
    seeds = sorted(set(sides[endpoint.arm].index) & set(sides[endpoint.baseline].index))
    missing = sorted(set(endpoint.seeds) - set(seeds))
    if require_all and missing:
        raise MissingResultsError(
            f"the {endpoint.name} endpoint ({endpoint.description}) needs seeds {list(endpoint.seeds)}; "
            f"{source_of(frame)} lacks seeds {missing}; run `python -m e2mc reproduce --part preregistered --jobs 2`")
    values = pd.DataFrame({"seed": seeds, "arm": [float(sides[endpoint.arm][s]) for s in seeds],
                           "baseline": [float(sides[endpoint.baseline][s]) for s in seeds]})
    if values[["arm", "baseline"]].isna().any().any():
        raise MissingResultsError(f"{endpoint.metric} is missing from some {endpoint.description} results in "
                                  f"{source_of(frame)}")
    return values.assign(difference=values["arm"] - values["baseline"])


def evaluate_endpoint(frame: pd.DataFrame, endpoint: Endpoint, require_all: bool = True) -> PairedTest:
    values = paired_values(frame, endpoint, require_all)
    if len(values) < 2:
        raise MissingResultsError(f"the {endpoint.name} endpoint has {len(values)} paired seed(s) in "
                                  f"{source_of(frame)}; a t-test needs two")
    return paired_t_test(values["difference"], endpoint, values["seed"].tolist())


@dataclasses.dataclass(frozen=True)
class Outcome:
    primary: PairedTest
    control: PairedTest
    exploratory: tuple[PairedTest, ...]


def analyse(frame: pd.DataFrame) -> Outcome:
    """The pre-registered analysis: the primary endpoint and the positive control on all of
    :data:`SEEDS` (an error while any is missing), then each exploratory endpoint on the seeds it has."""
    primary = evaluate_endpoint(frame, PRIMARY)
    control = evaluate_endpoint(frame, POSITIVE_CONTROL)
    exploratory = []
    for endpoint in EXPLORATORY:
        try:
            exploratory.append(evaluate_endpoint(frame, endpoint, require_all=False))
        except MissingResultsError:
            continue
    return Outcome(primary, control, tuple(exploratory))


def primary_sentence(result: PairedTest) -> str:
    """The sentence the pre-registration fixed for reporting the primary endpoint."""
    low, high = result.interval
    decision = ("rejects" if result.significant else "does not reject")
    direction = ""
    if result.significant:
        direction = (" E2MC beats the original loss on this endpoint." if result.mean > 0
                     else " E2MC is worse than the original loss on this endpoint.")
    return (f"On the converged mini SwAV base, 20 epochs of E2MC minus 20 epochs of the original loss, "
            f"1% labels, last probe epoch, paired by seed (n = {result.n}): {result.mean:+.2f} points "
            f"(95% CI {low:+.2f} to {high:+.2f}; t({result.df}) = {result.t:.2f}, p = {result.p:.3f}). "
            f"The pre-registered two-sided paired t-test at α = {result.alpha:g} {decision} "
            f"the null hypothesis of no difference.{direction}")


def control_sentence(result: PairedTest) -> str:
    low, high = result.interval
    detected = "detects" if result.significant and result.mean > 0 else "does not detect"
    return (f"Positive control, MMCR minus the original loss on the same base, seeds and endpoint (n = {result.n}): "
            f"{result.mean:+.2f} points (95% CI {low:+.2f} to {high:+.2f}; t({result.df}) = {result.t:.2f}, "
            f"p = {result.p:.3f}): the design {detected} a gain of an add-on criterion.")


def progress(frame: pd.DataFrame) -> dict[str, list[int]]:
    """The seeds of :data:`SEEDS` whose primary-endpoint probe is in ``frame``, per arm (to report a
    study in progress; the analysis itself runs only on all of them)."""
    present = {arm: [] for arm in (TREATMENT, BASELINE, CONTROL)}
    if frame.empty or "kind" not in frame.columns:
        return present
    rows = frame[(frame["kind"] == KIND) & (frame["method"] == METHOD) & (frame["epoch"] == EPOCH)
                 & np.isclose(pd.to_numeric(frame["label_fraction"], errors="coerce"), PRIMARY.label_fraction)]
    for arm in present:
        present[arm] = sorted(int(s) for s in rows.loc[rows["arm"] == arm, "seed"] if int(s) in SEEDS)
    return present


def progress_sentence(frame: pd.DataFrame) -> str:
    present = progress(frame)
    parts = [f"{arm}: {len(seeds)} of {len(SEEDS)} ({', '.join(map(str, seeds)) or 'none'})"
             for arm, seeds in present.items()]
    return ("The pre-registered study (docs/preregistration.md) is in progress; seeds with the primary endpoint "
            "so far — " + "; ".join(parts) + ". Its test runs once every arm has all eight.")

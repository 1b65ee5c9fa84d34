"""Names, labels and styles: the experiment arms, and how methods, arms and transforms appear in
figures and tables.

An arm is a set of configuration overrides applied to a method's config (:data:`ARMS`). The SLURM
scripts, the submitit launcher and the mini reproduction take arms by these names, and every result
file records the arm that :func:`infer_arm` reads back from the run's configuration. Figures and
tables (:mod:`e2mc.plots`, :mod:`e2mc.tables`) take every label, colour and marker from here, so an
arm looks the same everywhere; the colours are the seaborn "colorblind" palette.
"""
from __future__ import annotations

import dataclasses
import math

from e2mc.criteria import TRANSFORMS, E2MCArm, get_criterion
from e2mc.errors import UserError
from e2mc.methods import get_method, method_names

# Overrides on top of a method's config, whose criterion section holds that method's E2MC transform
# and coefficients.
ARMS: dict[str, tuple[str, ...]] = {
    "original": ("criterion.name=none",),
    "e2mc": ("criterion.name=e2mc",),
    "entropy_only": ("criterion.name=e2mc", "criterion.cov_coeff=0"),
    "covariance_only": ("criterion.name=e2mc", "criterion.ent_coeff=0"),
    "e2mc_sigmoid": ("criterion.name=e2mc", "criterion.transform=sigmoid"),
    "e2mc_gaussian_cdf": ("criterion.name=e2mc", "criterion.transform=gaussian_cdf"),
    "uniformity": ("criterion.name=uniformity",),
    "mmcr": ("criterion.name=mmcr",),
    "vc": ("criterion.name=vc",),                                    # normalised embeddings, gamma 1/sqrt(D)
    "vc_raw": ("criterion.name=vc", "criterion.params={normalize: false}"),  # raw embeddings, gamma 1
}


def arm_overrides(arm: str) -> list[str]:
    """The configuration overrides of ``arm``; raises ValueError naming the arms for an unknown one."""
    if arm not in ARMS:
        raise UserError(f"unknown arm {arm!r}; choose one of {', '.join(ARMS)}")
    return list(ARMS[arm])


def method_arm(arm: str, method: str) -> str:
    """``arm`` for ``method``: ``e2mc_other_transform`` becomes the transform ablation of that method
    (``e2mc_gaussian_cdf`` for VICReg, ``e2mc_sigmoid`` for SwAV); any other name is returned as it is."""
    if arm != "e2mc_other_transform":
        return arm
    own = get_method(method).transform
    return E2MCArm(transform=next(t for t in TRANSFORMS if t != own)).name


def infer_arm(config: dict | None) -> str:
    """The experiment arm of a training configuration.

    No configuration (an official release) or a run from scratch (no ``train.init``: the mini
    stand-in for a release) -> "base"; otherwise the criterion names it
    (:meth:`e2mc.criteria.AddedCriterion.arm`): "original" for the original loss alone, an
    alternative's name (uniformity, mmcr, vc, vc_raw), and for E2MC "e2mc" or "entropy_only" /
    "covariance_only" followed by what differs from the paper's setting for the method
    (``e2mc_sigmoid``, ``e2mc_cov5``). Two configurations that differ in the criterion thus never
    share an arm name, so a coefficient sweep tabulates as its own rows.
    """
    if not config or not config["train"].get("init"):
        return "base"
    criterion = config["criterion"]
    return get_criterion(criterion["name"]).arm(criterion, config["method"])


# --- labels -------------------------------------------------------------------------------------

TRANSFORM_LABELS = {"sigmoid": "sigmoid", "gaussian_cdf": "Gaussian CDF"}
# Which probe epoch a metric reports: every table caption, figure axis and claim names it.
VAL_SELECTED = "top1_val_selected"
PROBE_METRICS = {
    "top1_last": ("last epoch", "the probe's last epoch, no selection"),
    VAL_SELECTED: ("val-selected", "the probe epoch of best validation accuracy"),
    "top1": ("best epoch", "the probe's best test epoch, the authors' protocol, optimistic"),
}


def metric_short(metric: str) -> str:
    """"last epoch", "val-selected", "best epoch": a column header for ``metric``."""
    return PROBE_METRICS[metric][0] if metric in PROBE_METRICS else metric.replace("_", " ")


def metric_rule(metric: str) -> str:
    """The metric in words with its selection rule ("top-1 at the probe's last epoch, no selection")."""
    return f"top-1 at {PROBE_METRICS[metric][1]}" if metric in PROBE_METRICS else metric.replace("_", " ")


def metric_rules(metrics) -> str:
    """``"top-1 (last epoch: at the probe's last epoch, no selection; best epoch: ...)"``: several
    metrics' rules in one phrase, for a table that shows them side by side."""
    return "top-1 (" + "; ".join(f"{metric_short(m)}: at {PROBE_METRICS[m][1]}" if m in PROBE_METRICS
                                 else metric_short(m) for m in metrics) + ")"


DYNAMICS_KEYS = ("marginal_entropy", "covariance_penalty")
DYNAMICS_HEADERS = {"marginal_entropy": "marginal entropy (nats)", "covariance_penalty": "covariance penalty"}


def method_label(method: str) -> str:
    """"VICReg" for "vicreg"; a name the registry does not know is shown as it is."""
    try:
        return get_method(method).label
    except ValueError:
        return method


def criterion_label(name) -> str:
    """"E2MC", "MMCR", ..., "original loss only" for a run without an added criterion."""
    if name is None or (isinstance(name, float) and math.isnan(name)):
        name = "none"
    try:
        return get_criterion(str(name)).label
    except ValueError:
        return str(name)


def method_order() -> tuple[str, ...]:
    """Methods in the order of figures and tables: the registry's."""
    return method_names()


def arm_label(arm: str) -> str:
    """The arm's name in figures and tables; an E2MC variant without a fixed label is described by
    what it changes (``e2mc_cov5`` -> "E2MC (λ_cov 5)"), any other arm keeps its name."""
    if arm in ARM_STYLES:
        return ARM_STYLES[arm].label
    variant = E2MCArm.parse(arm)
    if variant is None:
        return arm
    changes = ([TRANSFORM_LABELS[variant.transform]] if variant.transform else []) + \
        ([f"λ_ent {variant.ent_coeff:g}"] if variant.ent_coeff is not None else []) + \
        ([f"λ_cov {variant.cov_coeff:g}"] if variant.cov_coeff is not None else [])
    return f"{ARM_STYLES[variant.kind].label} ({', '.join(changes)})"


def fraction_label(label_fraction) -> str:
    """0.01 -> "1%"; a missing fraction (transfer) -> "all"."""
    if label_fraction is None or (isinstance(label_fraction, float) and math.isnan(label_fraction)):
        return "all"
    return f"{100 * float(label_fraction):g}%"


# --- styles -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ArmStyle:
    """How an arm appears in figures and tables: its name, line colour (hex) and matplotlib marker."""

    label: str
    color: str
    marker: str


# One record per named arm (colours: seaborn "colorblind"); the reference arms are grey (base) and
# blue (original loss). Every (colour, marker) pair differs (tests/test_plots.py checks it).
ARM_STYLES: dict[str, ArmStyle] = {
    "base": ArmStyle("base checkpoint", "#949494", "s"),
    "original": ArmStyle("original loss", "#0173B2", "o"),
    "e2mc": ArmStyle("E2MC", "#D55E00", "D"),
    "entropy_only": ArmStyle("entropy only", "#DE8F05", "^"),
    "covariance_only": ArmStyle("covariance only", "#029E73", "v"),
    "e2mc_sigmoid": ArmStyle("E2MC (sigmoid)", "#CC78BC", "<"),
    "e2mc_gaussian_cdf": ArmStyle("E2MC (Gaussian CDF)", "#CA9161", ">"),
    "uniformity": ArmStyle("uniformity", "#56B4E9", "P"),
    "mmcr": ArmStyle("MMCR", "#FBAFE4", "X"),
    "vc": ArmStyle("variance-covariance", "#000000", "*"),
}
ARM_ORDER = tuple(ARM_STYLES)
# The arms of the paper's main table and Fig. 6, of its ablations, and of its alternative criteria
# ("e2mc" is one side of the transform ablation: it uses the method's own transform, e2mc.methods).
MAIN_ARMS = ("base", "original", "e2mc")
ABLATION_ARMS = ("e2mc", "entropy_only", "covariance_only", "e2mc_sigmoid", "e2mc_gaussian_cdf")
ALTERNATIVE_ARMS = ("original", "e2mc", "uniformity", "mmcr", "vc")
# An arm without a fixed style (a coefficient variant, a user's own) gets one of these: dark hues that
# none of the named arms uses, paired with markers so that up to 36 such arms in one figure differ.
_FALLBACK_COLORS = ("#3C3C3C", "#6A3D9A", "#8C0800", "#006374", "#808000", "#001C7F")
_FALLBACK_MARKERS = ("h", "p", "d", "8", "H", "o")


def arm_styles(arms) -> dict[str, ArmStyle]:
    """The style of each of ``arms`` (each once): a named arm's record; the others, in sorted order,
    the i-th fallback colour with a marker that makes every (colour, marker) pair distinct. Pass every
    arm a figure (or a results folder) shows, so that the arms without a fixed style never share a look."""
    arms = list(dict.fromkeys(arms))
    others = sorted(a for a in arms if a not in ARM_STYLES)
    n = len(_FALLBACK_COLORS)
    if len(others) > n * len(_FALLBACK_MARKERS):
        raise ValueError(f"{len(others)} arms without a fixed style; at most {n * len(_FALLBACK_MARKERS)} "
                         "can be told apart (add styles to e2mc.naming.ARM_STYLES)")
    styles = {a: ARM_STYLES[a] for a in arms if a in ARM_STYLES}
    for i, arm in enumerate(others):
        styles[arm] = ArmStyle(arm_label(arm), _FALLBACK_COLORS[i % n],
                               _FALLBACK_MARKERS[(i + i // n) % len(_FALLBACK_MARKERS)])
    return {a: styles[a] for a in arms}


def arm_style(arm: str) -> ArmStyle:
    """The style of one arm seen alone (an arm without a fixed style gets the first fallback); figures
    that show several arms use :func:`arm_styles`."""
    return arm_styles([arm])[arm]

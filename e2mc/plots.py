"""The figures of the main study, drawn from a frame of result files (one row per result JSON, see
``docs/results-schema.md``).

* :func:`fig2_marginals`: (a) 2-D uniform, (b) the "X" distribution (both: uniform marginals, zero
  covariance), (c) a pair of embedding dimensions after the compact transform before and (d) after
  continued pre-training with E2MC, every point coloured by where it was before.
* :func:`fig6_epochs`: linear-probe top-1 with 1% labels against the epoch of continued pre-training,
  one line per arm (mean over seeds, 95% t-interval band), one panel per method: the paper's arms by
  default, the ablations and alternatives as figures of their own (:data:`FIG6_GROUPS`).
* :func:`paired_difference_epochs`: E2MC minus the original loss per epoch, paired by seed.
* :func:`training_dynamics`: marginal entropy and covariance penalty against the training epoch.

The converged part's and the pre-registered study's figures are in :mod:`e2mc.converged_plots`, the
shared look and saving in :mod:`e2mc.figure_style`, the notebooks' folders in :mod:`e2mc.notebook_io`.
Arms keep the same colour, marker and name in every figure (:mod:`e2mc.naming`); the colours are the
seaborn "colorblind" palette.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from e2mc.criterion import m_spacings_entropy
from e2mc.criteria import E2MCArm
from e2mc.errors import UserError
from e2mc.figure_style import arm_curve, band_line, band_note, legend_below, per_method_figure, style
from e2mc.frames import (REPRODUCE_HINT, MissingResultsError, order_arms, order_methods, paired_differences,
                         select, source_of, summarize, training_epochs, with_base)
from e2mc.methods import get_method
from e2mc.naming import (ABLATION_ARMS, ALTERNATIVE_ARMS, ARM_ORDER, DYNAMICS_HEADERS, DYNAMICS_KEYS, MAIN_ARMS,
                         PROBE_METRICS, TRANSFORM_LABELS, arm_label, arm_styles, method_label, metric_rule,
                         metric_short)

# Corners of the 2-D colour map of Fig. 2, (x, y) = (0, 0), (1, 0), (0, 1), (1, 1): Okabe-Ito blue,
# vermillion, yellow, and black (told apart with the common colour-vision deficiencies).
POSITION_CORNERS = np.array([[0x00, 0x72, 0xB2], [0xD5, 0x5E, 0x00], [0xF0, 0xE4, 0x42], [0x00, 0x00, 0x00]]) / 255


# --- reference distributions of Fig. 2 ----------------------------------------------------------

def sample_uniform_2d(n: int, seed: int = 0) -> np.ndarray:
    """(n, 2) points uniform on the unit square: uniform marginals, zero covariance, uniform joint."""
    return np.random.default_rng(seed).uniform(size=(n, 2))


def sample_x_distribution(n: int, seed: int = 0) -> np.ndarray:
    """(n, 2) points on the two diagonals of the unit square (an "X"): u1 ~ U(0, 1) and u2 = u1 or
    1 - u1 with probability 1/2 each. Both marginals are uniform and the covariance is zero
    (E[(u1 - 1/2)(u2 - 1/2)] = Var(u1)/2 - Var(u1)/2), yet u2 is a function of u1 up to a coin flip:
    |u1 - 1/2| = |u2 - 1/2| for every point."""
    rng = np.random.default_rng(seed)
    u1 = rng.uniform(size=n)
    u2 = np.where(rng.random(n) < 0.5, u1, 1.0 - u1)
    return np.stack([u1, u2], axis=1)


def position_colors(points: np.ndarray) -> np.ndarray:
    """(N, 2) points -> (N, 3) RGB colours by each point's position: the ranks of its two coordinates
    (in [0, 1]) interpolate bilinearly between :data:`POSITION_CORNERS`. Ranks rather than values, so a
    cloud squeezed into a corner still uses the whole colour map."""
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 2:
        raise ValueError(f"position_colors needs (N >= 2, 2) points, got shape {points.shape}")
    ranks = points.argsort(axis=0).argsort(axis=0) / (len(points) - 1)
    x, y = ranks[:, :1], ranks[:, 1:]
    c00, c10, c01, c11 = POSITION_CORNERS
    return (1 - x) * (1 - y) * c00 + x * (1 - y) * c10 + (1 - x) * y * c01 + x * y * c11


# --- diagnostics results (Fig. 2c/d) -------------------------------------------------------------

def diagnostics_samples(row: pd.Series, source: str, transform: str | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Unpack one ``kind="diagnostics"`` result (written by e2mc.evaluation.runner.diagnose_network):
    dimension pairs (P, 2), transformed samples (P, N, 2), image indices (N,), and the transform used
    (``transform``, default the method's own: ``extra["method_transform"]``).

    Layout (docs/results-schema.md, "diagnostics"): ``extra["coordinates"][transform][p][k]`` is the
    point ``[u_i, u_j]`` of image ``extra["image_indices"][k]`` in dimensions
    ``extra["dimension_pairs"][p] = [i, j]``, after the compact transform (in [0, 1], not centred).
    """
    extra = row.get("extra")
    where = f"diagnostics result {row.get('method')}/{row.get('arm')} epoch {row.get('epoch')} in {source}"
    needed = ("dimension_pairs", "coordinates", "image_indices")
    if not isinstance(extra, dict) or not set(needed) <= set(extra) or not isinstance(extra["coordinates"], dict):
        keys = sorted(extra) if isinstance(extra, dict) else type(extra).__name__
        raise MissingResultsError(f"{where} lacks extra{list(needed)} (has {keys}); {REPRODUCE_HINT}")
    transform = transform or extra.get("method_transform")
    if transform not in extra["coordinates"]:
        raise MissingResultsError(f"{where} has no coordinates for transform {transform!r} "
                                  f"(has {sorted(extra['coordinates'])})")
    pairs = np.asarray(extra["dimension_pairs"], dtype=int)
    samples = np.asarray(extra["coordinates"][transform], dtype=float)
    indices = np.asarray(extra["image_indices"], dtype=int)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or samples.shape != (len(pairs), len(indices), 2):
        raise MissingResultsError(
            f"{where} is malformed: dimension_pairs {pairs.shape} should be (P, 2), coordinates[{transform!r}] "
            f"{samples.shape} should be (P, N, 2) = ({len(pairs)}, {len(indices)}, 2) to match image_indices; "
            f"{REPRODUCE_HINT}")
    return pairs, samples, indices, transform


def _diagnostics_row(frame: pd.DataFrame, method: str, arm: str, epoch: int | None, seed: int | None) -> pd.Series:
    rows = select(frame, "diagnostics", method=method, arm=arm)
    if seed is not None:
        rows = select(rows, "diagnostics", method=method, arm=arm, seed=seed)
    epoch = int(rows["epoch"].max()) if epoch is None else epoch
    rows = rows[rows["epoch"] == epoch]
    if rows.empty:
        raise MissingResultsError(f"no diagnostics results for {method}/{arm} at epoch {epoch} in "
                                  f"{source_of(frame)}; {REPRODUCE_HINT}")
    return rows.sort_values("seed").iloc[0]


def marginal_entropy(values: np.ndarray) -> float:
    """m-spacings entropy (nats) of one sample on [0, 1] (:func:`e2mc.criterion.m_spacings_entropy`,
    m = round(sqrt(N))): 0 for a uniform sample, lower the more it bunches."""
    return float(m_spacings_entropy(torch.as_tensor(np.asarray(values, dtype=np.float64)).reshape(-1, 1))[0])


def _scatter(ax, points: np.ndarray, colors, title: str, xlabel: str, ylabel: str) -> None:
    """The 2-D points with, on the top and right edges, the histogram of each coordinate and its
    m-spacings entropy."""
    ax.scatter(points[:, 0], points[:, 1], c=colors, s=5, linewidths=0, alpha=0.85, rasterized=True)
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal", xlabel=xlabel, ylabel=ylabel)
    ax.set_xticks([0, 0.5, 1])
    ax.set_yticks([0, 0.5, 1])
    bins = np.linspace(0, 1, 21)
    top = ax.inset_axes([0, 1.03, 1, 0.22], sharex=ax)
    right = ax.inset_axes([1.03, 0, 0.22, 1], sharey=ax)
    top.hist(points[:, 0], bins=bins, color="0.45")
    right.hist(points[:, 1], bins=bins, color="0.45", orientation="horizontal")
    for hist in (top, right):
        hist.set_axis_off()
    top.text(0.0, 1.02, f"H = {marginal_entropy(points[:, 0]):.2f} nats", transform=top.transAxes, fontsize="x-small",
             va="bottom")
    right.text(1.02, 0.5, f"H = {marginal_entropy(points[:, 1]):.2f} nats", transform=right.transAxes,
               fontsize="x-small", rotation=-90, va="center", ha="left")
    top.set_title(title, pad=12)


def fig2_marginals(frame: pd.DataFrame, method: str = "vicreg", arm: str = "e2mc", pair: int = 0,
                   transform: str | None = None, seed: int | None = None, sampling_seed: int = 0,
                   n_reference: int | None = None) -> Figure:
    """Fig. 2 as one row of four panels.

    (a) 2-D uniform and (b) "X" samples (``n_reference`` points, default as many as the embedding panels,
    drawn with ``sampling_seed``); (c) dimension pair number ``pair`` of ``extra["pairs"]`` of the
    ``method``'s diagnostics at epoch 0 (arm ``"base"``, or else ``arm`` itself at epoch 0) and (d) the
    same dimensions of the same images after the last epoch of ``arm``. Points of (c) and (d) are matched
    by image index and coloured by their position in (c); (a) and (b) by their own position. ``seed``
    picks the training seed of ``arm``'s diagnostics (default: the lowest one present); ``transform``
    the compact transform of the coordinates (default: the method's own).
    """
    source = source_of(frame)
    try:  # the base checkpoint is the same for every training seed
        before_row = _diagnostics_row(frame, method, "base", 0, None)
    except MissingResultsError:  # the starting point may be recorded under the arm itself, at epoch 0
        before_row = _diagnostics_row(frame, method, arm, 0, seed)
    after_row = _diagnostics_row(frame, method, arm, None, seed)
    if int(after_row["epoch"]) == 0:
        raise MissingResultsError(f"the {method}/{arm} diagnostics in {source} are all at epoch 0; "
                                  f"Fig. 2d needs them after continued pre-training; {REPRODUCE_HINT}")
    pairs_b, samples_b, images_b, transform = diagnostics_samples(before_row, source, transform)
    pairs_a, samples_a, images_a, _ = diagnostics_samples(after_row, source, transform)
    if not 0 <= pair < len(pairs_b):
        raise UserError(f"pair={pair} but the {method} base diagnostics in {source} hold {len(pairs_b)} pairs")
    dims = pairs_b[pair]
    match = np.flatnonzero((pairs_a == dims).all(axis=1))
    if match.size == 0:
        raise MissingResultsError(f"dimension pair {dims.tolist()} of the {method} base diagnostics is not among "
                                  f"the {arm} diagnostics' pairs {pairs_a.tolist()} in {source}")
    before = samples_b[pair]
    after_by_image = dict(zip(images_a.tolist(), samples_a[match[0]]))
    common = [k for k, image in enumerate(images_b.tolist()) if image in after_by_image]
    if len(common) < 2:
        raise MissingResultsError(f"the {method} base and {arm} diagnostics in {source} share fewer than two "
                                  f"image_indices; both must embed the same images")
    before = before[common]
    after = np.stack([after_by_image[images_b[k]] for k in common])
    colors = position_colors(before)
    n = n_reference or len(before)
    uniform, x_shape = sample_uniform_2d(n, sampling_seed), sample_x_distribution(n, sampling_seed + 1)

    name = TRANSFORM_LABELS.get(transform, transform)
    i, j = dims.tolist()
    axes_style, context = style()
    with axes_style, context:
        fig, axes = plt.subplots(1, 4, figsize=(16, 5.2), layout="constrained")
        # (a) and (b) in one colour: a position colour would mean nothing there
        _scatter(axes[0], uniform, "0.25", "(a) 2-D uniform", "$u_1$", "$u_2$")
        _scatter(axes[1], x_shape, "0.25", '(b) "X" distribution', "$u_1$", "$u_2$")
        label = method_label(method)
        _scatter(axes[2], before, colors, f"(c) {label}, base checkpoint", f"{name} of dimension {i}",
                 f"{name} of dimension {j}")
        _scatter(axes[3], after, colors, f"(d) after {int(after_row['epoch'])} epochs of {arm_label(arm)}",
                 f"{name} of dimension {i}", f"{name} of dimension {j}")
        fig.suptitle("Uniform marginals and zero covariance do not make a uniform joint. Edges: histogram of each "
                     "coordinate and its m-spacings entropy H (0 = uniform).\n(c), (d): the same test images, "
                     "each coloured by its position in (c), to show where the points moved", fontsize="medium")
    return fig


# --- Fig. 6 -------------------------------------------------------------------------------------

def epoch_curves(frame: pd.DataFrame, label_fraction: float = 0.01, metric: str = "top1",
                 kind: str = "linear_probe", confidence: float = 0.95) -> pd.DataFrame:
    """The numbers of Fig. 6: ``metric`` per (method, arm, epoch), mean / ``ci`` half-width / n over seeds.

    Epoch 0 of every continued arm is the base checkpoint: an arm without its own epoch-0 results
    starts from the ``base`` arm's (which :func:`e2mc.frames.with_base` supplies when only the arms'
    own epoch-0 results exist).
    """
    rows = with_base(select(frame, kind, label_fraction))
    curves = summarize(rows, ["method", "arm", "epoch"], metric, confidence)
    starts = []
    for method in curves["method"].unique():
        of_method = curves[curves["method"] == method]
        base = of_method[(of_method["arm"] == "base") & (of_method["epoch"] == 0)]
        for arm in of_method["arm"].unique():
            if arm != "base" and not ((of_method["arm"] == arm) & (of_method["epoch"] == 0)).any():
                starts.append(base.assign(arm=arm))
    return pd.concat([curves, *starts], ignore_index=True).sort_values(["method", "arm", "epoch"],
                                                                        ignore_index=True)


def probe_axis_label(metric: str, label_fraction: float) -> str:
    """"top-1 (%), 1% labels, last probe epoch": a probe axis in words."""
    return f"linear-probe top-1 (%), {label_fraction:.0%} labels" + (
        f"\n{metric_short(metric)}" if metric in PROBE_METRICS else f"\n{metric}")


# The arm groups of the Fig. 6 family: the paper's Fig. 6 (base, original loss, E2MC), then the
# ablations and the alternative criteria, each beside the original loss.
FIG6_GROUPS = {"main": MAIN_ARMS, "ablations": ("original", *ABLATION_ARMS), "alternatives": ALTERNATIVE_ARMS}


def fig6_group_arms(frame: pd.DataFrame, group: str) -> list[str]:
    """The arms of ``group`` (:data:`FIG6_GROUPS`) present in ``frame``; the ablation group adds every
    E2MC coefficient variant (``e2mc_cov1``, ...)."""
    arms = list(FIG6_GROUPS[group])
    if group == "ablations":
        arms += sorted({a for a in frame["arm"].dropna() if E2MCArm.parse(a) is not None} - set(arms))
    return arms


def fig6_epochs(frame: pd.DataFrame, label_fraction: float = 0.01, metric: str = "top1",
                kind: str = "linear_probe", confidence: float = 0.95,
                arms: Sequence[str] | None = MAIN_ARMS) -> Figure:
    """Fig. 6: ``metric`` of the ``kind`` evaluation with ``label_fraction`` of the labels against the
    epoch of continued pre-training; one panel per method that has an arm of ``arms`` besides the main
    ones (every method for the main arms; None: every arm), one line per arm, mean over
    seeds with a ``confidence`` t-interval band (an arm with one seed says so in the legend). The base
    checkpoint is the dashed horizontal line. Styles come from every arm of ``frame``
    (:func:`e2mc.naming.arm_styles`), so an arm looks the same in every figure of one results folder."""
    curves = epoch_curves(frame, label_fraction, metric, kind, confidence)
    styles = arm_styles(order_arms({"base", *frame["arm"].dropna()}, ARM_ORDER))
    if arms is not None:
        curves = curves[curves["arm"].isin(list(arms) + ["base"])]
        own = set(arms) - set(MAIN_ARMS)  # a method without an ablation or alternative gets no panel
        methods = set(curves.loc[curves["arm"].isin(own), "method"]) if own else set(curves["method"])
        curves = curves[curves["method"].isin(methods)]
        if curves.empty:
            raise MissingResultsError(f"no {kind} results of {sorted(own)} in {source_of(frame)}; {REPRODUCE_HINT}")

    def draw(ax, method):
        of_method, handles = curves[curves["method"] == method], {}
        for arm in order_arms(of_method["arm"], ARM_ORDER):
            curve = of_method[of_method["arm"] == arm]
            if arm == "base":
                line = ax.axhline(curve["mean"].iloc[0], color=styles[arm].color, linestyle="--", linewidth=1.2,
                                  label=styles[arm].label)
            else:
                line = arm_curve(ax, curve, styles[arm])
            handles[line.get_label()] = line
        return handles

    note = f"{metric_rule(metric)}; " + band_note(confidence, False, curves["n"])
    return per_method_figure(order_methods(curves["method"].unique()), draw, "epoch of continued pre-training",
                             probe_axis_label(metric, label_fraction), note)


def paired_difference_epochs(frame: pd.DataFrame, arm: str = "e2mc", baseline: str = "original",
                             label_fraction: float = 0.01, metric: str = "top1", kind: str = "linear_probe",
                             confidence: float = 0.95) -> Figure:
    """``arm`` minus ``baseline`` on ``metric`` against the epoch of continued pre-training, paired by
    seed (:func:`e2mc.frames.paired_differences`): one panel per method, the mean difference in points
    with its ``confidence`` t-interval band (none with one pair), and zero as a dotted line. Narrower than
    reading two overlapping Fig. 6 bands, since the seed-to-seed variation both arms share cancels."""
    rows = select(frame, kind, label_fraction, arm=[arm, baseline])
    differences = paired_differences(rows, arm, baseline, metric, ["method", "epoch"], confidence)
    if differences.empty:
        raise MissingResultsError(f"no seed has {kind} results of both {arm} and {baseline} with "
                                  f"{label_fraction:.0%} of the labels in {source_of(frame)}; {REPRODUCE_HINT}")
    style = arm_styles([arm])[arm]

    def draw(ax, method):
        curve = differences[differences["method"] == method]
        line = band_line(ax, curve, f"{arm_label(arm)} − {arm_label(baseline)}, n = {curve['n'].max()} seeds",
                         style.color, style.marker)
        ax.axhline(0.0, color="0.3", linestyle=":", linewidth=1.0)
        return {line.get_label(): line}

    note = f"{metric_rule(metric)}; " + band_note(confidence, True, differences["n"])
    return per_method_figure(order_methods(differences["method"].unique()), draw,
                             "epoch of continued pre-training",
                             f"{arm_label(arm)} − {arm_label(baseline)}\ntop-1 points, {label_fraction:.0%} labels",
                             note)


# --- training dynamics -------------------------------------------------------------------------

def arm_transforms(frame: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(method, arm) -> the compact transform its training records measure with: the criterion's for
    an E2MC arm, the method's own for every other arm (see tables.training_dynamics)."""
    runs = select(frame, "training")
    found = {}
    for (method, arm), rows in runs.groupby(["method", "arm"]):
        transform = rows["criterion_transform"].dropna().iloc[0] if "criterion_transform" in rows and \
            rows["criterion_transform"].notna().any() else None
        if transform is None:
            try:
                transform = get_method(method).transform
            except ValueError:
                transform = "unknown"
        found[method, arm] = transform
    return found


def _overlaps(curves: dict[str, pd.DataFrame], tolerance: float) -> list[tuple[str, str]]:
    """Pairs of arms whose mean curves lie within ``tolerance`` of each other at every common epoch
    (they overprint: the figure must say so)."""
    pairs = []
    names = list(curves)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            joined = curves[a].merge(curves[b], on="epoch")
            if len(joined) and (joined["mean_x"] - joined["mean_y"]).abs().max() <= tolerance:
                pairs.append((a, b))
    return pairs


def training_dynamics(frame: pd.DataFrame, keys: Sequence[str] = DYNAMICS_KEYS, confidence: float = 0.95) -> Figure:
    """Each of ``keys`` (panel rows) of the per-epoch records of ``kind="training"`` results against the
    epoch, one panel column per method and compact transform (an arm's records are measured after the
    transform it trains with, and the sigmoid's and the Gaussian CDF's entropies are on different
    scales), one line per arm (mean over seeds, t-interval band). Epoch 0 is the base checkpoint's value
    from its diagnostics (test images, evaluation mode) where the results hold them; arms whose curves
    overprint are named in the panel."""
    epochs = training_epochs(frame)
    transforms = arm_transforms(frame)
    epochs["transform"] = [transforms[m, a] for m, a in zip(epochs["method"], epochs["arm"])]
    order = {t: k for k, t in enumerate(("sigmoid", "gaussian_cdf"))}
    columns = [(m, t) for m in order_methods(epochs["method"].unique())
               for t in sorted(set(epochs.loc[epochs["method"] == m, "transform"]), key=lambda t: (order.get(t, 9), t))]
    styles = arm_styles(order_arms({"base", *frame["arm"].dropna()}, ARM_ORDER))
    diagnostics = frame[(frame["kind"] == "diagnostics") & (frame["arm"] == "base")]
    axes_style, context = style()
    counts = []
    with axes_style, context:
        fig, axes = plt.subplots(len(keys), len(columns), figsize=(4.2 * len(columns), 3.3 * len(keys)),
                                 squeeze=False, layout="constrained")
        handles = {}
        for row, key in enumerate(keys):
            curves = summarize(epochs, ["method", "transform", "arm", "epoch"], key, confidence)
            counts += list(curves["n"])
            for ax, (method, transform) in zip(axes[row], columns):
                of_panel = curves[(curves["method"] == method) & (curves["transform"] == transform)]
                name = TRANSFORM_LABELS.get(transform, transform)
                ax.set(title=f"{method_label(method)}, {name}" if row == 0 else None,
                       xlabel="epoch of continued pre-training",
                       ylabel=f"{DYNAMICS_HEADERS.get(key, key.replace('_', ' '))}\nof the {name}")
                arm_curves = {arm: of_panel[of_panel["arm"] == arm] for arm in order_arms(of_panel["arm"], ARM_ORDER)}
                for arm, curve in arm_curves.items():
                    line = arm_curve(ax, curve, styles[arm])
                    handles[line.get_label()] = line
                column = f"{key}_{transform}"
                start = diagnostics[diagnostics["method"] == method]
                if column in start and start[column].notna().any():
                    (point,) = ax.plot([0], [start[column].dropna().iloc[0]], linestyle="none", marker="s",
                                       markersize=7, color=styles["base"].color,
                                       label="base checkpoint at epoch 0 (test images, evaluation mode)")
                    handles[point.get_label()] = point
                span = np.ptp(of_panel["mean"]) if len(of_panel) > 1 else 0.0
                overlaps = _overlaps({styles[a].label: c[["epoch", "mean"]] for a, c in arm_curves.items()},
                                     max(0.01 * span, 1e-12))
                if overlaps:  # said under the axis, where it hides no line
                    ax.set_xlabel(ax.get_xlabel() + "\n" + "\n".join(f"overprint: {a} = {b}" for a, b in overlaps),
                                  fontsize="small")
                ax.xaxis.get_major_locator().set_params(integer=True)
        legend_below(fig, handles)
        fig.suptitle("training batches, after the transform each arm trains with; " + band_note(confidence, False, counts),
                     fontsize="small")
    return fig

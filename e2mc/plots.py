"""The paper's figures, drawn from a frame of result files (one row per result JSON, see
``docs/results-schema.md``), and the helpers the notebooks in ``notebooks/`` share.

* :func:`fig2_marginals`: (a) 2-D uniform, (b) the "X" distribution (both: uniform marginals, zero
  covariance), (c) a pair of embedding dimensions after the compact transform before and (d) after
  continued pre-training with E2MC, every point coloured by where it was before.
* :func:`fig6_epochs`: linear-probe top-1 with 1% labels against the epoch of continued pre-training,
  one line per arm (mean over seeds, 95% t-interval band), one panel per method.
* :func:`training_dynamics`: marginal entropy and covariance penalty against the training epoch.
* :func:`pretraining_plateau`: linear-probe top-1 against the epoch of pre-training from scratch (is
  the base converged?), from the ``plateau/`` results of the converged part.

Arms keep the same colour, marker and name in every figure (:mod:`e2mc.naming`); the colours are the seaborn "colorblind" palette. Figures are drawn with the
Agg backend, so nothing here needs a display.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from e2mc.naming import (ARM_ORDER, DYNAMICS_HEADERS, DYNAMICS_KEYS, TRANSFORM_SYMBOLS,  # noqa: E402
                         arm_label, arm_style, arm_styles, method_label)
from e2mc.frames import (REPRODUCE_HINT, MissingResultsError, order_arms, order_methods, paired_differences,  # noqa: E402
                         select, source_of, summarize, training_epochs, with_base)

# Corners of the 2-D colour map of Fig. 2, (x, y) = (0, 0), (1, 0), (0, 1), (1, 1): Okabe-Ito blue,
# vermillion, yellow, and black (told apart with the common colour-vision deficiencies).
POSITION_CORNERS = np.array([[0x00, 0x72, 0xB2], [0xD5, 0x5E, 0x00], [0xF0, 0xE4, 0x42], [0x00, 0x00, 0x00]]) / 255
FIGURE_FORMATS = ("png", "pdf", "svg")


def _band_line(ax, curve: pd.DataFrame, label: str, color=None, marker: str = "o", markersize: float = 5,
               linewidth: float = 1.6):
    """A mean line (columns epoch, mean) with its confidence band (column ci; none where NaN); returns
    the line."""
    (line,) = ax.plot(curve["epoch"], curve["mean"], color=color, marker=marker, markersize=markersize,
                      linewidth=linewidth, label=label)
    ci = curve["ci"].fillna(0)
    ax.fill_between(curve["epoch"], curve["mean"] - ci, curve["mean"] + ci, color=line.get_color(), alpha=0.18,
                    linewidth=0)
    return line


def _arm_curve(ax, curve: pd.DataFrame, arm: str):
    """One arm's mean line and band in the arm's colour and marker; returns the line."""
    return _band_line(ax, curve, arm_label(arm), arm_style(arm).color, arm_style(arm).marker)


def _legend_below(fig: Figure, handles: dict) -> None:
    fig.legend(list(handles.values()), [h.get_label() for h in handles.values()], loc="outside lower center",
               ncol=min(len(handles), 5), frameon=False)


def _per_method_figure(methods: Sequence[str], draw: Callable, xlabel: str, ylabel: str) -> Figure:
    """One panel per method, side by side, in the common style, with the legend of every labelled line
    below: ``draw(ax, method)`` plots a method's panel and returns its {key: line} handles."""
    axes_style, context = _style()
    with axes_style, context:
        fig, axes = plt.subplots(1, len(methods), figsize=(4.6 * len(methods), 3.9), squeeze=False,
                                 layout="constrained")
        handles = {}
        for ax, method in zip(axes[0], methods):
            handles.update(draw(ax, method))
            ax.set(title=method_label(method), xlabel=xlabel, ylabel=ylabel)
            ax.xaxis.get_major_locator().set_params(integer=True)
        _legend_below(fig, handles)
    return fig


def _style():
    """The one style of every figure: seaborn whitegrid, paper context, slightly larger fonts."""
    return sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.2)


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


def _scatter(ax, points: np.ndarray, colors: np.ndarray, title: str, xlabel: str, ylabel: str) -> None:
    ax.scatter(points[:, 0], points[:, 1], c=colors, s=5, linewidths=0, alpha=0.85, rasterized=True)
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal", title=title, xlabel=xlabel, ylabel=ylabel)
    ax.set_xticks([0, 0.5, 1])
    ax.set_yticks([0, 0.5, 1])


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
        raise ValueError(f"pair={pair} but the {method} base diagnostics in {source} hold {len(pairs_b)} pairs")
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

    symbol = TRANSFORM_SYMBOLS.get(transform, "u")
    i, j = dims.tolist()
    axes_style, context = _style()
    with axes_style, context:
        fig, axes = plt.subplots(1, 4, figsize=(14, 3.9), layout="constrained")
        _scatter(axes[0], uniform, position_colors(uniform), "(a) uniform", "$u_1$", "$u_2$")
        _scatter(axes[1], x_shape, position_colors(x_shape), '(b) "X" distribution', "$u_1$", "$u_2$")
        name = method_label(method)
        _scatter(axes[2], before, colors, f"(c) {name}, base (epoch 0)",
                 f"${symbol}(z_{{{i}}})$", f"${symbol}(z_{{{j}}})$")
        _scatter(axes[3], after, colors, f"(d) after {arm_label(arm)} (epoch {int(after_row['epoch'])})",
                 f"${symbol}(z_{{{i}}})$", f"${symbol}(z_{{{j}}})$")
        fig.suptitle("Uniform marginals and zero covariance do not make a uniform joint; "
                     "colours: position before continued training", fontsize="medium")
    return fig


# --- Fig. 6 -------------------------------------------------------------------------------------

def epoch_curves(frame: pd.DataFrame, label_fraction: float = 0.01, metric: str = "top1",
                 kind: str = "linear_probe", confidence: float = 0.95) -> pd.DataFrame:
    """The numbers of Fig. 6: ``metric`` per (method, arm, epoch), mean / ``ci`` half-width / n over seeds.

    Epoch 0 of every continued arm is the base checkpoint: an arm without its own epoch-0 results
    starts from the ``base`` arm's (which :func:`e2mc.tables.with_base` supplies when only the arms'
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


def fig6_epochs(frame: pd.DataFrame, label_fraction: float = 0.01, metric: str = "top1",
                kind: str = "linear_probe", confidence: float = 0.95, arms: Sequence[str] | None = None) -> Figure:
    """Fig. 6: ``metric`` of the ``kind`` evaluation with ``label_fraction`` of the labels against the
    epoch of continued pre-training; one panel per method, one line per arm (``arms``, default every
    arm in the results), mean over seeds with a ``confidence`` t-interval band. The base checkpoint
    is the dashed horizontal line."""
    curves = epoch_curves(frame, label_fraction, metric, kind, confidence)
    if arms is not None:
        curves = curves[curves["arm"].isin(list(arms) + ["base"])]

    def draw(ax, method):
        of_method, handles = curves[curves["method"] == method], {}
        for arm in order_arms(of_method["arm"], ARM_ORDER):
            curve = of_method[of_method["arm"] == arm]
            if arm == "base":
                handles[arm] = ax.axhline(curve["mean"].iloc[0], color=arm_style(arm).color, linestyle="--",
                                          linewidth=1.2, label=arm_label(arm))
            else:
                handles[arm] = _arm_curve(ax, curve, arm)
        return handles

    return _per_method_figure(order_methods(curves["method"].unique()), draw, "epoch of continued pre-training",
                              f"{metric} ({label_fraction:.0%} labels)")


def paired_difference_epochs(frame: pd.DataFrame, arm: str = "e2mc", baseline: str = "original",
                             label_fraction: float = 0.01, metric: str = "top1", kind: str = "linear_probe",
                             confidence: float = 0.95) -> Figure:
    """``arm`` minus ``baseline`` on ``metric`` against the epoch of continued pre-training, paired by
    seed (:func:`e2mc.frames.paired_differences`): one panel per method, the mean difference with its
    ``confidence`` t-interval band (none with one pair), and zero as a dotted line. Narrower than
    reading two overlapping Fig. 6 bands, since the seed-to-seed variation both arms share cancels."""
    rows = select(frame, kind, label_fraction, arm=[arm, baseline])
    differences = paired_differences(rows, arm, baseline, metric, ["method", "epoch"], confidence)
    if differences.empty:
        raise MissingResultsError(f"no seed has {kind} results of both {arm} and {baseline} with "
                                  f"{label_fraction:.0%} of the labels in {source_of(frame)}; {REPRODUCE_HINT}")

    def draw(ax, method):
        curve = differences[differences["method"] == method]
        line = _band_line(ax, curve, f"{arm_label(arm)} − {arm_label(baseline)} (mean of {curve['n'].max()} seeds)",
                          arm_style(arm).color, arm_style(arm).marker)
        ax.axhline(0.0, color="0.3", linestyle=":", linewidth=1.0)
        return {arm: line}

    return _per_method_figure(order_methods(differences["method"].unique()), draw,
                              "epoch of continued pre-training", f"Δ {metric} ({label_fraction:.0%} labels), points")


# --- training dynamics -------------------------------------------------------------------------

def training_dynamics(frame: pd.DataFrame, keys: Sequence[str] = DYNAMICS_KEYS, confidence: float = 0.95) -> Figure:
    """Each of ``keys`` (rows of panels) of the per-epoch records of ``kind="training"`` results against
    the epoch, one panel column per method, one line per arm: mean over seeds, t-interval band."""
    epochs = training_epochs(frame)
    methods = order_methods(epochs["method"].unique())
    axes_style, context = _style()
    with axes_style, context:
        fig, axes = plt.subplots(len(keys), len(methods), figsize=(4.6 * len(methods), 3.2 * len(keys)),
                                 squeeze=False, layout="constrained")
        handles = {}
        for row, key in enumerate(keys):
            curves = summarize(epochs, ["method", "arm", "epoch"], key, confidence)
            for ax, method in zip(axes[row], methods):
                of_method = curves[curves["method"] == method]
                for arm in order_arms(of_method["arm"], ARM_ORDER):
                    handles[arm] = _arm_curve(ax, of_method[of_method["arm"] == arm], arm)
                ax.set(title=method_label(method) if row == 0 else None, xlabel="epoch",
                       ylabel=DYNAMICS_HEADERS.get(key, key.replace("_", " ")))
                ax.xaxis.get_major_locator().set_params(integer=True)
        _legend_below(fig, handles)
    return fig


# --- the pre-training plateau -------------------------------------------------------------------

PLATEAU_METRICS = {"top1_val_selected": "validation-selected epoch", "top1": "best test epoch",
                   "top1_last": "last probe epoch"}


def pretraining_plateau(frame: pd.DataFrame, label_fraction: float = 0.01,
                        metrics: Sequence[str] = ("top1_val_selected", "top1"), kind: str = "linear_probe",
                        confidence: float = 0.95) -> Figure:
    """Linear-probe accuracy with ``label_fraction`` of the labels against the epoch of pre-training
    from scratch (the ``plateau/`` results: arm "base", epoch = pre-training epoch), one panel per
    method, one line per metric of ``metrics`` present in the results (mean over seeds, t-interval band
    when there are several)."""
    rows = select(frame, kind, label_fraction, arm="base")
    present = [m for m in metrics if m in rows.columns and rows[m].notna().any()]
    if not present:
        raise MissingResultsError(f"the {kind} results in {source_of(frame)} have none of {list(metrics)}; "
                                  f"{REPRODUCE_HINT}")
    colors = dict(zip(PLATEAU_METRICS, sns.color_palette("colorblind", len(PLATEAU_METRICS))))

    def draw(ax, method):
        return {metric: _band_line(ax, summarize(rows[rows["method"] == method], ["epoch"], metric, confidence),
                                   PLATEAU_METRICS.get(metric, metric), colors.get(metric), markersize=3.5,
                                   linewidth=1.4)
                for metric in present}

    return _per_method_figure(order_methods(rows["method"].unique()), draw, "epoch of pre-training from scratch",
                              f"linear probe top-1 ({label_fraction:.0%} labels)")


# --- notebook helpers ---------------------------------------------------------------------------

def save_figure(fig: Figure, output_dir: str | Path, name: str, formats: Sequence[str] = ("png", "pdf"),
                dpi: int = 200) -> list[Path]:
    """Write ``<output_dir>/<name>.<format>`` for each format, close the figure, return the paths.
    PDFs carry no creation date, so regenerating an unchanged figure gives the same file."""
    unknown = [f for f in formats if f not in FIGURE_FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats {list(formats)}: choose from {list(FIGURE_FORMATS)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = output_dir / f"{name}.{fmt}"
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Date": None} if fmt == "svg" else None
        fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata=metadata)
        paths.append(path)
    plt.close(fig)
    return paths


def load_results(results_dir: str | Path) -> pd.DataFrame:
    """:func:`e2mc.results.load` of ``results_dir``, which the frame remembers
    (``frame.attrs["results_dir"]``) so that a missing result names the directory."""
    from e2mc.results import load

    frame = load(results_dir)
    frame.attrs["results_dir"] = str(results_dir)
    return frame


def repo_root() -> Path | None:
    """The source checkout this package is installed from (editable install), or None."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def resolve_io_dirs(results_dir: str | Path, output_dir: str | Path | None = None) -> tuple[Path, Path]:
    """The notebooks' paths: a relative ``results_dir`` is looked up in the current directory, then
    in the repository root (so a notebook run from ``notebooks/`` still finds ``results/mini``);
    a relative ``output_dir`` is taken against the same base; ``None`` means ``figures/<name of
    results_dir>``. Raises FileNotFoundError naming the directory when it is not there."""
    results_dir = Path(results_dir).expanduser()
    bases = [Path.cwd()]
    root = repo_root()
    if root is not None and root != Path.cwd().resolve():
        bases.append(root)
    if results_dir.is_absolute():
        bases = bases[:1]
    found = next((base for base in bases if (base / results_dir).is_dir()), None)
    if found is None:
        looked = results_dir if results_dir.is_absolute() else " or ".join(str(b / results_dir) for b in bases)
        raise FileNotFoundError(f"results directory {results_dir} not found (looked for {looked}); "
                                f"{REPRODUCE_HINT}, or pass -p results_dir <directory>")
    output_dir = Path("figures") / (found / results_dir).resolve().name if output_dir is None else Path(output_dir)
    output_dir = output_dir.expanduser()
    return found / results_dir, output_dir if output_dir.is_absolute() else found / output_dir


def load_variants(results_dir: str | Path) -> pd.DataFrame | None:
    """The results of every ``<results_dir>/variants/<variant>/`` (e.g. ``lr3x``: another learning
    rate; see e2mc.reproduce.Arm) in one frame with a ``variant`` column; None when there are none."""
    folder = Path(results_dir) / "variants"
    frames = [load_results(sub).assign(variant=sub.name) for sub in sorted(folder.iterdir())
              if sub.is_dir() and any(sub.rglob("*.json"))] if folder.is_dir() else []
    if not frames:
        return None
    frame = pd.concat(frames, ignore_index=True)
    frame.attrs["results_dir"] = str(folder)
    return frame

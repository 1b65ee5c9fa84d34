"""The one look of every figure (seaborn whitegrid, paper context), the pieces the figures share (a
mean line with its t-interval band, one panel per method with the legend below, the note that says what
the bands are), and saving a figure. Figures are drawn with the Agg backend, so nothing needs a display.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from e2mc.errors import UserError  # noqa: E402
from e2mc.naming import ArmStyle, method_label  # noqa: E402

FIGURE_FORMATS = ("png", "pdf", "svg")


def band_line(ax, curve: pd.DataFrame, label: str, color=None, marker: str = "o", markersize: float = 5,
              linewidth: float = 1.6):
    """A mean line (columns epoch, mean) with its confidence band (column ci; none where NaN); returns
    the line."""
    (line,) = ax.plot(curve["epoch"], curve["mean"], color=color, marker=marker, markersize=markersize,
                      linewidth=linewidth, label=label)
    ci = curve["ci"].fillna(0)
    ax.fill_between(curve["epoch"], curve["mean"] - ci, curve["mean"] + ci, color=line.get_color(), alpha=0.18,
                    linewidth=0)
    return line


def arm_curve(ax, curve: pd.DataFrame, style: ArmStyle):
    """One arm's mean line and band in the arm's colour and marker, labelled "(1 seed)" when no epoch
    after the start has more than one seed (so it has no band); returns the line."""
    later = curve[curve["epoch"] > 0] if (curve["epoch"] > 0).any() else curve
    one_seed = "n" in curve and int(later["n"].max()) == 1
    return band_line(ax, curve, style.label + (" (1 seed)" if one_seed else ""), style.color, style.marker)


def band_note(confidence: float, paired: bool, n: Sequence[int] | None = None) -> str:
    """What a figure's bands are, written into the figure: "bands: 95% t-interval over 3 seeds, unpaired"."""
    counts = sorted({int(k) for k in n if k > 1}) if n is not None else []
    seeds = ("n seeds" if not counts else f"{counts[0]} seeds" if len(counts) == 1
             else f"{counts[0]}-{counts[-1]} seeds")
    kind = "paired by seed: t-interval of the per-seed differences" if paired else "unpaired"
    return f"lines: mean over seeds; bands: {confidence:.0%} t-interval over {seeds} ({kind}); none with 1 seed"


def legend_below(fig: Figure, handles: dict) -> None:
    fig.legend(list(handles.values()), [h.get_label() for h in handles.values()], loc="outside lower center",
               ncol=min(len(handles), 4), frameon=False)


def per_method_figure(methods: Sequence[str], draw: Callable, xlabel: str, ylabel: str, note: str | None = None
                      ) -> Figure:
    """One panel per method, side by side, in the common style, with the legend of every labelled line
    below and ``note`` (what the lines and bands are) above: ``draw(ax, method)`` plots a method's panel
    and returns its {label: line} handles."""
    axes_style, context = style()
    with axes_style, context:
        fig, axes = plt.subplots(1, len(methods), figsize=(4.6 * len(methods), 3.9), squeeze=False,
                                 layout="constrained")
        handles = {}
        for ax, method in zip(axes[0], methods):
            handles.update(draw(ax, method))
            ax.set(title=method_label(method), xlabel=xlabel, ylabel=ylabel)
            ax.xaxis.get_major_locator().set_params(integer=True)
        legend_below(fig, handles)
        if note:
            fig.suptitle(note, fontsize="small")
    return fig


def style():
    """The one style of every figure: seaborn whitegrid, paper context, slightly larger fonts."""
    return sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.2)


def save_figure(fig: Figure, output_dir: str | Path, name: str, formats: Sequence[str] = ("png", "pdf"),
                dpi: int = 200) -> list[Path]:
    """Write ``<output_dir>/<name>.<format>`` for each format, close the figure, return the paths.
    PDFs carry no creation date, so regenerating an unchanged figure gives the same file."""
    unknown = [f for f in formats if f not in FIGURE_FORMATS]
    if unknown or not formats:
        raise UserError(f"formats {list(formats)}: choose from {list(FIGURE_FORMATS)}")
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


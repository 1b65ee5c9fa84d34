"""The figures of the converged part and of the pre-registered study on its base
(docs/preregistration.md): is the base converged (linear probe against the epoch of pre-training from
scratch), and the pre-registered paired differences at a glance."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from e2mc import preregistration
from e2mc.figure_style import band_line, band_note, per_method_figure, style
from e2mc.frames import REPRODUCE_HINT, MissingResultsError, order_methods, select, source_of, summarize
from e2mc.naming import PROBE_METRICS, arm_label, arm_styles, method_label, metric_short


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
    colors = dict(zip(PROBE_METRICS, sns.color_palette("colorblind", len(PROBE_METRICS))))

    def draw(ax, method):
        return {metric: band_line(ax, summarize(rows[rows["method"] == method], ["epoch"], metric, confidence),
                                  metric_short(metric), colors.get(metric), markersize=3.5,
                                  linewidth=1.4)
                for metric in present}

    counts = rows.groupby(["method", "epoch"])["seed"].nunique()
    return per_method_figure(order_methods(rows["method"].unique()), draw, "epoch of pre-training from scratch",
                             f"linear-probe top-1 (%), {label_fraction:.0%} labels",
                             band_note(confidence, False, counts) if counts.max() > 1 else
                             "one probe seed per epoch: no band")


def preregistered_study(frame: pd.DataFrame) -> Figure:
    """The pre-registered test at a glance: for the primary endpoint (E2MC − original) and the positive
    control (MMCR − original), each seed's paired difference (dots, labelled by seed) and their mean with
    its 95% t-interval (bar), in points of test top-1 at the probe's last epoch with 1% labels after
    epoch 20; zero dotted, and dashed the smallest effect the design detects with 80% power (from the
    pilot seeds, docs/preregistration.md). Raises MissingResultsError until every seed is there."""
    outcome = preregistration.analyse(frame)
    pilot = dict(zip(outcome.primary.seeds, outcome.primary.differences))  # the seeds the power came from
    detectable = preregistration.power_analysis([pilot[s] for s in preregistration.OBSERVED_BEFORE]).detectable
    axes_style, context = style()
    with axes_style, context:
        fig, ax = plt.subplots(figsize=(5.6, 4.0), layout="constrained")
        _draw_preregistered(ax, outcome, detectable)
    return fig


def _draw_preregistered(ax, outcome, detectable: float) -> None:
    for x, result in enumerate((outcome.primary, outcome.control)):
        style = arm_styles([result.endpoint.arm])[result.endpoint.arm]
        offsets = np.linspace(-0.18, 0.18, result.n)
        ax.scatter(x + offsets, result.differences, color=style.color, marker=style.marker, s=22, alpha=0.7,
                   zorder=2)
        ax.errorbar(x + 0.32, result.mean, yerr=result.half_width, color="0.15", marker="D", markersize=6,
                    capsize=5, linewidth=1.6, zorder=3)
        ax.annotate(f"{result.mean:+.2f}\np = {result.p:.3f}", (x + 0.38, result.mean), fontsize=8,
                    va="center", ha="left")
    ax.axhline(0.0, color="0.3", linestyle=":", linewidth=1.0)
    ax.axhline(detectable, color="0.5", linestyle="--", linewidth=0.9)
    # at the right edge, in two short lines: clear of the seeds' dots and of both error bars
    ax.text(1.97, detectable, f"detectable with\n80% power: {detectable:.2f}", fontsize=7, va="bottom", ha="right",
            color="0.35")
    ax.set_xticks([0, 1], [f"{arm_label(r.endpoint.arm)} − {arm_label(r.endpoint.baseline)}\n({label}, n = {r.n})"
                           for r, label in ((outcome.primary, "primary"), (outcome.control, "positive control"))])
    ax.set_xlim(-0.5, 2.0)
    ax.set_ylabel("paired difference in test top-1 (points)\nlast probe epoch, 1% labels, epoch 20")
    ax.set_title(f"Pre-registered test, converged {method_label(preregistration.METHOD)} base\n"
                 "dots: one seed each; bar: mean and 95% t-interval over seeds", fontsize=9)

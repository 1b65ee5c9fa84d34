"""The tables of the converged part (configs/experiments/converged.yaml) and of the pre-registered study on
its base (docs/preregistration.md), beside the main study's in :mod:`e2mc.tables`, in the same
:class:`~e2mc.tables.Table` form."""
from __future__ import annotations

import re

import pandas as pd

from e2mc import preregistration
from e2mc.frames import final_epoch_rows, lead_metrics, require_columns, select, summarize
from e2mc.naming import VAL_SELECTED, arm_label, fraction_label, method_label, metric_rule
from e2mc.tables import (Table, by_method_and_arm, format_cell, make_each, metrics_side_by_side, paired_comparison,
                         paired_side_by_side)


def variant_factor(variant: str) -> float:
    """The factor of a learning-rate variant ``lr<factor>x`` (e.g. ``lr0.3x`` -> 0.3); 1 for the main grid."""
    match = re.fullmatch(r"lr([0-9.]+)x", variant or "")
    return float(match.group(1)) if match else 1.0


def learning_rate_check(frame: pd.DataFrame, variants: pd.DataFrame, metric: str = VAL_SELECTED,
                        kind: str = "linear_probe", confidence: float = 0.95) -> Table:
    """Final-epoch ``metric`` per method, arm and continued-training learning rate: the rows of
    ``variants`` (result files of ``variants/lr<factor>x/``, with a ``variant`` column) and, as 1x, the
    main grid's results of the same methods, arms and seeds (so every learning rate has the same seeds)."""
    varied = select(variants, kind)
    require_columns(varied, ["variant", "method", "arm", "seed", "epoch", "label_fraction", metric])
    main = select(frame, kind, method=sorted(set(varied["method"])), arm=sorted(set(varied["arm"])),
                  seed=sorted(set(varied["seed"])))
    rows = pd.concat([final_epoch_rows(main).assign(variant="lr1x")]
                     + [final_epoch_rows(of) for _, of in varied.groupby("variant")], ignore_index=True)
    rows["lr_factor"] = [variant_factor(v) for v in rows["variant"]]
    numbers = summarize(rows, ["method", "arm", "lr_factor", "label_fraction", "epoch"], metric, confidence)
    fractions = sorted({float(f) for f in numbers["label_fraction"]})
    cells = {(m, a, lr, float(f)): (mean, ci) for m, a, lr, f, mean, ci in
             zip(numbers["method"], numbers["arm"], numbers["lr_factor"], numbers["label_fraction"], numbers["mean"],
                 numbers["ci"])}
    header = ["Method", "Arm", "LR", "Epoch"] + [fraction_label(f) for f in fractions]
    printed = []
    for method, arm, of_arm in by_method_and_arm(numbers):
        for factor in sorted(of_arm["lr_factor"].unique()):
            epoch = int(of_arm.loc[of_arm["lr_factor"] == factor, "epoch"].max())
            printed.append([method_label(method), arm_label(arm), f"{factor:g}×", str(epoch)]
                           + [format_cell(*cells[method, arm, factor, f]) if (method, arm, factor, f) in cells
                              else "—" for f in fractions])
    seeds = ", ".join(str(int(s)) for s in sorted(set(rows["seed"])))
    caption = (f"Learning-rate check: {kind.replace('_', ' ')} {metric_rule(metric)}, after the final epoch of continued "
               f"pre-training with optim.base_lr times the factor (LR) of the method's mini config, seed(s) {seeds}")
    return Table(f"learning_rate_check_{metric}", caption, header, printed, numbers)


def converged_tables(frame: pd.DataFrame, variants: pd.DataFrame | None = None) -> tuple[list[Table], list[str]]:
    """The converged part's tables (configs/experiments/converged.yaml), besides :func:`all_tables`: the main
    table with the validation-selected probe first and the last-epoch and best-epoch top-1 beside it,
    the paired E2MC-minus-original comparison on the three, each continued arm minus the base
    checkpoint on the three (paired by probe seed: is the base converged, does either loss still move
    it?), the learning-rate check and the transfer table. Tables whose results are missing are skipped with the reason."""
    makers = [lambda: metrics_side_by_side(frame),
              lambda: paired_side_by_side(frame, name="paired_comparison_val_selected"),
              lambda: paired_comparison(frame, metric="top1", name="paired_comparison_top1"),
              *(lambda arm=arm: paired_side_by_side(frame, arm=arm, baseline="base",
                                                    name=f"paired_comparison_{arm}_vs_base_val_selected")
                for arm in ("original", "e2mc")),
              lambda: metrics_side_by_side(frame, metrics=lead_metrics(frame, "transfer"), kind="transfer",
                                           name="transfer_val_selected", title="Transfer")]
    if variants is not None:
        makers += [lambda metric=metric: learning_rate_check(frame, variants, metric) for metric in (VAL_SELECTED, "top1")]
    return make_each(makers)


def preregistered_study(frame: pd.DataFrame) -> Table:
    """The pre-registered test (:func:`e2mc.preregistration.analyse`): the primary endpoint, the
    positive control, then every exploratory endpoint, each a paired difference over seeds with its
    95% t-interval, t and two-sided p. Only the first two rows decide anything. Raises
    :class:`MissingResultsError` until every arm has all pre-registered seeds."""
    outcome = preregistration.analyse(frame)
    roles = {id(outcome.primary): "primary", id(outcome.control): "positive control"}
    printed, numbers = [], []
    for result in (outcome.primary, outcome.control, *outcome.exploratory):
        endpoint = result.endpoint
        low, high = result.interval
        role = roles.get(id(result), "exploratory")
        printed.append([role, f"{arm_label(endpoint.arm)} − {arm_label(endpoint.baseline)}",
                        preregistration.METRIC_RULES[endpoint.metric], fraction_label(endpoint.label_fraction),
                        f"{result.mean:+.2f} [{low:+.2f}, {high:+.2f}]", str(result.n), f"{result.t:.2f}",
                        f"{result.p:.3f}"])
        numbers.append({"role": role, "arm": endpoint.arm, "baseline": endpoint.baseline, "metric": endpoint.metric,
                        "label_fraction": endpoint.label_fraction, "mean": result.mean, "ci": result.half_width,
                        "n": result.n, "t": result.t, "p": result.p})
    caption = (f"Pre-registered test on the converged {method_label(preregistration.METHOD)} base "
               f"(docs/preregistration.md): paired differences after epoch {preregistration.EPOCH}, paired by seed "
               f"(probe seed = training seed), mean [95% t-interval] in points, two-sided paired t-test; only the "
               f"primary endpoint and the positive control decide, the exploratory rows are uncorrected")
    summary = (preregistration.primary_sentence(outcome.primary) + "\n\n"
               + preregistration.control_sentence(outcome.control))  # the sentences the pre-registration fixed
    return Table("preregistered_study", caption,
                 ["Endpoint", "Comparison", "Probe number", "Labels", "Difference", "Seeds", "t", "p"],
                 printed, pd.DataFrame(numbers), summary)

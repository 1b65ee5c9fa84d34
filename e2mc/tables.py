"""The paper's tables, computed from a frame of result files (one row per result JSON, see
``docs/results-schema.md``) and written as Markdown and LaTeX.

Every cell is the mean over seeds with the half-width of a 95% Student-t interval over seeds
(``mean ± half-width``; a single seed prints the mean alone). Each table keeps its numbers in
long form (:attr:`Table.numbers`) next to the printed strings, so tests and notebooks can read them.

    >>> table = main_results(frame)                 # base / original / E2MC, per method and label fraction
    >>> write_table(table, "figures/mini")          # figures/mini/main_results.md and .tex

The converged part's and the pre-registered study's tables are in :mod:`e2mc.converged_tables`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from e2mc.claims import PAPER_EFFECT
from e2mc.criteria import E2MCArm
from e2mc.frames import (REPRODUCE_HINT, MissingResultsError, final_epoch_rows, lead_metrics, order_arms, order_methods,
                         paired_differences, require_columns, select, source_of, summarize, training_epochs, with_base)
from e2mc.naming import (ABLATION_ARMS, ALTERNATIVE_ARMS, ARM_ORDER, DYNAMICS_HEADERS, DYNAMICS_KEYS, MAIN_ARMS,
                         TRANSFORM_LABELS, VAL_SELECTED, arm_label, criterion_label, fraction_label, method_label,
                         metric_rule, metric_rules, metric_short)
from e2mc.provenance import write_atomic

# --- tables -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Table:
    """A printed table: ``header`` and ``rows`` of strings, plus the long-form ``numbers`` behind the
    cells (one row per cell: its keys, ``mean``, ``ci`` and ``n``), and an optional ``summary``: the
    sentences that report it, printed under the Markdown table."""

    name: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    numbers: pd.DataFrame
    summary: str = ""

    def to_markdown(self) -> str:
        lines = [f"**{self.caption}**", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" if i < self._key_columns() else "---:" for i in range(len(self.header))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.summary:
            lines += ["", self.summary]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``)."""
        align = "l" * self._key_columns() + "r" * (len(self.header) - self._key_columns())
        body = [" & ".join(latex_escape(c) for c in self.header) + r" \\", r"\midrule"]
        body += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in self.rows]
        return "\n".join([
            r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(self.caption)}}}",
            rf"\label{{tab:{self.name.replace('_', '-')}}}", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
            *body, r"\bottomrule", r"\end{tabular}", r"\end{table}"]) + "\n"

    def _key_columns(self) -> int:
        return sum(1 for c in self.header if c in KEY_HEADERS)


KEY_HEADERS = {"Claim", "Verdict", "Evidence", "Metric", "Shown in", "Not testable because", "Method", "Arm", "Criterion",
               "Transform", "λ_ent", "λ_cov", "Epoch", "Dataset", "LR", "Endpoint", "Comparison", "Probe number"}


def latex_escape(text: str) -> str:
    replacements = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
                    "{": r"\{", "}": r"\}", "±": r"$\pm$", "λ": r"$\lambda$", "—": "--"}
    return "".join(replacements.get(ch, ch) for ch in text)


def format_cell(mean: float, half_width: float, fmt: str | None = ".2f") -> str:
    """``"71.23 ± 0.40"``; the mean alone when there is no interval (one seed).

    ``fmt=None`` lets the interval set the digits: two significant ones of the half-width, and the
    mean to the same decimal place (``-1.0270 ± 0.0050``); a lone mean gets four significant digits.
    """
    if fmt is None:
        if math.isnan(half_width) or half_width <= 0:
            return format(mean, ".4g")
        decimals = max(0, 1 - math.floor(math.log10(half_width)))
        fmt = f".{decimals}f"
    if math.isnan(half_width):
        return format(mean, fmt)
    return f"{mean:{fmt}} ± {half_width:{fmt}}"


def write_table(table: Table, output_dir: str | Path) -> list[Path]:
    """Write ``<output_dir>/<table.name>.md`` and ``.tex``; returns both paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / f"{table.name}.md", output_dir / f"{table.name}.tex"]
    paths[0].write_text(table.to_markdown())
    paths[1].write_text(table.to_latex())
    return paths


def by_method_and_arm(numbers: pd.DataFrame, preferred=ARM_ORDER):
    """(method, arm, that arm's rows) in the order of the tables: methods by the registry, arms by
    ``preferred`` then by name."""
    for method in order_methods(numbers["method"]):
        of_method = numbers[numbers["method"] == method]
        for arm in order_arms(of_method["arm"], preferred):
            yield method, arm, of_method[of_method["arm"] == arm]


def _criterion_columns(rows: pd.DataFrame, method: str, arm: str) -> list[str]:
    """Transform and coefficients of an arm, read from its results' criterion fields."""
    first = rows[(rows["method"] == method) & (rows["arm"] == arm)].iloc[0]

    def field(key: str, show) -> str:  # a field the criterion does not use is null in its results
        value = first.get(f"criterion_{key}")
        return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else show(value)

    return [criterion_label(first.get("criterion_name")), field("transform", lambda t: TRANSFORM_LABELS.get(t, t)),
            field("ent_coeff", lambda c: f"{c:g}"), field("cov_coeff", lambda c: f"{c:g}")]


def arm_results(frame: pd.DataFrame, arms: Sequence[str], *, name: str, title: str, metric: str = "top1",
                kind: str = "linear_probe", fmt: str = ".2f", confidence: float = 0.95,
                show_criterion: bool = False) -> Table:
    """Final-epoch ``metric`` of ``kind`` results per method and arm (rows) and label fraction (columns;
    one per dataset and label fraction when the results hold several datasets, e.g. transfer).

    The ``base`` arm is the starting checkpoint (epoch 0; see :func:`with_base`); every other arm is
    read at the last epoch its results reached. Arms absent from the results are left out; if none is
    present this raises :class:`MissingResultsError`.
    """
    rows = select(frame, kind)
    require_columns(rows, ["method", "arm", "epoch", "seed", "label_fraction", metric])
    rows = select(with_base(rows) if "base" in arms else rows, kind, arm=list(arms))
    rows = final_epoch_rows(rows)
    require_columns(rows, ["dataset"])
    numbers = summarize(rows, ["method", "arm", "dataset", "label_fraction", "epoch"], metric, confidence)
    # one column per (dataset, label fraction); a null fraction (e.g. a transfer task) sorts last
    fraction_key = [None if pd.isna(f) else float(f) for f in numbers["label_fraction"]]
    keys = list(zip(numbers["method"], numbers["arm"], numbers["dataset"], fraction_key))
    cells = dict(zip(keys, zip(numbers["mean"], numbers["ci"])))
    columns = sorted({(d, f) for _, _, d, f in keys}, key=lambda c: (c[0], math.inf if c[1] is None else c[1]))
    several_datasets = len({d for d, _ in columns}) > 1
    header = ["Method", "Arm"] + (["Criterion", "Transform", "λ_ent", "λ_cov"] if show_criterion else []) \
        + ["Epoch"] + [f"{d} {fraction_label(f)}" if several_datasets else fraction_label(f) for d, f in columns]
    printed = []
    for method in order_methods(numbers["method"]):
        of_method = numbers[numbers["method"] == method]
        for arm in order_arms(of_method["arm"], arms):
            row = [method_label(method), arm_label(arm)]
            if show_criterion:
                row += _criterion_columns(rows, method, arm)
            row.append(str(int(of_method.loc[of_method["arm"] == arm, "epoch"].iloc[0])))
            row += [format_cell(*cells[method, arm, d, f], fmt) if (method, arm, d, f) in cells else "—"
                    for d, f in columns]
            printed.append(row)
    counts = sorted(set(numbers["n"]))
    seeds = (f"{counts[0]} seed{'s' if counts[0] > 1 else ''}" if len(counts) == 1 else
             f"{counts[0]} to {counts[-1]} seeds (a cell without ± has one)")
    caption = (f"{title}: {kind.replace('_', ' ')} {metric_rule(metric)}, after the final epoch of continued "
               f"pre-training, mean ± {confidence:.0%} t-interval half-width over {seeds}, per label fraction")
    return Table(name, caption, header, printed, numbers)


def main_results(frame: pd.DataFrame, metric: str = "top1", kind: str = "linear_probe", **kw) -> Table:
    """Base checkpoint / continued with the original loss / continued with E2MC."""
    return arm_results(frame, MAIN_ARMS, name="main_results" if kind == "linear_probe" else f"main_results_{kind}",
                       title="Main results", metric=metric, kind=kind, **kw)


def ablations(frame: pd.DataFrame, metric: str = "top1", kind: str = "linear_probe", **kw) -> Table:
    """E2MC against entropy only, covariance only, the other compact transform, and any other E2MC
    variant in the results (other coefficients: see :func:`e2mc.naming.infer_arm`)."""
    rows = select(frame, kind)
    require_columns(rows, ["arm"])
    variants = sorted({a for a in rows["arm"] if E2MCArm.parse(a) is not None} - set(ABLATION_ARMS))
    arms = ABLATION_ARMS + tuple(variants)
    frame = _methods_with_some_arm(frame, kind, arms[1:])
    return arm_results(frame, arms, name="ablations", title="Ablations", metric=metric, kind=kind,
                       show_criterion=True, **kw)


def alternative_criteria(frame: pd.DataFrame, metric: str = "top1", kind: str = "linear_probe", **kw) -> Table:
    """Uniformity, MMCR and variance-covariance against the original loss and E2MC."""
    frame = _methods_with_some_arm(frame, kind, ALTERNATIVE_ARMS[2:])
    return arm_results(frame, ALTERNATIVE_ARMS, name="alternative_criteria", title="Alternative criteria",
                       metric=metric, kind=kind, show_criterion=True, **kw)


def _methods_with_some_arm(frame: pd.DataFrame, kind: str, arms: Sequence[str]) -> pd.DataFrame:
    """``frame`` restricted to the methods that have ``kind`` results of at least one of ``arms`` (an
    ablation table has no row for a method that was not ablated); MissingResultsError when none has."""
    methods = set(select(frame, kind, arm=list(arms))["method"])
    restricted = frame[frame["method"].isin(methods)]
    restricted.attrs = dict(frame.attrs)
    return restricted


def training_dynamics(frame: pd.DataFrame, keys: Sequence[str] = DYNAMICS_KEYS, fmt: str | None = None,
                      confidence: float = 0.95) -> Table:
    """Marginal entropy and covariance penalty of the embedding after each epoch of continued
    pre-training, per method and arm (mean ± t-interval half-width over seeds)."""
    epochs = training_epochs(frame)
    parts = [summarize(epochs, ["method", "arm", "epoch"], key, confidence).assign(key=key) for key in keys]
    numbers = pd.concat(parts, ignore_index=True)
    header = ["Method", "Arm", "Epoch"] + [DYNAMICS_HEADERS.get(k, k.replace("_", " ")) for k in keys]
    printed = []
    for method, arm, of_arm in by_method_and_arm(numbers):
        for epoch in sorted(of_arm["epoch"].unique()):
            cells = of_arm[of_arm["epoch"] == epoch].set_index("key")
            printed.append([method_label(method), arm_label(arm), str(int(epoch))] +
                           [format_cell(cells.at[k, "mean"], cells.at[k, "ci"], fmt) for k in keys])
    caption = (f"Training dynamics: {', '.join(k.replace('_', ' ') for k in keys)} of the embedding after each "
               f"epoch of continued pre-training, mean ± {confidence:.0%} t-interval half-width over seeds; "
               "measured on training batches after the transform the arm trains with (the method's own for arms "
               "without E2MC), so an arm with the other transform is not on the same scale")
    return Table("training_dynamics", caption, header, printed, numbers)


def make_each(makers) -> tuple[list[Table], list[str]]:
    """Call every table maker: (the tables made, the reasons of those whose results are missing)."""
    made, skipped = [], []
    for make in makers:
        try:
            made.append(make())
        except MissingResultsError as error:
            skipped.append(str(error))
    return made, skipped


def all_tables(frame: pd.DataFrame, metric: str = "top1") -> tuple[list[Table], list[str]]:
    """Every table the results support, and why each other one was left out.

    The main table and E2MC minus the original loss paired by seed, each with the probe numbers of
    :func:`lead_metrics` side by side (unselected or validation-selected first; ``metric`` other than
    "top1" shows that metric alone), the ablation, alternative-criteria and
    training-dynamics tables, plus main tables for
    fine-tuning and transfer when there are such results. A table whose arms are not in ``frame``
    yet (a partly run grid) is skipped with the reason rather than failing the others.
    """
    lead = lead_metrics(frame) if metric == "top1" else (metric,)
    makers = [lambda: metrics_side_by_side(frame, metrics=lead, name="main_results"),
              lambda: paired_side_by_side(frame, metrics=lead, name="paired_comparison"),
              lambda: ablations(frame, metric), lambda: alternative_criteria(frame, metric),
              lambda: training_dynamics(frame)]
    makers += [lambda kind=kind: main_results(frame, metric, kind=kind) for kind in ("finetune", "transfer")
               if (frame["kind"] == kind).any()]
    made, skipped = make_each(makers)
    if not made:
        raise MissingResultsError("no table can be made: " + " / ".join(skipped))
    return made, skipped


def claims_table(ledger: pd.DataFrame, results: str = "these results") -> Table:
    """The claims ledger (:func:`e2mc.claims.claims_ledger`) as a table: claim, verdict, evidence, the
    probe number with its selection rule, the notebook file that shows the arms, and why a claim could
    not be tested. Written as ``claims.md`` beside the other tables."""
    header = ["Claim", "Verdict", "Evidence", "Metric", "Shown in", "Not testable because"]
    rows = [[r["claim"], r["verdict"], r["evidence"], r["metric"], f"`{r['source']}`", r["reason"] or "—"]
            for _, r in ledger.iterrows()]
    caption = (f"Claims of the paper against {results}: each comparison is a paired difference by seed in "
               "top-1 points, mean ± 95% t-interval half-width (n pairs), arms at their final epoch. Verdicts "
               "by fixed rules (e2mc.claims.verdict): a claimed gain is supported when its interval lies above 0, "
               f"contradicted when it lies below {PAPER_EFFECT:g} points (e2mc.claims.PAPER_EFFECT: the paper's "
               "numbers are not available, so half a point stands for its effect), inconclusive when it "
               f"reaches both; a claimed absence of notable gain is supported below {PAPER_EFFECT:g} and "
               "contradicted when it lies above 0 and reaches it; several comparisons must agree")
    return Table("claims", caption, header, rows, ledger.drop(columns=["numbers"]))


# --- the README ---------------------------------------------------------------------------------

README_BLOCK = re.compile(r"(<!-- e2mc:table (?P<name>[\w-]+/[\w-]+) -->\n)(?P<body>.*?)(<!-- e2mc:end -->)", re.S)


def sync_readme_tables(readme: str | Path, figures_dir: str | Path) -> list[str]:
    """Replace each block ``<!-- e2mc:table FOLDER/NAME -->`` ... ``<!-- e2mc:end -->`` of ``readme``
    with ``figures_dir/FOLDER/NAME.md`` (the Markdown that :func:`write_table` wrote for the results
    folder FOLDER, e.g. ``mini/main_results``), so the numbers the README shows are the ones the
    notebooks computed. The file is rewritten atomically, and only when a block changed. Returns the
    names of the changed blocks; a block whose table does not exist is an error."""
    readme, figures_dir = Path(readme), Path(figures_dir)
    text = readme.read_text()
    changed: list[str] = []

    def fill(match: re.Match) -> str:
        source = figures_dir / f"{match['name']}.md"
        if not source.exists():
            raise MissingResultsError(f"{readme} shows table {match['name']!r} but {source} does not exist; "
                                      f"run the notebooks on the results first ({REPRODUCE_HINT})")
        body = source.read_text()
        if body != match["body"]:
            changed.append(match["name"])
        return match.group(1) + body + match.group(4)

    updated = README_BLOCK.sub(fill, text)
    if changed:
        write_atomic(readme, updated.encode())
    return changed


# --- paired comparison --------------------------------------------------------------------------

def paired_comparison(frame: pd.DataFrame, arm: str = "e2mc", baseline: str = "original", metric: str = "top1",
                      kind: str = "linear_probe", confidence: float = 0.95, fmt: str = ".2f",
                      name: str | None = None) -> Table:
    """``arm`` minus ``baseline`` on ``metric``, paired by seed: one row per method, dataset and label
    fraction, each arm read at its final epoch (``base``: the starting checkpoint, see :func:`with_base`).

    Each cell is the mean of the per-seed differences with the half-width of their ``confidence``
    Student-t interval (:func:`e2mc.frames.paired_difference`), the number of pairs, and whether the interval
    excludes 0 (``—`` with a single pair). Results are paired on ``seed``, never on their order; a
    seed present in only one arm is dropped, and the caption counts the dropped seeds. ``numbers``
    holds method, dataset, label_fraction, epoch, baseline_epoch, mean, ci, n, excludes_zero,
    dropped_seeds. Raises :class:`MissingResultsError` when no seed has both arms.
    """
    rows = select(frame, kind)
    require_columns(rows, ["method", "arm", "epoch", "seed", "label_fraction", "dataset", metric])
    arms = [arm, baseline]
    rows = select(with_base(rows) if "base" in arms else rows, kind, arm=arms)
    rows = final_epoch_rows(rows)
    several_datasets = rows["dataset"].nunique() > 1
    numbers = paired_differences(rows, arm, baseline, metric, ["method", "dataset", "label_fraction"], confidence)
    if numbers.empty:
        raise MissingResultsError(f"no seed has {kind} results of both {arm} and {baseline} in {source_of(frame)}; "
                                  f"{REPRODUCE_HINT}")
    dropped_where = []
    for _, cell in numbers[numbers["dropped_seeds"].map(len) > 0].iterrows():
        seeds = cell["dropped_seeds"]
        where = " ".join([method_label(cell["method"])] + ([str(cell["dataset"])] if several_datasets else [])
                         + [fraction_label(cell["label_fraction"])])
        dropped_where.append(f"{where}: seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}")
    dropped_total = int(sum(len(d) for d in numbers["dropped_seeds"]))
    numbers = numbers.assign(
        excludes_zero=[None if math.isnan(ci) else bool(abs(m) > ci) for m, ci in zip(numbers["mean"], numbers["ci"])],
        dropped_seeds=[len(d) for d in numbers["dropped_seeds"]])
    header = ["Method"] + (["Dataset"] if several_datasets else []) + [
        "Labels", "Epoch", f"{arm_label(arm)} − {arm_label(baseline)}", "Seeds", f"{confidence:.0%} CI excludes 0"]
    printed = []
    for method in order_methods(numbers["method"]):
        of_method = numbers[numbers["method"] == method]
        of_method = of_method.assign(_order=[math.inf if pd.isna(f) else float(f) for f in of_method["label_fraction"]])
        for _, cell in of_method.sort_values(["dataset", "_order"]).iterrows():
            epoch, baseline_epoch = int(cell["epoch"]), int(cell["baseline_epoch"])
            epoch = str(epoch) if epoch == baseline_epoch else f"{epoch} vs {baseline_epoch}"
            difference = (format(cell["mean"], f"+{fmt}") if math.isnan(cell["ci"])
                          else f"{cell['mean']:+{fmt}} ± {cell['ci']:{fmt}}")
            excludes = "—" if pd.isna(cell["excludes_zero"]) else ("yes" if cell["excludes_zero"] else "no")
            printed.append([method_label(method)] + ([str(cell["dataset"])] if several_datasets else [])
                           + [fraction_label(cell["label_fraction"]), epoch, difference, str(int(cell["n"])), excludes])
    dropped = (f"{dropped_total} seed{'s' if dropped_total > 1 else ''} present in only one arm dropped "
               f"({'; '.join(dropped_where)})" if dropped_total else "no seed dropped")
    caption = (f"Paired comparison: {kind.replace('_', ' ')} {metric_rule(metric)}, {arm_label(arm)} minus "
               f"{arm_label(baseline)} at the final epoch, paired by seed: mean difference ± {confidence:.0%} "
               f"t-interval half-width of the per-seed differences; {dropped}")
    if name is None:
        name = "paired_comparison" + ("" if (arm, baseline) == ("e2mc", "original") else f"_{arm}_vs_{baseline}") \
            + ("" if kind == "linear_probe" else f"_{kind}")
    return Table(name, caption, header, printed, numbers)


# --- several probe numbers side by side (the converged bases, issue 15) --------------------------

def metrics_side_by_side(frame: pd.DataFrame, arms: Sequence[str] = MAIN_ARMS,
                         metrics: Sequence[str] = (VAL_SELECTED, "top1_last", "top1"), kind: str = "linear_probe",
                         name: str = "main_results_val_selected", title: str = "Main results",
                         confidence: float = 0.95) -> Table:
    """:func:`arm_results` of each of ``metrics``, their columns side by side per label fraction (the
    first metric first): e.g. the validation-selected probe epoch beside the best test epoch."""
    made = [arm_results(frame, arms, name=name, title=title, metric=m, kind=kind, confidence=confidence)
            for m in metrics]
    if len(made) == 1:
        return made[0]
    keys = 3  # Method, Arm, Epoch
    header = made[0].header[:keys] + [f"{column} {metric_short(m)}" for column in made[0].header[keys:]
                                      for m in metrics]
    by_key = [{tuple(row[:keys]): row[keys:] for row in table.rows} for table in made]
    rows = []
    for row in made[0].rows:
        key = tuple(row[:keys])
        cells = [by_key[i].get(key, ["—"] * len(row[keys:])) for i in range(len(metrics))]
        rows.append(list(key) + [cells[i][c] for c in range(len(row) - keys) for i in range(len(metrics))])
    numbers = pd.concat([t.numbers.assign(metric=m) for t, m in zip(made, metrics)], ignore_index=True)
    caption = made[0].caption.replace(metric_rule(metrics[0]), metric_rules(metrics), 1)
    return Table(name, caption, header, rows, numbers)


def paired_side_by_side(frame: pd.DataFrame, metrics: Sequence[str] = (VAL_SELECTED, "top1_last", "top1"),
                        arm: str = "e2mc", baseline: str = "original", kind: str = "linear_probe",
                        confidence: float = 0.95, name: str | None = None) -> Table:
    """:func:`paired_comparison` of each of ``metrics``, their difference and "excludes 0" columns side
    by side per method and label fraction (the first metric first). ``numbers`` holds every metric's
    rows with a ``metric`` column."""
    made = [paired_comparison(frame, arm, baseline, m, kind, confidence, name=name) for m in metrics]
    if len(made) == 1:
        return made[0]
    keys = len(made[0].header) - 3  # Method (Dataset) Labels Epoch | difference, Seeds, excludes 0
    header = made[0].header[:keys]
    for m in metrics:
        header += [f"Δ {metric_short(m)}", f"excludes 0 ({metric_short(m)})"]
    header.append("Seeds")
    by_key = [{tuple(row[:keys]): row[keys:] for row in table.rows} for table in made]
    rows = []
    for row in made[0].rows:
        key = tuple(row[:keys])
        cells = [by_key[i].get(key, ["—", "—", "—"]) for i in range(len(metrics))]
        rows.append(list(key) + [c for cell in cells for c in (cell[0], cell[2])] + [row[keys + 1]])
    numbers = pd.concat([t.numbers.assign(metric=m) for t, m in zip(made, metrics)], ignore_index=True)
    caption = made[0].caption.replace(metric_rule(metrics[0]), metric_rules(metrics), 1).replace(
        "mean difference", "Δ = mean difference in points", 1)
    return Table(made[0].name, caption, header, rows, numbers)

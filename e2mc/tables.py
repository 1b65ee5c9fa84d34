"""The paper's tables, computed from a frame of result files (one row per result JSON, see
``docs/results-schema.md``) and written as Markdown and LaTeX.

Every cell is the mean over seeds with the half-width of a 95% Student-t interval over seeds
(``mean ± half-width``; a single seed prints the mean alone). Each table keeps its numbers in
long form (:attr:`Table.numbers`) next to the printed strings, so tests and notebooks can read them.

    >>> table = main_results(frame)                 # base / original / E2MC, per method and label fraction
    >>> write_table(table, "figures/mini")          # figures/mini/main_results.md and .tex
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from e2mc.arms import split_e2mc_arm

METHOD_LABELS = {"vicreg": "VICReg", "swav": "SwAV", "simsiam": "SimSiam"}
METHOD_ORDER = ("vicreg", "swav", "simsiam")
TRANSFORM_LABELS = {"sigmoid": "sigmoid", "gaussian_cdf": "Gaussian CDF"}
MAIN_ARMS = ("base", "original", "e2mc")
# "e2mc" is one side of the transform ablation: it uses the method's own transform (e2mc.diagnostics).
ABLATION_ARMS = ("e2mc", "entropy_only", "covariance_only", "e2mc_sigmoid", "e2mc_gaussian_cdf")
ALTERNATIVE_ARMS = ("original", "e2mc", "uniformity", "mmcr", "vc")
DYNAMICS_KEYS = ("marginal_entropy", "covariance_penalty")
DYNAMICS_HEADERS = {"marginal_entropy": "marginal entropy (nats)", "covariance_penalty": "covariance penalty"}
REPRODUCE_HINT = "run make reproduce first"


class MissingResultsError(LookupError):
    """The results a figure or table needs are not in the frame (or its directory)."""


class DuplicateResultsError(ValueError):
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
        raise ValueError(f"mean_ci got NaN among {x.tolist()}; a result file lacks this metric")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = x.size
    if n == 1:
        return float(x[0]), math.nan, 1
    sem = x.std(ddof=1) / math.sqrt(n)
    return float(x.mean()), float(stats.t.ppf((1 + confidence) / 2, n - 1) * sem), n


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
            raise DuplicateResultsError(
                f"{dict(zip(by, key))} has more than one result per seed in {source_of(frame)}: {files}; "
                "keep one configuration per results folder (move the others to a folder of their own)")
        mean, half_width, n = mean_ci(group[value], confidence)
        rows.append({**dict(zip(by, key)), "mean": mean, "ci": half_width, "n": n})
    return pd.DataFrame(rows, columns=[*by, "mean", "ci", "n"])


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
    return [m for m in METHOD_ORDER if m in methods] + sorted(methods - set(METHOD_ORDER))


def order_arms(arms: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """``arms`` (each once) in the order of ``preferred``, then any other arm alphabetically."""
    arms = set(arms)
    return [a for a in dict.fromkeys(preferred) if a in arms] + sorted(arms - set(preferred))


# --- tables -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Table:
    """A printed table: ``header`` and ``rows`` of strings, plus the long-form ``numbers`` behind the
    cells (one row per cell: its keys, ``mean``, ``ci`` and ``n``)."""

    name: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    numbers: pd.DataFrame

    def to_markdown(self) -> str:
        lines = [f"**{self.caption}**", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" if i < self._key_columns() else "---:" for i in range(len(self.header))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
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


KEY_HEADERS = {"Method", "Arm", "Criterion", "Transform", "λ_ent", "λ_cov", "Epoch", "Dataset"}


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


def fraction_label(label_fraction) -> str:
    """0.01 -> "1%"; a missing fraction (transfer) -> "all"."""
    if label_fraction is None or (isinstance(label_fraction, float) and math.isnan(label_fraction)):
        return "all"
    return f"{100 * float(label_fraction):g}%"


def arm_label(arm: str) -> str:
    from e2mc import plots  # arm names live with the arm colours (plots imports this module)

    return plots.arm_label(arm)


def write_table(table: Table, output_dir: str | Path) -> list[Path]:
    """Write ``<output_dir>/<table.name>.md`` and ``.tex``; returns both paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / f"{table.name}.md", output_dir / f"{table.name}.tex"]
    paths[0].write_text(table.to_markdown())
    paths[1].write_text(table.to_latex())
    return paths


def _criterion_columns(rows: pd.DataFrame, method: str, arm: str) -> list[str]:
    """Transform and coefficients of an arm, read from its results' criterion fields."""
    first = rows[(rows["method"] == method) & (rows["arm"] == arm)].iloc[0]
    name = first.get("criterion_name")
    if name != "e2mc":
        return ["original loss only" if name in (None, "none") else arm_label(str(name)), "—", "—", "—"]
    transform = first.get("criterion_transform")
    return ["E2MC", TRANSFORM_LABELS.get(transform, str(transform)),
            f"{first['criterion_ent_coeff']:g}", f"{first['criterion_cov_coeff']:g}"]


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
            row = [METHOD_LABELS.get(method, method), arm_label(arm)]
            if show_criterion:
                row += _criterion_columns(rows, method, arm)
            row.append(str(int(of_method.loc[of_method["arm"] == arm, "epoch"].iloc[0])))
            row += [format_cell(*cells[method, arm, d, f], fmt) if (method, arm, d, f) in cells else "—"
                    for d, f in columns]
            printed.append(row)
    counts = sorted(set(numbers["n"]))
    seeds = (f"{counts[0]} seed{'s' if counts[0] > 1 else ''}" if len(counts) == 1 else
             f"{counts[0]} to {counts[-1]} seeds (a cell without ± has one)")
    caption = (f"{title}: {kind.replace('_', ' ')} {metric} at the final epoch, mean ± {confidence:.0%} "
               f"t-interval half-width over {seeds}, per label fraction")
    return Table(name, caption, header, printed, numbers)


def main_results(frame: pd.DataFrame, metric: str = "top1", kind: str = "linear_probe", **kw) -> Table:
    """Base checkpoint / continued with the original loss / continued with E2MC."""
    return arm_results(frame, MAIN_ARMS, name="main_results" if kind == "linear_probe" else f"main_results_{kind}",
                       title="Main results", metric=metric, kind=kind, **kw)


def ablations(frame: pd.DataFrame, metric: str = "top1", kind: str = "linear_probe", **kw) -> Table:
    """E2MC against entropy only, covariance only, the other compact transform, and any other E2MC
    variant in the results (other coefficients: see :func:`e2mc.arms.infer_arm`)."""
    rows = select(frame, kind)
    require_columns(rows, ["arm"])
    variants = sorted({a for a in rows["arm"] if split_e2mc_arm(a) is not None} - set(ABLATION_ARMS))
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


def training_dynamics(frame: pd.DataFrame, keys: Sequence[str] = DYNAMICS_KEYS, fmt: str | None = None,
                      confidence: float = 0.95) -> Table:
    """Marginal entropy and covariance penalty of the embedding after each epoch of continued
    pre-training, per method and arm (mean ± t-interval half-width over seeds)."""
    from e2mc import plots

    epochs = training_epochs(frame)
    parts = [summarize(epochs, ["method", "arm", "epoch"], key, confidence).assign(key=key) for key in keys]
    numbers = pd.concat(parts, ignore_index=True)
    header = ["Method", "Arm", "Epoch"] + [DYNAMICS_HEADERS.get(k, k.replace("_", " ")) for k in keys]
    printed = []
    for method in order_methods(numbers["method"]):
        of_method = numbers[numbers["method"] == method]
        for arm in order_arms(of_method["arm"], plots.ARM_ORDER):
            of_arm = of_method[of_method["arm"] == arm]
            for epoch in sorted(of_arm["epoch"].unique()):
                cells = of_arm[of_arm["epoch"] == epoch].set_index("key")
                printed.append([METHOD_LABELS.get(method, method), arm_label(arm), str(int(epoch))] +
                               [format_cell(cells.at[k, "mean"], cells.at[k, "ci"], fmt) for k in keys])
    caption = (f"Training dynamics: {', '.join(k.replace('_', ' ') for k in keys)} of the embedding after each "
               f"epoch of continued pre-training, mean ± {confidence:.0%} t-interval half-width over seeds; "
               "measured on training batches after the transform the arm trains with (the method's own for arms "
               "without E2MC), so an arm with the other transform is not on the same scale")
    return Table("training_dynamics", caption, header, printed, numbers)


def all_tables(frame: pd.DataFrame, metric: str = "top1") -> tuple[list[Table], list[str]]:
    """Every table the results support, and why each other one was left out.

    The main, ablation, alternative-criteria and training-dynamics tables, plus main tables for
    fine-tuning and transfer when there are such results. A table whose arms are not in ``frame``
    yet (a partly run grid) is skipped with the reason rather than failing the others.
    """
    makers = [lambda: main_results(frame, metric), lambda: ablations(frame, metric),
              lambda: alternative_criteria(frame, metric), lambda: training_dynamics(frame)]
    makers += [lambda kind=kind: main_results(frame, metric, kind=kind) for kind in ("finetune", "transfer")
               if (frame["kind"] == kind).any()]
    made, skipped = [], []
    for make in makers:
        try:
            made.append(make())
        except MissingResultsError as error:
            skipped.append(str(error))
    if not made:
        raise MissingResultsError("no table can be made: " + " / ".join(skipped))
    return made, skipped


# --- the README ---------------------------------------------------------------------------------

README_BLOCK = re.compile(r"(<!-- e2mc:table (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- e2mc:end -->)", re.S)


def sync_readme_tables(readme: str | Path, tables_dir: str | Path) -> list[str]:
    """Replace each block ``<!-- e2mc:table NAME -->`` ... ``<!-- e2mc:end -->`` of ``readme`` with
    ``tables_dir/NAME.md`` (the Markdown that :func:`write_table` wrote), so the numbers the README
    shows are the ones the notebooks computed. The file is rewritten atomically, and only when a block
    changed. Returns the names of the changed blocks; a block whose table does not exist is an error."""
    from e2mc.provenance import write_atomic

    readme, tables_dir = Path(readme), Path(tables_dir)
    text = readme.read_text()
    changed: list[str] = []

    def fill(match: re.Match) -> str:
        source = tables_dir / f"{match['name']}.md"
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

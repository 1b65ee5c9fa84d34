"""Experiments as data: each part of the mini reproduction is a YAML file under configs/experiments/.

A file names the methods (or a group of the registry, :data:`METHOD_GROUPS`), the arms with their config
overrides, seeds, epochs, probed label fractions and folders (docs/experiments.md). :func:`load_experiment`
checks one into a :class:`Part`, :func:`entries` expands it into (method, label, seed) entries,
:func:`entry_config` gives an entry's training configuration and :func:`pending` says, from the result
files, which entries are not done yet; :mod:`e2mc.reproduce` runs them."""
from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path

from e2mc import checkpoints
from e2mc.config import LABEL_FRACTIONS, Config, load_config, read_yaml
from e2mc.errors import UserError
from e2mc.methods import get_method, method_names
from e2mc.naming import ARMS, MAIN_ARMS, infer_arm, method_arm
from e2mc.provenance import REPO_ROOT
from e2mc.results import ConflictingResultError, existing_result, find_results
from e2mc.runfolder import run_folder

EXPERIMENTS = REPO_ROOT / "configs" / "experiments"
DATASET = "fashion_mnist"  # the mini reproduction's dataset (configs/mini/)
# Subfolders of a part's results folder that hold results of their own, which loading the folder
# leaves out (e2mc.results.load): the pre-training plateau, and the grid's variants (variants/<name>/).
PLATEAU_DIR, VARIANTS_DIR = "plateau", "variants"
TRAINED_MAIN_ARMS = tuple(a for a in MAIN_ARMS if a != "base")  # the base is not trained
# Groups of the method registry an experiment may name instead of a list: the methods stay in one place.
METHOD_GROUPS = {"all": lambda m: True, "paper": lambda m: get_method(m).in_paper,
                 "others": lambda m: not get_method(m).in_paper}
GROUP_KEYS = {"methods", "names", "custom", "seeds"}  # of a group of arms


@dataclasses.dataclass(frozen=True)
class Arm:
    """One way of continuing a method's training: a name and the config overrides that make it.

    ``variant`` names another grid axis (e.g. ``lr3x``: another learning rate) for arms whose results
    record the same arm name (:func:`infer_arm` names arms by their criterion only): such an arm's
    entry and run folder are ``<name>-<variant>`` and its results go to ``variants/<variant>/``."""

    method: str
    name: str
    overrides: tuple[str, ...]
    variant: str = ""
    seeds: tuple[int, ...] | None = None  # a short search runs some seeds only; None: every seed of the part

    @property
    def label(self) -> str:
        return f"{self.name}-{self.variant}" if self.variant else self.name


@dataclasses.dataclass(frozen=True)
class Part:
    """A part of the reproduction: which entries it runs and how each one is configured.

    An entry is (method, label, seed): label "base" evaluates the method's base checkpoint, "plateau"
    probes the kept epochs of its pre-training run, any other is an :class:`Arm` (its ``label``)
    continued from the base. Paths are relative to the directory the command runs in (the repository
    root), as ``train.init`` is part of the configuration hash."""

    name: str
    methods: tuple[str, ...]                     # bases evaluated, arms run
    grid: tuple[Arm, ...]                        # the arms, of its methods and optional methods
    seeds: tuple[int, ...]
    epochs: int                                  # of continued pre-training
    epoch_fractions: tuple[float, ...]           # probed after every epoch
    checkpoints: str                             # base checkpoints <method>.pt
    results: str
    runs: str
    pretrain_hint: str                           # the command that makes the bases
    all_fractions_at: tuple[int, ...] = ()       # epochs (besides the last) also probed with every fraction
    val_fraction: float | None = None            # eval.probe.val_fraction of every probe (top1_val_selected)
    pretrain_runs: str | None = None             # bases exported from <pretrain_runs>/<method>; None: committed
    optional_methods: tuple[str, ...] = ()       # also run when its base or <pretrain_runs>/<method> exists
    plateau_every: int | None = None             # probe every n-th kept pre-training epoch (1%, seed 0)
    transfer: tuple[tuple[str, str], ...] = ()   # (dataset, root) transfer probes (100% labels) of every model
    lr_factors: tuple[float, ...] = ()           # continued optim.base_lr x factor (1 is the main grid), seed 0
    lr_methods: tuple[str, ...] = ()
    fixed: tuple[tuple[str, str, int], ...] | None = None  # only these entries (quick)

    def probe_overrides(self) -> dict:
        return {} if self.val_fraction is None else {"val_fraction": self.val_fraction}

    def transfer_datasets(self) -> list[str]:  # as its transfer results name them (probes on pooled features)
        return [f"{name}-pooled" for name, _ in self.transfer]


# --- reading an experiment file -------------------------------------------------------------------

def _read_tree(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The file's keys over those of the experiment it ``extends`` (recursively)."""
    if path in chain:
        raise UserError(f"{path}: `extends` runs in a circle ({' -> '.join(p.stem for p in (*chain, path))}); "
                        "remove one of them")
    tree = read_yaml(path.read_text(), str(path))
    if not isinstance(tree, dict):
        raise UserError(f"{path} must hold a mapping of experiment keys (docs/experiments.md), got "
                        f"{type(tree).__name__}")
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    if not isinstance(parent, str) or not (path.parent / f"{parent}.yaml").is_file():
        raise UserError(f"{path}: extends {parent!r} names no experiment file beside it; use one of "
                        f"{', '.join(p.stem for p in path.parent.glob('*.yaml'))}")
    return {**_read_tree(path.parent / f"{parent}.yaml", (*chain, path)), **tree}


class _Checker:
    """One-line errors about one experiment file's values, each naming the key and what it must be."""

    def __init__(self, path: Path, tree: dict):
        self.path, self.tree = path, tree

    def fail(self, key: str, expected: str, value) -> None:
        raise UserError(f"{self.path}: {key} must be {expected}, got {value!r}")

    def value(self, key: str, ok, expected: str, default=None, required: bool = False):
        if key not in self.tree:
            if required:
                raise UserError(f"{self.path}: the key {key} is missing; give {expected}")
            return default
        value = self.tree[key]
        if not ok(value):
            self.fail(key, expected, value)
        return value

    def methods(self, key: str, value, default=None) -> tuple[str, ...]:
        """A method list or a group name of :data:`METHOD_GROUPS`, as registered method names."""
        if value is None:
            return default
        if isinstance(value, str) and value in METHOD_GROUPS:
            return tuple(m for m in method_names() if METHOD_GROUPS[value](m))
        if isinstance(value, list) and all(m in method_names() for m in value):
            return tuple(value)
        self.fail(key, f"{', '.join(METHOD_GROUPS)} or a list of registered methods ({', '.join(method_names())})",
                  value)


def _is_list(kind, ok=lambda v: True):
    return lambda value: isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool)
                                                          and ok(v) for v in value)


def _arms(check: _Checker, groups) -> tuple[Arm, ...]:
    """The arms of the ``arms`` groups, in order: each group, each of its methods, each arm."""
    if not isinstance(groups, list) or not groups:
        check.fail("arms", "a list of groups {methods, names | custom, seeds}", groups)
    arms = []
    for i, group in enumerate(groups):
        key = f"arms[{i}]"
        if not isinstance(group, dict) or "methods" not in group or not set(group) <= GROUP_KEYS:
            check.fail(key, "a mapping with methods and names (arms of e2mc.naming.ARMS) or custom "
                            "([{name, overrides}]), and optionally seeds", group)
        methods = check.methods(f"{key}.methods", group["methods"])
        seeds = group.get("seeds")
        if seeds is not None and not (_is_list(int, lambda s: s >= 0)(seeds) and seeds):
            check.fail(f"{key}.seeds", "a list of seeds (integers >= 0)", seeds)
        names = group.get("names", [])
        if not _is_list(str, lambda n: n in ARMS or n == "e2mc_other_transform")(names):
            check.fail(f"{key}.names", f"a list of arms of {', '.join(ARMS)} or e2mc_other_transform", names)
        custom = group.get("custom", [])
        if not isinstance(custom, list) or not all(
                isinstance(c, dict) and set(c) == {"name", "overrides"} and isinstance(c["name"], str)
                and _is_list(str)(c["overrides"]) for c in custom):
            check.fail(f"{key}.custom", "a list of {name: ARM, overrides: [KEY=VALUE, ...]}", custom)
        seeds = None if seeds is None else tuple(seeds)
        for method in methods:
            arms += [Arm(method, method_arm(n, method), ARMS[method_arm(n, method)], seeds=seeds) for n in names]
            arms += [Arm(method, c["name"], tuple(c["overrides"]), seeds=seeds) for c in custom]
    return tuple(arms)


KEYS = ("methods", "optional_methods", "arms", "seeds", "epochs", "epoch_fractions", "all_fractions_at",
        "val_fraction", "checkpoints", "results", "runs", "pretrain_runs", "pretrain_hint", "plateau_every",
        "transfer", "lr_methods", "lr_factors", "entries")


def load_experiment(name: str | Path) -> Part:
    """The experiment ``configs/experiments/<name>.yaml`` (or the YAML file ``name``), checked: a
    UserError of one line naming the file, the key and the fix otherwise."""
    path = Path(name) if str(name).endswith((".yaml", ".yml")) else EXPERIMENTS / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"no experiment {str(name)!r} ({path} does not exist); choose one of "
                        f"{', '.join(experiment_names())}")
    tree = _read_tree(path)
    for key in tree:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            raise UserError(f"{path}: unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else
                            f"; the keys are {', '.join(KEYS)} (docs/experiments.md)"))
    check = _Checker(path, tree)
    text = lambda v: isinstance(v, str) and v != ""  # noqa: E731
    count = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0  # noqa: E731
    fractions = "a list of label fractions of " + " ".join(f"{f:g}" for f in LABEL_FRACTIONS)
    entries = check.value("entries", lambda v: isinstance(v, list) and all(
        isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and isinstance(e[1], str)
        and isinstance(e[2], int) for e in v), "a list of [method, arm, seed]")
    transfer = check.value("transfer", lambda v: isinstance(v, dict) and all(map(text, (*v, *v.values()))),
                           "a mapping {dataset: root} of transfer probes", {})
    return Part(
        name=path.stem,
        methods=check.methods("methods", check.value("methods", lambda v: True, "the methods", required=True)),
        optional_methods=check.methods("optional_methods", tree.get("optional_methods"), ()),
        grid=_arms(check, check.value("arms", lambda v: True, "the arm groups", required=True)),
        seeds=tuple(check.value("seeds", lambda v: v and _is_list(int, lambda s: s >= 0)(v),
                                "a list of seeds (integers >= 0)", required=True)),
        epochs=check.value("epochs", count, "a number of epochs (an integer > 0)", required=True),
        epoch_fractions=tuple(float(f) for f in check.value(
            "epoch_fractions", lambda v: v and _is_list((int, float), lambda f: f in LABEL_FRACTIONS)(v),
            fractions, required=True)),
        all_fractions_at=tuple(check.value("all_fractions_at", _is_list(int, lambda e: e > 0),
                                           "a list of epochs (integers > 0)", [])),
        val_fraction=check.value("val_fraction", lambda v: v is None or (
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1), "null or a number in (0, 1)"),
        checkpoints=check.value("checkpoints", text, "a folder of base checkpoints", required=True),
        results=check.value("results", text, "a results folder", required=True),
        runs=check.value("runs", text, "a runs folder", required=True),
        pretrain_runs=check.value("pretrain_runs", lambda v: v is None or text(v), "null or a folder"),
        pretrain_hint=check.value("pretrain_hint", text, "the command that makes the bases", required=True),
        plateau_every=check.value("plateau_every", lambda v: v is None or (count(v) and "pretrain_runs" in tree),
                                  "null or an integer > 0 (with pretrain_runs)"),
        transfer=tuple(transfer.items()),
        lr_methods=check.methods("lr_methods", tree.get("lr_methods"), ()),
        lr_factors=tuple(check.value("lr_factors", _is_list((int, float), lambda f: f > 0),
                                     "a list of numbers > 0", [])),
        fixed=None if entries is None else tuple((m, a, s) for m, a, s in entries))


def experiment_names() -> tuple[str, ...]:
    """The experiments, ``configs/experiments/<name>.yaml`` (the choices of ``reproduce --part``)."""
    return tuple(sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")))


_PARTS: dict[str, Part] = {}


def parts() -> dict[str, Part]:
    """Every experiment by name, read and checked on first use (a broken file is then a one-line
    error of the command that needs it, not of every command)."""
    if not _PARTS:
        _PARTS.update({name: load_experiment(name) for name in experiment_names()})
    return _PARTS


def get_part(part: str | Part, checkpoints: str | Path | None = None,
             epoch_fractions: tuple[float, ...] | None = None, methods: tuple[str, ...] | None = None) -> Part:
    """``part`` (a name of :func:`experiment_names` or a Part) with the given settings replaced; ``methods``
    restricts it to some of its methods."""
    if isinstance(part, str):
        if part not in experiment_names():
            raise UserError(f"part must be one of {', '.join(experiment_names())}, got {part!r}")
        part = parts()[part]
    changes: dict = {}
    if checkpoints is not None:
        changes["checkpoints"] = str(checkpoints)
    if epoch_fractions is not None:
        changes["epoch_fractions"] = tuple(epoch_fractions)
    if methods:
        unknown = sorted(set(methods) - set(part.methods) - set(part.optional_methods))
        if unknown:
            raise UserError(f"the {part.name} part has no method {', '.join(unknown)}; it has "
                            + ", ".join(part.methods + part.optional_methods))
        changes["methods"] = tuple(m for m in part.methods + part.optional_methods if m in methods)
        changes["optional_methods"] = ()
        if part.fixed is not None:
            changes["fixed"] = tuple(e for e in part.fixed if e[0] in methods)
    return dataclasses.replace(part, **changes) if changes else part


def base_checkpoint(checkpoints: Path, method: str) -> Path:
    return Path(checkpoints) / f"{method}.pt"


def part_methods(part: Part) -> tuple[str, ...]:
    """The part's methods, with each optional one whose base checkpoint or pre-training run folder exists."""
    optional = tuple(m for m in part.optional_methods if base_checkpoint(Path(part.checkpoints), m).exists()
                     or (part.pretrain_runs and (Path(part.pretrain_runs) / m).is_dir()))
    return part.methods + optional


def config_path(method: str) -> Path:
    return REPO_ROOT / "configs" / "mini" / f"{method}.yaml"


def lr_variants(part: Part) -> list[Arm]:
    """The learning-rate check: the main arms of ``part.lr_methods`` with ``optim.base_lr`` of the
    method's mini config times each of ``part.lr_factors`` (variant ``lr<factor>x``)."""
    arms = []
    for method in part.lr_methods:
        base_lr = load_config(config_path(method)).optim.base_lr
        for factor in part.lr_factors:
            for arm in part.grid:
                if arm.method == method and arm.name in TRAINED_MAIN_ARMS:
                    arms.append(dataclasses.replace(arm, overrides=(*arm.overrides, f"optim.base_lr={base_lr * factor:.6g}"),
                                                    variant=f"lr{factor:g}x"))
    return arms


def part_arms(part: Part) -> list[Arm]:
    """Every arm ``part`` may run: those of its grid (of its methods), then its variants."""
    methods = part.methods + part.optional_methods
    return [a for a in part.grid if a.method in methods] + [a for a in lr_variants(part) if a.method in methods]


def find_arm(part: Part, method: str, label: str) -> Arm:
    arm = next((a for a in part_arms(part) if (a.method, a.label) == (method, label)), None)
    if arm is None:
        raise UserError(f"no arm {label!r} for {method}; the grid has "
                        + ", ".join(a.label for a in part_arms(part) if a.method == method))
    return arm


def arm_results_dir(results_dir: Path, arm: Arm) -> Path:
    """Where an arm's results go: the part's folder, or ``variants/<variant>/`` for a variant."""
    return Path(results_dir) / VARIANTS_DIR / arm.variant if arm.variant else Path(results_dir)


def entries(part: str | Part) -> list[tuple[str, str, int]]:
    """(method, label, seed) triples; label "base" stands for evaluating the base checkpoint,
    "plateau" for probing the pre-training run's kept epochs, any other for an arm (:attr:`Arm.label`)."""
    part = get_part(part)
    if part.fixed is not None:
        return list(part.fixed)
    methods = part_methods(part)
    # Most telling first, so that a partial run already fills the main table: the bases (and the
    # plateau: are they converged?), then original against E2MC (every seed), then the ablations and
    # alternative criteria one seed at a time, so that every row of their tables has a value before
    # any has its interval; then the variants (seed 0).
    arms = [a for a in part.grid if a.method in methods]
    main = [a for a in arms if a.name in TRAINED_MAIN_ARMS]
    rest = [a for a in arms if a not in main]
    return ([(m, "base", 0) for m in methods]
            + ([(m, "plateau", 0) for m in methods] if part.plateau_every else [])
            + [(a.method, a.label, s) for s in part.seeds for a in main]
            + [(a.method, a.label, s) for s in part.seeds for a in rest if a.seeds is None or s in a.seeds]
            + [(a.method, a.label, 0) for a in lr_variants(part) if a.method in methods])


# --- one entry ------------------------------------------------------------------------------------

def entry_config(arm: Arm, seed: int, results_dir: Path, runs_dir: Path, data_root: str | None = None,
                 checkpoints: Path | None = None, epoch_fractions: tuple[float, ...] | None = None,
                 part: str | Part = "full") -> Config:
    """The training configuration of (arm, seed) in ``part``: the method's mini config plus the arm's
    overrides, probing ``epoch_fractions`` (default the part's) of the labels after every epoch."""
    part = get_part(part, checkpoints, epoch_fractions)
    fractions = ",".join(f"{f:g}" for f in sorted(set(part.epoch_fractions)))  # one configuration however listed
    overrides = [*arm.overrides, f"train.seed={seed}", f"train.epochs={part.epochs}",
                 f"train.init={base_checkpoint(Path(part.checkpoints), arm.method)}",
                 f"train.output_dir={run_folder(runs_dir, arm.method, arm.label, seed)}",
                 "eval.every_epoch=true", f"eval.label_fractions=[{fractions}]", f"eval.seeds=[{seed}]",
                 f"eval.results_dir={arm_results_dir(results_dir, arm) / 'linear_probe'}"]
    if part.val_fraction is not None:
        overrides.append(f"eval.probe.val_fraction={part.val_fraction:g}")
    if data_root:
        overrides.append(f"data.root={data_root}")
    cfg = load_config(config_path(arm.method), overrides)
    configured = infer_arm(cfg.to_dict())
    if configured != arm.name:  # result files name the arm from the config itself
        raise UserError(f"arm {arm.name} of {arm.method} in the {part.name} experiment configures {configured}; "
                        f"name it {configured} in configs/experiments/{part.name}.yaml")
    return cfg


def finished_entry(results_dir: Path, cfg: Config, arm: str) -> Path | None:
    """The training result that marks this entry done (see :func:`e2mc.results.existing_result`);
    None when there is none. Raises ValueError when the folder holds this entry trained with another
    configuration, rather than skip it or mix the two in one table."""
    try:
        return existing_result(results_dir / "training", "training", cfg.method, arm, cfg.data.dataset,
                               cfg.train.epochs, None, cfg.train.seed, cfg.hash())
    except ConflictingResultError as error:
        raise ConflictingResultError(f"{error}. {config_path(cfg.method)} gives the configuration this grid "
                                     "runs now") from None


def base_done(part: Part, method: str, results_dir: Path) -> bool:
    """Whether ``results_dir`` holds every result :func:`e2mc.reproduce.evaluate_base` writes."""
    def found(kind: str, dataset: str, fraction: float | None, seed: int) -> bool:
        return bool(find_results(results_dir / kind, kind, method, "base", dataset, 0, fraction, seed))

    return (found("diagnostics", DATASET, None, 0)
            and all(found("linear_probe", DATASET, f, s) for f in LABEL_FRACTIONS for s in part.seeds)
            and all(found("transfer", name, 1.0, s) for name in part.transfer_datasets() for s in part.seeds))


# --- the pre-training plateau -----------------------------------------------------------------------

def plateau_epochs(part: Part, method: str) -> list[int]:
    """The kept pre-training epochs the plateau probes: 0, every ``plateau_every``-th, and the last.
    Raises FileNotFoundError naming the pretrain command when the run is missing or unfinished."""
    run_dir = Path(part.pretrain_runs) / method
    resume = run_dir / "checkpoint.pt"
    if not resume.exists():
        raise FileNotFoundError(f"{run_dir} holds no pre-training run; run `{part.pretrain_hint}`")
    state = checkpoints.load(resume)
    total = state["config"]["train"]["epochs"]
    if state["epoch"] != total or state["step"] != 0:
        raise FileNotFoundError(f"{run_dir} stopped at epoch {state['epoch']} of {total}; finish it with "
                                f"`{part.pretrain_hint}`")
    return sorted({*range(0, total + 1, part.plateau_every), total})


def plateau_results(method: str, results_dir: Path, epoch: int | str = "*") -> list[Path]:
    """The plateau probes of ``method`` at pre-training ``epoch`` ("*": any) in ``results_dir``."""
    return find_results(results_dir / PLATEAU_DIR / "linear_probe", "linear_probe", method, "base", DATASET,
                        epoch, 0.01, 0)


def committed_plateau(part: Part, method: str, results_dir: Path) -> bool:
    """Whether the plateau sweep of ``method`` was made elsewhere: a fresh clone has the committed
    probes but not the pre-training run they came from. True when that run is not here and
    ``results_dir`` holds every epoch :func:`plateau_epochs` would ask for, counted from the run's
    length the probes record."""
    files = plateau_results(method, results_dir)
    if (Path(part.pretrain_runs) / method).exists() or not files:
        return False
    total = json.loads(files[0].read_text())["config"]["train"]["epochs"]
    found = {json.loads(f.read_text())["epoch"] for f in files}
    return found >= {*range(0, total + 1, part.plateau_every), total}


def plateau_done(part: Part, method: str, results_dir: Path) -> bool:
    try:
        wanted = plateau_epochs(part, method)
    except FileNotFoundError:
        return committed_plateau(part, method, results_dir)
    return all(plateau_results(method, results_dir, e) for e in wanted)


def pending(part: str | Part, results_dir: Path, runs_dir: Path, checkpoints: Path | None = None,
            epoch_fractions: tuple[float, ...] | None = None) -> list[tuple[str, str, int]]:
    """The entries of ``part`` whose results are not in ``results_dir`` yet (what a run would do)."""
    part = get_part(part, checkpoints, epoch_fractions)
    todo = []
    for method, label, seed in entries(part):
        if label == "base":
            done = base_done(part, method, results_dir)
        elif label == "plateau":
            done = plateau_done(part, method, results_dir)
        else:
            arm = find_arm(part, method, label)
            cfg = entry_config(arm, seed, results_dir, runs_dir, None, part=part)
            done = finished_entry(arm_results_dir(results_dir, arm), cfg, arm.name) is not None
        if not done:
            todo.append((method, label, seed))
    return todo

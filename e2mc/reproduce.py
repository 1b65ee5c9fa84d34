"""The mini reproduction: the paper's experiment grid on Fashion-MNIST, end to end.

    python -m e2mc reproduce [--part quick|full|converged] [--jobs 2]

A :class:`Part` says what one part of the reproduction runs. ``quick`` and ``full`` (:data:`PARTS`):
for every (method, arm, seed) of :data:`GRID` it continues the committed base checkpoint
(``results/mini/checkpoints/<method>.pt``) for ten epochs, probes the backbone with 1% of the labels
after every epoch (Fig. 6; ``--epoch-fractions 0.01 0.1 1`` probes every fraction after every epoch),
with 1%, 10% and 100% after the last, records embedding diagnostics before
and after (Fig. 2c/d) and the training dynamics, all as result files under ``results/mini/``.
``converged`` (issue 15) does the same from the 100-epoch bases of ``make pretrain-mini-converged``
(exported to ``results/mini-converged/checkpoints/`` on first use), for 20 epochs with validation-
selected probes, plus the pre-training plateau (``plateau/``), a learning-rate check (``variants/``)
and the digits transfer probe; see :data:`CONVERGED` and docs/converged.md.
An entry whose results already exist is skipped, so an interrupted reproduction resumes where it
stopped (its training runs resume from their checkpoints too).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from e2mc import checkpoints
from e2mc.config import LABEL_FRACTIONS, Config, config_from_dict, load_config
from e2mc.criteria import criterion_record
from e2mc.errors import UserError, check_writable_folder
from e2mc.evaluation.cli import positive_int
from e2mc.evaluation.runner import (EvaluationPlan, diagnose_checkpoint, evaluate_checkpoint,
                                    make_epoch_probe_hook, plan_from_config, sweep)
from e2mc.methods import get_method, method_names
from e2mc.naming import ARMS, MAIN_ARMS, infer_arm
from e2mc.provenance import REPO_ROOT, provenance, require_clean_tree, utc_now, write_json_atomic
from e2mc.results import ConflictingResultError, existing_result, result_filename, write_result
from e2mc.runfolder import read_metrics, run_folder
from e2mc.runs import run_training

SEEDS = (0, 1, 2)
EPOCHS = 10
EPOCH_FRACTIONS = (0.01,)  # probed after every epoch; the rest of LABEL_FRACTIONS after the last only
DIAGNOSTIC_IMAGES = 2048  # fixed test images whose embeddings Fig. 2c/d plots before and after
# Subfolders of a part's results folder that hold results of their own, which loading the folder
# leaves out (e2mc.results.load): the pre-training plateau, and the grid's variants (variants/<name>/).
PLATEAU_DIR, VARIANTS_DIR = "plateau", "variants"


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
    seeds: tuple[int, ...] | None = None  # a short search runs seed 0 only; None: every seed of the part

    @property
    def label(self) -> str:
        return f"{self.name}-{self.variant}" if self.variant else self.name


def _arms() -> list[Arm]:
    other_transform = {"sigmoid": "gaussian_cdf", "gaussian_cdf": "sigmoid"}
    # original loss against E2MC for every method, also those the paper did not try
    names = [(method, name) for method in method_names() for name in ("original", "e2mc")]
    # the paper's ablations, on its methods (are both terms needed? does the transform matter?)
    names += [(method, name) for method in method_names() if get_method(method).in_paper
              for name in ("entropy_only", "covariance_only", f"e2mc_{other_transform[get_method(method).transform]}")]
    names += [("swav", name) for name in ("uniformity", "mmcr", "vc")]  # alternatives, on SwAV as in the paper
    arms = [Arm(method, name, ARMS[name]) for method, name in names]
    # SimSiam's covariance weight: the paper's 25 costs the mini model its accuracy; is a smaller one better?
    arms += [Arm("simsiam", f"e2mc_cov{cov:g}", ("criterion.name=e2mc", f"criterion.cov_coeff={cov:g}"))
             for cov in SIMSIAM_COV_COEFFS]
    # Barlow Twins (not in the paper) takes VICReg's setting; a short search, seed 0, checks lambda_ent.
    arms += [Arm("barlowtwins", f"e2mc_ent{ent:g}", ("criterion.name=e2mc", f"criterion.ent_coeff={ent:g}"), seeds=(0,))
             for ent in BARLOWTWINS_ENT_SEARCH]
    return arms


SIMSIAM_COV_COEFFS = (1.0, 5.0)  # beside the paper's 25 (the e2mc arm) and 0 (entropy_only)
BARLOWTWINS_ENT_SEARCH = (1.0, 50.0)  # beside VICReg's 10 (the e2mc arm)
GRID: list[Arm] = _arms()
TRAINED_MAIN_ARMS = tuple(a for a in MAIN_ARMS if a != "base")  # the base is not trained
# The part of the grid `make reproduce` re-runs (about 15 minutes on 2 CPU cores); the committed
# results of the full grid fill in the rest of the figures and tables.
QUICK: list[tuple[str, str, int]] = [("vicreg", "original", 0), ("vicreg", "e2mc", 0)]


# The committed base checkpoints (the stand-ins for the official releases).
CHECKPOINTS = REPO_ROOT / "results" / "mini" / "checkpoints"


@dataclasses.dataclass(frozen=True)
class Part:
    """A part of the reproduction: which entries it runs and how each one is configured.

    An entry is (method, label, seed): label "base" evaluates the method's base checkpoint, "plateau"
    probes the kept epochs of its pre-training run, any other is an :class:`Arm` (its ``label``)
    continued from the base. Paths are relative to the directory the command runs in (the repository
    root), as ``train.init`` is part of the configuration hash."""

    name: str
    methods: tuple[str, ...]                     # bases evaluated, arms run
    arms: tuple[str, ...] | None = None          # names of the GRID arms run at every seed; None: all
    seeds: tuple[int, ...] = SEEDS
    epochs: int = EPOCHS                         # of continued pre-training
    epoch_fractions: tuple[float, ...] = EPOCH_FRACTIONS  # probed after every epoch
    all_fractions_at: tuple[int, ...] = ()       # epochs (besides the last) also probed with every fraction
    val_fraction: float | None = None            # eval.probe.val_fraction of every probe (top1_val_selected)
    checkpoints: str = "results/mini/checkpoints"  # base checkpoints <method>.pt
    results: str = "results/mini"
    runs: str = "runs/mini"
    pretrain_runs: str | None = None             # bases exported from <pretrain_runs>/<method>; None: committed
    optional_methods: tuple[str, ...] = ()       # also run when its base or <pretrain_runs>/<method> exists
    pretrain_hint: str = "make pretrain-mini"    # the command that makes the bases
    plateau_every: int | None = None             # probe every n-th kept pre-training epoch (1%, seed 0)
    transfer: tuple[tuple[str, str], ...] = ()   # (dataset, root) transfer probes (100% labels) of every model
    lr_factors: tuple[float, ...] = ()           # continued optim.base_lr x factor (1 is the main grid), seed 0
    lr_methods: tuple[str, ...] = ()
    fixed: tuple[tuple[str, str, int], ...] | None = None  # only these entries (quick)

    def probe_overrides(self) -> dict:
        return {} if self.val_fraction is None else {"val_fraction": self.val_fraction}


# The paper's methods must have their bases; any other registered method (Barlow Twins, one you add) joins
# the full grid once its base checkpoint exists (`make pretrain-mini METHODS=<name>` makes it).
_FULL = Part("full", tuple(m for m in method_names() if get_method(m).in_paper),
             optional_methods=tuple(m for m in method_names() if not get_method(m).in_paper))
CONVERGED = Part(
    "converged", ("vicreg", "swav"), arms=TRAINED_MAIN_ARMS, epochs=20, all_fractions_at=(10,), val_fraction=0.1,
    checkpoints="results/mini-converged/checkpoints", results="results/mini-converged", runs="runs/mini-converged",
    pretrain_runs="runs/mini-converged/pretrain", optional_methods=("simsiam",),
    pretrain_hint="make pretrain-mini-converged", plateau_every=5, transfer=(("digits", "bundled"),),
    lr_factors=(0.3, 3.0), lr_methods=("vicreg",))
# The pre-registered study (docs/preregistration.md, e2mc.preregistration): the converged SwAV base,
# original loss, E2MC and the MMCR positive control, seeds 0-7, otherwise the converged part's settings
# (so its seeds 0-2 of original and E2MC are the same entries and are not run again).
PREREGISTERED = dataclasses.replace(
    CONVERGED, name="preregistered", methods=("swav",), arms=("original", "e2mc", "mmcr"), seeds=tuple(range(8)),
    optional_methods=(), plateau_every=None, lr_factors=(), lr_methods=())
PARTS: dict[str, Part] = {"quick": dataclasses.replace(_FULL, name="quick", fixed=tuple(QUICK)), "full": _FULL,
                          "converged": CONVERGED, "preregistered": PREREGISTERED}


def get_part(part: str | Part, checkpoints: str | Path | None = None,
             epoch_fractions: tuple[float, ...] | None = None, methods: tuple[str, ...] | None = None) -> Part:
    """``part`` (a name of :data:`PARTS` or a Part) with the given settings replaced; ``methods``
    restricts it to some of its methods."""
    if isinstance(part, str):
        if part not in PARTS:
            raise UserError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
        part = PARTS[part]
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


def part_methods(part: Part) -> tuple[str, ...]:
    """The part's methods, with each optional one whose base checkpoint or pre-training run folder exists."""
    optional = tuple(m for m in part.optional_methods if base_checkpoint(Path(part.checkpoints), m).exists()
                     or (part.pretrain_runs and (Path(part.pretrain_runs) / m).is_dir()))
    return part.methods + optional


def lr_variants(part: Part) -> list[Arm]:
    """The learning-rate check: the main arms of ``part.lr_methods`` with ``optim.base_lr`` of the
    method's mini config times each of ``part.lr_factors`` (variant ``lr<factor>x``)."""
    arms = []
    for method in part.lr_methods:
        base_lr = load_config(_config_path(method)).optim.base_lr
        for factor in part.lr_factors:
            for arm in GRID:
                if arm.method == method and arm.name in TRAINED_MAIN_ARMS:
                    arms.append(dataclasses.replace(arm, overrides=(*arm.overrides, f"optim.base_lr={base_lr * factor:.6g}"),
                                                    variant=f"lr{factor:g}x"))
    return arms


def part_arms(part: Part) -> list[Arm]:
    """Every arm ``part`` may run: those of GRID (its methods and arms), then its variants."""
    methods = part.methods + part.optional_methods
    main = [a for a in GRID if a.method in methods and (part.arms is None or a.name in part.arms)]
    return main + [a for a in lr_variants(part) if a.method in methods]


def find_arm(part: Part, method: str, label: str) -> Arm:
    arm = next((a for a in part_arms(part) if (a.method, a.label) == (method, label)), None)
    if arm is None:
        raise UserError(f"no arm {label!r} for {method}; the grid has "
                         + ", ".join(a.label for a in part_arms(part) if a.method == method))
    return arm


def arm_results_dir(results_dir: Path, arm: Arm) -> Path:
    """Where an arm's results go: the part's folder, or ``variants/<variant>/`` for a variant."""
    return Path(results_dir) / VARIANTS_DIR / arm.variant if arm.variant else Path(results_dir)


def base_checkpoint(checkpoints: Path, method: str) -> Path:
    return Path(checkpoints) / f"{method}.pt"


DATASET_NAMES = {"fashion_mnist": "Fashion-MNIST", "imagenet": "ImageNet"}


def export_base_checkpoint(run_dir: Path, destination: Path, force: bool = False) -> Path:
    """Copy the model of a finished pre-training run to ``destination`` (weights only, no optimizer)
    and write its provenance next to it as ``<name>.json``.

    An existing ``destination`` is replaced only with ``force``. Everything is read and checked before
    anything is written, and a failure to write the provenance removes the new ``.pt``: a base never
    exists without the record of where it came from."""
    run_dir, destination = Path(run_dir), Path(destination)
    record_path = destination.with_suffix(".json")
    if not force and (destination.exists() or record_path.exists()):
        raise UserError(f"{destination if destination.exists() else record_path} exists; pass --force to "
                        "replace it (committed bases are results: export elsewhere to compare)")
    if destination.suffix != ".pt":
        raise UserError(f"the destination must be a .pt file (its provenance goes beside it as .json), "
                        f"got {destination}")
    source = run_dir / "checkpoint.pt"
    state = checkpoints.load_training(source)
    epochs = state["config"]["train"]["epochs"]
    if state["epoch"] != epochs or state.get("step") != 0:
        raise UserError(f"{run_dir} stopped at epoch {state['epoch']} of {epochs}; finish it "
                        "(rerun the same pretrain command) before exporting")
    try:
        records = read_metrics(run_dir)
        segments = [r for r in records if r["kind"] == "segment"]
        seconds = sum(r["seconds"] for r in records if r["kind"] == "epoch")
    except (ValueError, KeyError, TypeError) as e:  # a truncated or hand-edited line
        raise UserError(f"{run_dir / 'metrics.jsonl'} cannot be read ({type(e).__name__}: {e}); the provenance "
                        "of the export comes from it: repair it or export another run") from None
    init = state["config"]["train"].get("init")
    origin = f"continued from {init}" if init else "pre-trained from scratch"
    record = {
        "what": f"mini {state['method']} base checkpoint: {origin} on "
                f"{DATASET_NAMES.get(state['config']['data']['dataset'], state['config']['data']['dataset'])}",
        "init": init, "epochs": state["epoch"], "config": state["config"], "training_segments": segments,
        "training_seconds": seconds, "export_provenance": provenance(),
    }
    check_writable_folder(destination.parent, "destination folder")
    checkpoints.export_slim(state, destination)
    try:
        write_json_atomic(record_path, record)
    except BaseException:
        destination.unlink(missing_ok=True)
        raise
    return destination


def ensure_bases(part: Part) -> None:
    """Check that every base checkpoint of ``part`` is there; a part whose bases come from its own
    pre-training runs exports each missing one (with its provenance) from its finished run. Raises
    FileNotFoundError naming every missing base and the command that makes it."""
    problems = []
    for method in part_methods(part):
        path = base_checkpoint(Path(part.checkpoints), method)
        if path.exists():
            continue
        if part.pretrain_runs is None:
            problems.append(f"{path} is missing: it is committed with the repository; re-create it with "
                            f"`{part.pretrain_hint}`")
            continue
        run_dir = Path(part.pretrain_runs) / method
        if not (run_dir / "checkpoint.pt").exists():
            problems.append(f"{path} is missing and {run_dir} holds no pre-training run; run `{part.pretrain_hint}`")
            continue
        try:
            export_base_checkpoint(run_dir, path)
            print(f"[reproduce] exported the base {path} from {run_dir}", flush=True)
        except (ValueError, checkpoints.CheckpointError) as error:
            problems.append(f"{path} is missing: {error} (`{part.pretrain_hint}` resumes it)")
    if problems:
        raise FileNotFoundError(f"the {part.name} part cannot run yet: " + "; ".join(problems))


# --- one entry of the grid ----------------------------------------------------------------------

def _config_path(method: str) -> Path:
    return REPO_ROOT / "configs" / "mini" / f"{method}.yaml"


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
    cfg = load_config(_config_path(arm.method), overrides)
    if infer_arm(cfg.to_dict()) != arm.name:  # result files name the arm from the config itself
        raise AssertionError(f"arm {arm.name} of {arm.method} configures {infer_arm(cfg.to_dict())}")
    return cfg


def training_result_path(results_dir: Path, cfg: Config, arm: str) -> Path:
    return results_dir / "training" / result_filename("training", cfg.method, arm, cfg.data.dataset, cfg.train.epochs,
                                                      None, cfg.train.seed, cfg.hash())


def finished_entry(results_dir: Path, cfg: Config, arm: str) -> Path | None:
    """The training result that marks this entry done (see :func:`e2mc.results.existing_result`);
    None when there is none. Raises ValueError when the folder holds this entry trained with another
    configuration, rather than skip it or mix the two in one table."""
    try:
        return existing_result(results_dir / "training", "training", cfg.method, arm, cfg.data.dataset,
                               cfg.train.epochs, None, cfg.train.seed, cfg.hash())
    except ConflictingResultError as error:
        raise ConflictingResultError(f"{error}. {_config_path(cfg.method)} gives the configuration this grid "
                                     "runs now") from None


def _check_run_folder(cfg: Config) -> None:
    """Refuse to resume a run folder that holds a run of another configuration: train() would take up
    its checkpoint (it checks only method, model and optimizer), and a finished run would not train
    again, so per-epoch probes of this configuration would silently be missing."""
    resume = Path(cfg.train.output_dir) / "checkpoint.pt"
    if not resume.exists():
        return
    recorded = config_from_dict(checkpoints.load(resume)["config"])
    if recorded.hash() != cfg.hash():
        raise UserError(
            f"{resume} holds a run of another configuration (hash {recorded.hash()}, not {cfg.hash()}); "
            "pass another --runs folder for this configuration, or move that run away to train it again")


# Data-loading workers of the transfer probes: the mini transfer sets are small (the bundled digits:
# 1,797 images of 8 x 8), which the evaluating process reads faster than worker processes start.
TRANSFER_WORKERS = 0


def _transfer_plan(part: Part, seeds: tuple[int, ...]) -> EvaluationPlan:
    """The transfer probes of ``part`` (every label, on cached pooled features: the mini default)."""
    return EvaluationPlan(("transfer",), (1.0,), seeds, probe_overrides=part.probe_overrides(),
                          transfer=part.transfer)


def run_entry(arm: Arm, seed: int, results_dir: Path, runs_dir: Path, data_root: str | None = None,
              checkpoints: Path | None = None, epoch_fractions: tuple[float, ...] | None = None,
              part: str | Part = "full") -> str:
    """Continue the base checkpoint along ``arm`` with ``seed`` and write every result of that run.

    Per epoch: probes with the part's ``epoch_fractions`` of the labels (in training, through the
    epoch hook), and with the rest of :data:`LABEL_FRACTIONS` after its ``all_fractions_at`` epochs.
    After the last epoch: probes with the rest of :data:`LABEL_FRACTIONS`, the part's transfer probes,
    for seed 0 embedding diagnostics, and last the training dynamics (kind=training: the marker of a
    finished entry). Returns "done", "skipped" (results already there) or "interrupted".
    """
    part = get_part(part, checkpoints, epoch_fractions)
    cfg = entry_config(arm, seed, results_dir, runs_dir, data_root, part=part)
    results_dir = arm_results_dir(results_dir, arm)
    if finished_entry(results_dir, cfg, arm.name) is not None:
        return "skipped"
    _check_run_folder(cfg)
    done_marker = training_result_path(results_dir, cfg, arm.name)
    started = utc_now()
    last_only = tuple(f for f in LABEL_FRACTIONS if f not in part.epoch_fractions)
    # the probes' settings are the configuration's (eval.probe: the part's val_fraction)
    rest = (dataclasses.replace(plan_from_config(cfg.eval, cfg.data.dataset), label_fractions=last_only)
            if last_only else None)
    between = [e for e in part.all_fractions_at if 0 < e < part.epochs]
    hooks = [make_epoch_probe_hook(cfg, rest, epochs=between)] if last_only and between else []
    summary = run_training(cfg, hooks)  # eval.every_epoch: the probes after every epoch
    if summary["status"] != "finished":
        return "interrupted"
    final = Path(cfg.train.output_dir) / "checkpoint.pt"
    if last_only:
        evaluate_checkpoint(final, results_dir / "linear_probe", rest, arm=arm.name, epoch=part.epochs,
                            data_root=data_root, skip_existing=True)
    if part.transfer:
        evaluate_checkpoint(final, results_dir / "transfer", _transfer_plan(part, (seed,)), arm=arm.name,
                            epoch=part.epochs, skip_existing=True, workers=TRANSFER_WORKERS)
    if seed == 0 and not any((results_dir / "diagnostics").glob(
            result_filename("diagnostics", cfg.method, arm.name, cfg.data.dataset, part.epochs, None, seed, "*"))):
        diagnose_checkpoint(final, results_dir / "diagnostics", arm=arm.name, epoch=part.epochs, data_root=data_root,
                            n_images=DIAGNOSTIC_IMAGES)
    missing = [f"epoch {e} at {f:g}" for e in range(part.epochs + 1) for f in sorted(set(part.epoch_fractions))
               if existing_result(results_dir / "linear_probe", "linear_probe", cfg.method, arm.name,
                                  cfg.data.dataset, e, f, seed, cfg.hash()) is None]
    if missing:  # not done: a table would draw the gap
        raise RuntimeError(f"{arm.method}/{arm.label} seed {seed} trained, but its per-epoch probes are missing "
                           f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); move "
                           f"{cfg.train.output_dir} away and run the command again to train and probe it anew")
    records = read_metrics(Path(cfg.train.output_dir))
    epochs = [r for r in records if r["kind"] == "epoch"]
    last = epochs[-1]
    write_result(done_marker, kind="training", method=cfg.method, arm=arm.name,
                 criterion=criterion_record(cfg.to_dict()), epoch=cfg.train.epochs, label_fraction=None, seed=seed,
                 dataset=cfg.data.dataset,
                 metrics={k: last[k] for k in ("loss", "marginal_entropy", "covariance_penalty", "embedding_std")},
                 extra={"epochs": epochs, "run_seconds": summary["seconds"],
                        "segments": [r for r in records if r["kind"] == "segment"],
                        **({"variant": arm.variant} if arm.variant else {})},
                 config=cfg, checkpoint=str(final),
                 started=started)
    return "done"


def _base_probe_plan(part: Part) -> EvaluationPlan:
    return EvaluationPlan(("linear_probe",), LABEL_FRACTIONS, part.seeds, probe_overrides=part.probe_overrides())


def evaluate_base(method: str, results_dir: Path, data_root: str | None = None,
                  checkpoints: Path | None = None, part: str | Part = "full") -> str:
    """Probes (1%, 10%, 100%, every seed of the part), diagnostics and the part's transfer probes of a
    method's base checkpoint (arm "base", epoch 0)."""
    part = get_part(part, checkpoints)
    checkpoint = base_checkpoint(Path(part.checkpoints), method)
    evaluate_checkpoint(checkpoint, results_dir / "linear_probe", _base_probe_plan(part), arm="base", epoch=0,
                        data_root=data_root, skip_existing=True)
    if part.transfer:
        evaluate_checkpoint(checkpoint, results_dir / "transfer", _transfer_plan(part, part.seeds), arm="base",
                            epoch=0, skip_existing=True, workers=TRANSFER_WORKERS)
    diagnostics = results_dir / "diagnostics"
    if not any(diagnostics.glob(f"diagnostics_{method}_base_*")):
        diagnose_checkpoint(checkpoint, diagnostics, arm="base", epoch=0, data_root=data_root,
                            n_images=DIAGNOSTIC_IMAGES)
    return "done"


# --- the pre-training plateau --------------------------------------------------------------------

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


def _plateau_plan(part: Part) -> EvaluationPlan:
    return EvaluationPlan(("linear_probe",), (0.01,), (0,), probe_overrides=part.probe_overrides())


def plateau_pattern(method: str, epoch: int | str) -> str:
    """The glob of ``method``'s plateau probe at pre-training ``epoch`` ("*": any epoch)."""
    return result_filename("linear_probe", method, "base", "fashion_mnist", epoch, 0.01, 0, "*")


def committed_plateau(part: Part, method: str, results_dir: Path) -> bool:
    """Whether the plateau sweep of ``method`` was made elsewhere: a fresh clone has the committed
    probes but not the pre-training run they came from. True when that run is not here and
    ``results_dir`` holds every epoch :func:`plateau_epochs` would ask for, counted from the run's
    length the probes record."""
    if (Path(part.pretrain_runs) / method).exists():
        return False
    files = sorted((results_dir / PLATEAU_DIR / "linear_probe").glob(plateau_pattern(method, "*")))
    if not files:
        return False
    total = json.loads(files[0].read_text())["config"]["train"]["epochs"]
    found = {json.loads(f.read_text())["epoch"] for f in files}
    return found >= {*range(0, total + 1, part.plateau_every), total}


def evaluate_plateau(method: str, results_dir: Path, data_root: str | None = None, part: str | Part = "converged"
                     ) -> str:
    """Probe every ``plateau_every``-th kept epoch of the method's pre-training run (1% of the labels,
    seed 0) into ``<results>/plateau/linear_probe`` (arm "base", epoch = pre-training epoch). Returns
    "skipped" when the sweep was made elsewhere (:func:`committed_plateau`)."""
    part = get_part(part)
    if committed_plateau(part, method, results_dir):
        return "skipped"
    sweep(Path(part.pretrain_runs) / method, results_dir / PLATEAU_DIR / "linear_probe", _plateau_plan(part),
          data_root=data_root, epochs=plateau_epochs(part, method), skip_existing=True)
    return "done"


# --- the grid ----------------------------------------------------------------------------------

def entries(part: str | Part) -> list[tuple[str, str, int]]:
    """(method, label, seed) triples; label "base" stands for evaluating the base checkpoint,
    "plateau" for probing the pre-training run's kept epochs, any other for an arm (:attr:`Arm.label`)."""
    try:
        part = get_part(part)
    except ValueError:
        raise UserError(f"part must be one of {', '.join(PARTS)} (quick or full for the paper's grid), "
                         f"got {part!r}") from None
    if part.fixed is not None:
        return list(part.fixed)
    methods = part_methods(part)
    # Most telling first, so that a partial run already fills the main table: the bases (and the
    # plateau: are they converged?), then original against E2MC (every seed), then the ablations and
    # alternative criteria one seed at a time, so that every row of their tables has a value before
    # any has its interval; then the variants (seed 0).
    arms = [a for a in GRID if a.method in methods and (part.arms is None or a.name in part.arms)]
    main = [a for a in arms if a.name in TRAINED_MAIN_ARMS]
    rest = [a for a in arms if a not in main]
    return ([(m, "base", 0) for m in methods]
            + ([(m, "plateau", 0) for m in methods] if part.plateau_every else [])
            + [(a.method, a.label, s) for s in part.seeds for a in main]
            + [(a.method, a.label, s) for s in part.seeds for a in rest if a.seeds is None or s in a.seeds]
            + [(a.method, a.label, 0) for a in lr_variants(part) if a.method in methods])


def pending(part: str | Part, results_dir: Path, runs_dir: Path, checkpoints: Path | None = None,
            epoch_fractions: tuple[float, ...] | None = None) -> list[tuple[str, str, int]]:
    """The entries of ``part`` whose results are not in ``results_dir`` yet (what a run would do)."""
    part = get_part(part, checkpoints, epoch_fractions)
    todo = []
    for method, label, seed in entries(part):
        if label == "base":
            probes = [result_filename("linear_probe", method, "base", "fashion_mnist", 0, f, s, "*")
                      for f in LABEL_FRACTIONS for s in part.seeds]
            transfers = [result_filename("transfer", method, "base", f"{name}-pooled", 0, 1.0, s, "*")
                         for name, _ in part.transfer for s in part.seeds]
            done = (any((results_dir / "diagnostics").glob(f"diagnostics_{method}_base_*"))
                    and all(any((results_dir / "linear_probe").glob(p)) for p in probes)
                    and all(any((results_dir / "transfer").glob(p)) for p in transfers))
        elif label == "plateau":
            try:
                wanted = plateau_epochs(part, method)
            except FileNotFoundError:
                wanted = None
            if wanted is None:
                done = committed_plateau(part, method, results_dir)
            else:
                done = all(any((results_dir / PLATEAU_DIR / "linear_probe").glob(plateau_pattern(method, e)))
                           for e in wanted)
        else:
            arm = find_arm(part, method, label)
            cfg = entry_config(arm, seed, results_dir, runs_dir, None, part=part)
            done = finished_entry(arm_results_dir(results_dir, arm), cfg, arm.name) is not None
        if not done:
            todo.append((method, label, seed))
    return todo


def run_one(method: str, arm_name: str, seed: int, results_dir: Path, runs_dir: Path,
            data_root: str | None = None, checkpoints: Path | None = None,
            epoch_fractions: tuple[float, ...] | None = None, part: str | Part = "full") -> str:
    part = get_part(part, checkpoints, epoch_fractions)
    if arm_name == "base":
        return evaluate_base(method, results_dir, data_root, part=part)
    if arm_name == "plateau":
        if not part.plateau_every:
            raise UserError(f"the {part.name} part has no plateau sweep")
        return evaluate_plateau(method, results_dir, data_root, part)
    return run_entry(find_arm(part, method, arm_name), seed, results_dir, runs_dir, data_root, part=part)


def run_logged(command: list[str], log_path: Path, tag: str, env: dict[str, str] | None = None) -> int:
    """Run ``command``, appending all its output to ``log_path`` and echoing its progress lines (those
    starting with ``[e2mc]``: epochs, probes, diagnostics) to the console as ``[tag] ...``, so a long
    reproduction shows where each entry is. Returns the exit code."""
    with open(log_path, "a") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                   bufsize=1)
        for line in process.stdout:
            log.write(line)
            log.flush()
            if line.startswith("[e2mc]"):
                print(f"[{tag}] {line[len('[e2mc]'):].strip()}", flush=True)
        return process.wait()


def reproduce(part: str | Part, results_dir: Path, runs_dir: Path, jobs: int = 1, data_root: str | None = None,
              checkpoints: Path | None = None, epoch_fractions: tuple[float, ...] | None = None) -> int:
    """Run the ``part`` of the grid, ``jobs`` entries at a time (each its own process, with
    ``cores // jobs`` threads); returns the number of entries that failed. The bases are checked
    (and, for a part with its own pre-training runs, exported) first."""
    part = get_part(part, checkpoints, epoch_fractions)
    ensure_bases(part)
    todo = entries(part)
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    print(f"[reproduce] {len(todo)} entries of the {part.name} grid, {jobs} at a time, {threads} thread(s) each",
          flush=True)

    def launch(entry: tuple[str, str, int]) -> int:
        method, arm, seed = entry
        command = [sys.executable, "-m", "e2mc", "reproduce", "--part", part.name, "--entry", f"{method}:{arm}:{seed}",
                   "--results", str(results_dir), "--runs", str(runs_dir), "--checkpoints", str(part.checkpoints),
                   "--epoch-fractions", *(f"{f:g}" for f in part.epoch_fractions)]
        if data_root:
            command += ["--data-root", data_root]
        # torch sizes its thread pool from OMP_NUM_THREADS; unbuffered output keeps the progress live
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        started = time.time()
        print(f"[reproduce] start {method}/{arm}/seed{seed}", flush=True)
        log_path = runs_dir / "logs" / f"{method}-{arm}-seed{seed}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        code = run_logged(command, log_path, f"{method}/{arm}/seed{seed}", env)
        state = "ok" if code == 0 else f"FAILED (exit {code}; see {log_path})"
        print(f"[reproduce] {state}: {method}/{arm}/seed{seed} in {time.time() - started:.0f} s", flush=True)
        return code

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        codes = list(pool.map(launch, todo))
    return sum(code != 0 for code in codes)


def compare(reference_dir: Path, rerun_dir: Path) -> str:
    """A Markdown table of the re-run's final linear-probe top-1 beside the reference folder's, for
    every (method, arm, label fraction, seed) the re-run has."""
    from e2mc.results import load

    def final(frame):
        probes = frame[frame.kind == "linear_probe"]
        last = probes.groupby(["method", "arm"]).epoch.transform("max")
        return probes[probes.epoch == last].set_index(["method", "arm", "label_fraction", "seed"])["top1"]

    rerun, reference = final(load(rerun_dir)), final(load(reference_dir))
    lines = [f"| method | arm | labels | seed | top-1 {reference_dir} | top-1 {rerun_dir} (re-run) |",
             "|---|---|---|---|---|---|"]
    for key, value in rerun.sort_index().items():
        method, arm, fraction, seed = key
        ref = f"{reference[key]:.2f}" if key in reference.index else "not in reference"
        lines.append(f"| {method} | {arm} | {100 * fraction:g}% | {seed} | {ref} | {value:.2f} |")
    return "\n".join(lines)


NOTEBOOKS = ("fig2_marginals", "fig6_epochs", "tables")
# on the results of a part with a plateau sweep or variants (the converged part), also:
CONVERGED_NOTEBOOKS = ("converged", "preregistered")


def execute_notebook(notebook: Path, output: Path, parameters: dict) -> None:
    """Run one notebook with papermill, its kernel talking over local IPC sockets in a private
    temporary folder: nothing listens on TCP, so the kernel has no unencrypted transport to warn about."""
    import papermill
    from jupyter_client import AsyncKernelManager

    with tempfile.TemporaryDirectory(prefix="e2mc-kernel-") as sockets:
        class IPCKernelManager(AsyncKernelManager):
            def __init__(self, **kwargs):
                super().__init__(transport="ipc", ip=str(Path(sockets) / "kernel"), **kwargs)

        papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name="python3",
                                   cwd=str(REPO_ROOT), progress_bar=False, kernel_manager_class=IPCKernelManager)


def run_notebooks(results_dir: Path, executed_dir: Path | None = None, readme: Path | None = None) -> None:
    """Execute every notebook with papermill on ``results_dir``; figures go where notebook_io.resolve_io_dirs says.
    With ``readme``, its table blocks are then refreshed from the tables written
    (:func:`e2mc.tables.sync_readme_tables`)."""
    from e2mc import notebook_io, tables

    executed_dir = executed_dir or Path(tempfile.mkdtemp(prefix="e2mc-notebooks-"))
    found, _ = notebook_io.resolve_io_dirs(results_dir)
    converged = (found / PLATEAU_DIR).is_dir() or (found / VARIANTS_DIR).is_dir()
    for name in NOTEBOOKS + (CONVERGED_NOTEBOOKS if converged else ()):
        print(f"[notebooks] {name} on {results_dir}", flush=True)
        execute_notebook(REPO_ROOT / "notebooks" / f"{name}.ipynb", executed_dir / f"{name}.ipynb",
                         {"results_dir": str(results_dir)})
    print(f"[notebooks] executed copies in {executed_dir}", flush=True)
    if readme is not None:
        _, tables_dir = notebook_io.resolve_io_dirs(results_dir)
        changed = tables.sync_readme_tables(readme, tables_dir.parent)  # every folder's blocks
        print(f"[notebooks] {readme}: " + (f"updated table(s) {', '.join(changed)}" if changed
                                            else "its tables already match"), flush=True)


# --- command line ------------------------------------------------------------------------------

def _reproduce_command(args) -> int:
    part = get_part(args.part, args.checkpoints,
                    tuple(args.epoch_fractions) if args.epoch_fractions else None, tuple(args.methods or ()))
    results, runs = Path(args.results or part.results), Path(args.runs or part.runs)
    if args.dry_run:
        todo = pending(part, results, runs)
        for method, arm, seed in todo:
            print(f"{method}:{arm}:{seed}")
        print(f"[reproduce] {len(todo)} of {len(entries(part))} entries of the {part.name} grid to run "
              f"into {results} (--dry-run: nothing run)")
        return 0
    entry = _parse_entry(args.entry) if args.entry else None  # bad input first, then the tree's state
    if entry and entry not in entries(part):
        raise UserError(f"{args.entry} is not an entry of the {part.name} grid; `reproduce --part {part.name} "
                        "--dry-run` lists the entries still to run")
    require_clean_tree(results)
    check_writable_folder(results, "results folder")  # before hours of training, not after
    if entry:
        method, arm, seed = entry
        outcome = run_one(method, arm, int(seed), results, runs, args.data_root, part=part)
        print(f"[reproduce] {method}/{arm}/seed{seed}: {outcome}")
        return 0
    failed = reproduce(part, results, runs, args.jobs, args.data_root)
    if args.compare_to:
        print(compare(Path(args.compare_to), results))
    if failed:
        print(f"[reproduce] {failed} entries failed; rerun the same command to retry them", file=sys.stderr)
    return 1 if failed else 0


def _parse_entry(text: str) -> tuple[str, str, int]:
    parts = text.split(":")
    if len(parts) != 3 or not parts[2].isdigit():
        raise UserError(f"--entry takes METHOD:ARM:SEED, e.g. vicreg:e2mc:0, got {text!r}")
    return parts[0], parts[1], int(parts[2])


def _export_command(args) -> int:
    require_clean_tree(args.to)
    path = export_base_checkpoint(Path(args.run_dir), Path(args.to), force=args.force)
    print(f"[e2mc] wrote {path} and {path.with_suffix('.json')}")
    return 0


def _notebooks_command(args) -> int:
    run_notebooks(Path(args.results), readme=Path(args.readme) if args.readme else None)
    return 0


def _label_fraction(text: str) -> float:
    """A command-line label fraction: one of :data:`LABEL_FRACTIONS`, the fractions the grid reports."""
    fraction = float(text)
    if fraction not in LABEL_FRACTIONS:
        raise argparse.ArgumentTypeError(f"{text} is not one of the grid's label fractions "
                                         f"{' '.join(f'{f:g}' for f in LABEL_FRACTIONS)}")
    return fraction


def add_commands(sub) -> None:
    """Register ``reproduce``, ``export-base`` and ``notebooks`` on the e2mc command line."""
    text = "run the mini reproduction grid (continued pre-training, probes, diagnostics) into a results folder"
    p = sub.add_parser("reproduce", help=text, description=text)
    p.add_argument("--part", choices=tuple(PARTS), default="quick",
                   help="quick: the entries `make reproduce` re-runs (~15 min on 2 cores); full: the whole grid; "
                        "converged: the grid from the 100-epoch bases of `make pretrain-mini-converged` "
                        "(plateau, 20-epoch continuation, learning-rate check, transfer; docs/converged.md); "
                        "preregistered: SwAV original, E2MC and MMCR from the converged base, seeds 0-7 "
                        "(docs/preregistration.md)")
    p.add_argument("--results", default=None,
                   help="where the result files go (default: the part's, results/mini or results/mini-converged)")
    p.add_argument("--runs", default=None, help="where training runs write checkpoints and logs (default: the "
                                                "part's, runs/mini or runs/mini-converged)")
    p.add_argument("--jobs", type=positive_int, default=1, help="entries run at the same time")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: the usual places)")
    p.add_argument("--checkpoints", default=None,
                   help="folder of the base checkpoints <method>.pt (default: the part's, results/mini/checkpoints "
                        "or results/mini-converged/checkpoints)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="run only these methods of the part (e.g. the bases already pre-trained)")
    p.add_argument("--compare-to", default=None,
                   help="after the run, print its final-epoch accuracies beside those of this results folder")
    p.add_argument("--epoch-fractions", type=_label_fraction, nargs="+", default=None,
                   metavar="FRACTION",
                   help="label fractions probed after every epoch (default: the part's, 0.01 as the committed "
                        "grid; 0.01 0.1 1 probes all three, about 30 s more per epoch on 2 cores); the others of "
                        "0.01 0.1 1 are probed after the last epoch only")
    p.add_argument("--entry", default=None, help="run one METHOD:ARM:SEED entry in this process")
    p.add_argument("--dry-run", action="store_true", help="list the entries whose results are missing; run nothing")
    p.set_defaults(run=_reproduce_command)
    text = "copy the model of a finished pre-training run to a base checkpoint with its provenance"
    p = sub.add_parser("export-base", help=text, description=text)
    p.add_argument("--run", dest="run_dir", required=True, help="the pre-training run folder (holds checkpoint.pt)")
    p.add_argument("--to", required=True, help="destination .pt, e.g. results/mini/checkpoints/vicreg.pt")
    p.add_argument("--force", action="store_true", help="replace an existing destination (and its .json)")
    p.set_defaults(run=_export_command)
    text = ("execute every notebook on a results folder with papermill, writing figures/<path under results/> "
            "(<results>/figures for a folder elsewhere)")
    p = sub.add_parser("notebooks", help=text, description=text)
    p.add_argument("--results", default="results/mini")
    p.add_argument("--readme", default=None,
                   help="also refresh the <!-- e2mc:table FOLDER/NAME --> blocks of this Markdown file from "
                        "figures/FOLDER/NAME.md")
    p.set_defaults(run=_notebooks_command)

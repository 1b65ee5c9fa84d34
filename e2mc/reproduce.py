"""The mini reproduction: runs the experiments of configs/experiments/ (e2mc.experiments), end to end.

    python -m e2mc reproduce [--part quick|full|converged|preregistered] [--jobs 2]

A part is one YAML file of configs/experiments/ (:func:`e2mc.experiments.load_experiment`). ``quick``
and ``full``: for every (method, arm, seed) of the paper's grid it continues the committed base
checkpoint (``results/mini/checkpoints/<method>.pt``) for ten epochs, probes the backbone with 1% of the
labels after every epoch (Fig. 6; ``--epoch-fractions 0.01 0.1 1`` probes every fraction after every
epoch), with 1%, 10% and 100% after the last, records embedding diagnostics before and after (Fig. 2c/d)
and the training dynamics, all as result files under ``results/mini/``. ``converged`` (issue 15) does
the same from the 100-epoch bases of ``make pretrain-mini-converged`` (exported to
``results/mini-converged/checkpoints/`` on first use), for 20 epochs with validation-selected probes,
plus the pre-training plateau (``plateau/``), a learning-rate check (``variants/``) and the digits
transfer probe; see docs/converged.md. An entry whose results already exist (the results index,
:func:`e2mc.experiments.pending`) is skipped, so an interrupted reproduction resumes where it stopped
(its training runs resume from their checkpoints too).
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from e2mc import checkpoints, reports, rerun
from e2mc.config import LABEL_FRACTIONS, Config, config_from_dict
from e2mc.criteria import criterion_record
from e2mc.errors import UserError, check_writable_folder
from e2mc.eval_settings import label_fraction_option
from e2mc.evaluation.cli import positive_int
from e2mc.evaluation.runner import (EvaluationPlan, diagnose_checkpoint, evaluate_checkpoint,
                                    make_epoch_probe_hook, plan_from_config, sweep)
from e2mc.experiments import (DATASET, PLATEAU_DIR, Arm, Part, arm_results_dir, base_checkpoint, committed_plateau,
                              entries, entry_config, experiment_names, find_arm, finished_entry, get_part,
                              part_methods, pending, plateau_epochs)
from e2mc.provenance import provenance, require_clean_tree, utc_now, write_json_atomic
from e2mc.results import existing_result, find_results, result_filename, write_result
from e2mc.runs import run_training
from e2mc.meter import read_metrics

DIAGNOSTIC_IMAGES = 2048  # fixed test images whose embeddings Fig. 2c/d plots before and after

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

def training_result_path(results_dir: Path, cfg: Config, arm: str) -> Path:
    return results_dir / "training" / result_filename("training", cfg.method, arm, cfg.data.dataset, cfg.train.epochs,
                                                      None, cfg.train.seed, cfg.hash())


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
    if seed == 0 and not find_results(results_dir / "diagnostics", "diagnostics", cfg.method, arm.name,
                                      cfg.data.dataset, part.epochs, None, seed):
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
    if not find_results(results_dir / "diagnostics", "diagnostics", method, "base", DATASET, 0, None, 0):
        diagnose_checkpoint(checkpoint, results_dir / "diagnostics", arm="base", epoch=0, data_root=data_root,
                            n_images=DIAGNOSTIC_IMAGES)
    return "done"


# --- the pre-training plateau --------------------------------------------------------------------

def _plateau_plan(part: Part) -> EvaluationPlan:
    return EvaluationPlan(("linear_probe",), (0.01,), (0,), probe_overrides=part.probe_overrides())


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
              checkpoints: Path | None = None, epoch_fractions: tuple[float, ...] | None = None,
              only: list[tuple[str, str, int]] | None = None) -> int:
    """Run the ``part`` of the grid (``only`` these of its entries, if given), ``jobs`` entries at a time
    (each its own process, with ``cores // jobs`` threads); returns the number of entries that failed.
    The bases are checked (and, for a part with its own pre-training runs, exported) first."""
    part = get_part(part, checkpoints, epoch_fractions)
    ensure_bases(part)
    todo = entries(part) if only is None else only
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


# --- command line ------------------------------------------------------------------------------

def _reproduce_command(args) -> int:
    part = get_part(args.part, args.checkpoints,
                    tuple(args.epoch_fractions) if args.epoch_fractions else None, tuple(args.methods or ()))
    results, runs = Path(args.results or part.results), Path(args.runs or part.runs)
    if args.rerun or args.rerun_dirty:
        return _rerun_command(args, part, results, runs)
    if args.dry_run:
        todo = pending(part, results, runs)
        for method, arm, seed in todo:
            print(f"{method}:{arm}:{seed}")
        print(f"[reproduce] {len(todo)} of {len(entries(part))} entries of the {part.name} grid to run "
              f"into {results} (--dry-run: nothing run)")
        return 0
    entry = _grid_entry(part, args.entry) if args.entry else None  # bad input first, then the tree's state
    require_clean_tree(results)
    check_writable_folder(results, "results folder")  # before hours of training, not after
    if entry:
        method, arm, seed = entry
        outcome = run_one(method, arm, int(seed), results, runs, args.data_root, part=part)
        print(f"[reproduce] {method}/{arm}/seed{seed}: {outcome}")
        return 0
    failed = reproduce(part, results, runs, args.jobs, args.data_root)
    if args.compare_to:
        print(reports.compare(Path(args.compare_to), results))
    if failed:
        print(f"[reproduce] {failed} entries failed; rerun the same command to retry them", file=sys.stderr)
    return 1 if failed else 0


def _rerun_command(args, part: Part, results: Path, runs: Path) -> int:
    """``reproduce --rerun ENTRY ...`` / ``--rerun-dirty``: set the entries' results and run folders
    aside (:mod:`e2mc.rerun`), then run them."""
    if args.entry:
        raise UserError("--rerun and --rerun-dirty choose the entries themselves; leave out --entry")
    chosen = [_grid_entry(part, text) for text in args.rerun or ()]
    if args.rerun_dirty:
        chosen += [e for e in rerun.dirty_entries(part, results) if e not in chosen]
    for method, arm, seed in chosen:
        files = rerun.entry_results(part, (method, arm, seed), results)
        print(f"{method}:{arm}:{seed} ({len(files)} result files)")
    if args.dry_run or not chosen:
        print(f"[reproduce] {len(chosen)} entries of the {part.name} grid to compute again into {results}"
              + (" (--dry-run: nothing moved or run)" if args.dry_run else ""))
        return 0
    require_clean_tree(results)
    check_writable_folder(results, "results folder")
    attic, moved = rerun.set_aside(part, chosen, results, runs)
    print(f"[reproduce] moved {moved} result files and run folders of {len(chosen)} entries to {attic}", flush=True)
    failed = reproduce(part, results, runs, args.jobs, args.data_root, only=chosen)
    if failed:
        print(f"[reproduce] {failed} entries failed; `reproduce --part {part.name}` (without --rerun) resumes them",
              file=sys.stderr)
    return 1 if failed else 0


def _parse_entry(text: str) -> tuple[str, str, int]:
    parts = text.split(":")
    if len(parts) != 3 or not parts[2].isdigit():
        raise UserError(f"--entry takes METHOD:ARM:SEED, e.g. vicreg:e2mc:0, got {text!r}")
    return parts[0], parts[1], int(parts[2])


def _grid_entry(part: Part, text: str) -> tuple[str, str, int]:
    """The entry METHOD:ARM:SEED of ``part``'s grid that ``text`` names (``--entry``, ``--rerun``)."""
    entry = _parse_entry(text)
    if entry not in entries(part):
        raise UserError(f"{text} is not an entry of the {part.name} grid; `reproduce --part {part.name} "
                        "--dry-run` lists the entries still to run")
    return entry


def _export_command(args) -> int:
    require_clean_tree(args.to)
    path = export_base_checkpoint(Path(args.run_dir), Path(args.to), force=args.force)
    print(f"[e2mc] wrote {path} and {path.with_suffix('.json')}")
    return 0


def _label_fraction(text: str) -> float:
    """A command-line label fraction: one of :data:`LABEL_FRACTIONS`, the fractions the grid reports."""
    return label_fraction_option(text, among=LABEL_FRACTIONS)


def add_commands(sub) -> None:
    """Register ``reproduce``, ``export-base`` and ``notebooks`` on the e2mc command line."""
    text = "run the mini reproduction grid (continued pre-training, probes, diagnostics) into a results folder"
    p = sub.add_parser("reproduce", help=text, description=text)
    p.add_argument("--part", choices=experiment_names(), default="quick",
                   help="the experiment configs/experiments/PART.yaml (docs/experiments.md). quick: the entries "
                        "`make reproduce` re-runs (~15 min on 2 cores); full: the whole grid; "
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
    p.add_argument("--rerun", nargs="+", default=None, metavar="METHOD:ARM:SEED",
                   help="compute these finished entries again: their result files and run folders are moved to "
                        "<runs>/replaced/<time>/ first (METHOD:base:0 for the base's probes)")
    p.add_argument("--rerun-dirty", action="store_true",
                   help="compute again every entry with a result file that records uncommitted changes "
                        "(git_dirty), as --rerun does; with --dry-run, list them")
    p.set_defaults(run=_reproduce_command)
    text = "copy the model of a finished pre-training run to a base checkpoint with its provenance"
    p = sub.add_parser("export-base", help=text, description=text)
    p.add_argument("--run", dest="run_dir", required=True, help="the pre-training run folder (holds checkpoint.pt)")
    p.add_argument("--to", required=True, help="destination .pt, e.g. results/mini/checkpoints/vicreg.pt")
    p.add_argument("--force", action="store_true", help="replace an existing destination (and its .json)")
    p.set_defaults(run=_export_command)
    reports.add_command(sub)

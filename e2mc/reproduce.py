"""The mini reproduction: the paper's experiment grid on Fashion-MNIST, end to end.

    python -m e2mc reproduce [--part quick|full] [--jobs 2]

For every (method, arm, seed) of :data:`GRID` it continues the committed base checkpoint
(``results/mini/checkpoints/<method>.pt``) for ten epochs, probes the backbone with 1% of the labels
after every epoch (Fig. 6; ``--epoch-fractions 0.01 0.1 1`` probes every fraction after every epoch),
with 1%, 10% and 100% after the last, records embedding diagnostics before
and after (Fig. 2c/d) and the training dynamics, all as result files under ``results/mini/``.
An entry whose results already exist is skipped, so an interrupted reproduction resumes where it
stopped (its training runs resume from their checkpoints too).
"""
from __future__ import annotations

import argparse
import dataclasses
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
from e2mc.evaluation.runner import EvaluationPlan, diagnose_checkpoint, evaluate_checkpoint
from e2mc.methods import get_method, method_names
from e2mc.naming import ARMS, infer_arm
from e2mc.provenance import REPO_ROOT, provenance, utc_now, write_json_atomic
from e2mc.results import ConflictingResultError, existing_result, result_filename, write_result
from e2mc.runs import run_folder, run_training
from e2mc.train import read_metrics

SEEDS = (0, 1, 2)
EPOCHS = 10
EPOCH_FRACTIONS = (0.01,)  # probed after every epoch; the rest of LABEL_FRACTIONS after the last only
DIAGNOSTIC_IMAGES = 2048  # fixed test images whose embeddings Fig. 2c/d plots before and after


@dataclasses.dataclass(frozen=True)
class Arm:
    """One way of continuing a method's training: a name and the config overrides that make it."""

    method: str
    name: str
    overrides: tuple[str, ...]


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
    return arms


SIMSIAM_COV_COEFFS = (1.0, 5.0)  # beside the paper's 25 (the e2mc arm) and 0 (entropy_only)
GRID: list[Arm] = _arms()
# The part of the grid `make reproduce` re-runs (about 15 minutes on 2 CPU cores); the committed
# results of the full grid fill in the rest of the figures and tables.
QUICK: list[tuple[str, str, int]] = [("vicreg", "original", 0), ("vicreg", "e2mc", 0)]


# The committed base checkpoints (the stand-ins for the official releases).
CHECKPOINTS = REPO_ROOT / "results" / "mini" / "checkpoints"


def base_checkpoint(checkpoints: Path, method: str) -> Path:
    return Path(checkpoints) / f"{method}.pt"


def export_base_checkpoint(run_dir: Path, destination: Path) -> Path:
    """Copy the model of a finished pre-training run to ``destination`` (weights only, no optimizer)
    and write its provenance next to it as ``<name>.json``."""
    state = checkpoints.load(run_dir / "checkpoint.pt")
    if state.get("format") != "e2mc-train-v1":
        raise ValueError(f"{run_dir / 'checkpoint.pt'} is not a checkpoint written by e2mc training")
    epochs = state["config"]["train"]["epochs"]
    if state["epoch"] != epochs or state["step"] != 0:
        raise ValueError(f"{run_dir} stopped at epoch {state['epoch']} of {epochs}; finish it "
                         "(rerun the same pretrain command) before exporting")
    checkpoints.save_atomic({k: state[k] for k in ("format", "method", "config", "epoch", "model")}, destination)
    records = read_metrics(run_dir)
    write_json_atomic(destination.with_suffix(".json"), {
        "what": f"mini {state['method']} base checkpoint: pre-trained from scratch on Fashion-MNIST",
        "epochs": state["epoch"], "config": state["config"],
        "training_segments": [r for r in records if r["kind"] == "segment"],
        "training_seconds": sum(r["seconds"] for r in records if r["kind"] == "epoch"),
        "export_provenance": provenance(),
    })
    return destination


# --- one entry of the grid ----------------------------------------------------------------------

def _config_path(method: str) -> Path:
    return REPO_ROOT / "configs" / "mini" / f"{method}.yaml"


def entry_config(arm: Arm, seed: int, results_dir: Path, runs_dir: Path, data_root: str | None = None,
                 checkpoints: Path = CHECKPOINTS, epoch_fractions: tuple[float, ...] = EPOCH_FRACTIONS) -> Config:
    """The training configuration of (arm, seed): the method's mini config plus the arm's overrides,
    probing ``epoch_fractions`` of the labels after every epoch."""
    fractions = ",".join(f"{f:g}" for f in sorted(set(epoch_fractions)))  # one configuration however listed
    overrides = [*arm.overrides, f"train.seed={seed}", f"train.epochs={EPOCHS}",
                 f"train.init={base_checkpoint(checkpoints, arm.method)}",
                 f"train.output_dir={run_folder(runs_dir, arm.method, arm.name, seed)}",
                 "eval.every_epoch=true", f"eval.label_fractions=[{fractions}]", f"eval.seeds=[{seed}]",
                 f"eval.results_dir={results_dir / 'linear_probe'}"]
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
        raise ValueError(
            f"{resume} holds a run of another configuration (hash {recorded.hash()}, not {cfg.hash()}); "
            "pass another --runs folder for this configuration, or move that run away to train it again")


def run_entry(arm: Arm, seed: int, results_dir: Path, runs_dir: Path, data_root: str | None = None,
              checkpoints: Path = CHECKPOINTS, epoch_fractions: tuple[float, ...] = EPOCH_FRACTIONS) -> str:
    """Continue the base checkpoint along ``arm`` with ``seed`` and write every result of that run.

    Per epoch: probes with ``epoch_fractions`` of the labels (in training, through the epoch hook).
    After the last epoch: probes with the rest of :data:`LABEL_FRACTIONS`, the training dynamics
    (kind=training) and, for seed 0, embedding diagnostics.
    Returns "done", "skipped" (results already there) or "interrupted".
    """
    cfg = entry_config(arm, seed, results_dir, runs_dir, data_root, checkpoints, epoch_fractions)
    if finished_entry(results_dir, cfg, arm.name) is not None:
        return "skipped"
    _check_run_folder(cfg)
    done_marker = training_result_path(results_dir, cfg, arm.name)
    started = utc_now()
    summary = run_training(cfg)  # eval.every_epoch: the probes after every epoch
    if summary["status"] != "finished":
        return "interrupted"
    final = Path(cfg.train.output_dir) / "checkpoint.pt"
    last_only = tuple(f for f in LABEL_FRACTIONS if f not in epoch_fractions)
    if last_only:
        evaluate_checkpoint(final, results_dir / "linear_probe", EvaluationPlan(("linear_probe",), last_only, (seed,)),
                            arm=arm.name, epoch=EPOCHS, data_root=data_root, skip_existing=True)
    if seed == 0 and not any((results_dir / "diagnostics").glob(
            result_filename("diagnostics", cfg.method, arm.name, cfg.data.dataset, EPOCHS, None, seed, "*"))):
        diagnose_checkpoint(final, results_dir / "diagnostics", arm=arm.name, epoch=EPOCHS, data_root=data_root,
                            n_images=DIAGNOSTIC_IMAGES)
    records = read_metrics(Path(cfg.train.output_dir))
    epochs = [r for r in records if r["kind"] == "epoch"]
    last = epochs[-1]
    write_result(done_marker, kind="training", method=cfg.method, arm=arm.name,
                 criterion=criterion_record(cfg.to_dict()), epoch=cfg.train.epochs, label_fraction=None, seed=seed,
                 dataset=cfg.data.dataset,
                 metrics={k: last[k] for k in ("loss", "marginal_entropy", "covariance_penalty", "embedding_std")},
                 extra={"epochs": epochs, "run_seconds": summary["seconds"],
                        "segments": [r for r in records if r["kind"] == "segment"]},
                 config=cfg, checkpoint=str(final),
                 started=started)
    return "done"


def evaluate_base(method: str, results_dir: Path, data_root: str | None = None,
                  checkpoints: Path = CHECKPOINTS) -> str:
    """Probes (1%, 10%, 100%, every seed) and diagnostics of a method's base checkpoint (arm "base", epoch 0)."""
    checkpoint = base_checkpoint(checkpoints, method)
    plan = EvaluationPlan(("linear_probe",), LABEL_FRACTIONS, SEEDS)
    evaluate_checkpoint(checkpoint, results_dir / "linear_probe", plan, arm="base", epoch=0, data_root=data_root,
                        skip_existing=True)
    diagnostics = results_dir / "diagnostics"
    if not any(diagnostics.glob(f"diagnostics_{method}_base_*")):
        diagnose_checkpoint(checkpoint, diagnostics, arm="base", epoch=0, data_root=data_root,
                            n_images=DIAGNOSTIC_IMAGES)
    return "done"


# --- the grid ----------------------------------------------------------------------------------

def entries(part: str) -> list[tuple[str, str, int]]:
    """(method, arm, seed) triples; arm "base" stands for evaluating the base checkpoint."""
    if part == "quick":
        return list(QUICK)
    if part != "full":
        raise ValueError(f"part must be quick or full, got {part!r}")
    # Most telling first, so that a partial run already fills the main table: the bases, then original
    # against E2MC (every seed), then the ablations and alternative criteria one seed at a time, so that
    # every row of their tables has a value before any has its interval.
    main = [a for a in GRID if a.name in ("original", "e2mc")]
    rest = [a for a in GRID if a not in main]
    return ([(m, "base", 0) for m in method_names()]
            + [(a.method, a.name, s) for s in SEEDS for a in main]
            + [(a.method, a.name, s) for s in SEEDS for a in rest])


def pending(part: str, results_dir: Path, runs_dir: Path, checkpoints: Path = CHECKPOINTS,
            epoch_fractions: tuple[float, ...] = EPOCH_FRACTIONS) -> list[tuple[str, str, int]]:
    """The entries of ``part`` whose results are not in ``results_dir`` yet (what a run would do)."""
    todo = []
    for method, arm_name, seed in entries(part):
        if arm_name == "base":
            probes = [result_filename("linear_probe", method, "base", "fashion_mnist", 0, f, s, "*")
                      for f in LABEL_FRACTIONS for s in SEEDS]
            done = (any((results_dir / "diagnostics").glob(f"diagnostics_{method}_base_*"))
                    and all(any((results_dir / "linear_probe").glob(p)) for p in probes))
        else:
            arm = next(a for a in GRID if (a.method, a.name) == (method, arm_name))
            cfg = entry_config(arm, seed, results_dir, runs_dir, None, checkpoints, epoch_fractions)
            done = finished_entry(results_dir, cfg, arm_name) is not None
        if not done:
            todo.append((method, arm_name, seed))
    return todo


def run_one(method: str, arm_name: str, seed: int, results_dir: Path, runs_dir: Path,
            data_root: str | None = None, checkpoints: Path = CHECKPOINTS,
            epoch_fractions: tuple[float, ...] = EPOCH_FRACTIONS) -> str:
    if arm_name == "base":
        return evaluate_base(method, results_dir, data_root, checkpoints)
    arm = next((a for a in GRID if (a.method, a.name) == (method, arm_name)), None)
    if arm is None:
        raise ValueError(f"no arm {arm_name!r} for {method}; the grid has "
                         + ", ".join(a.name for a in GRID if a.method == method))
    return run_entry(arm, seed, results_dir, runs_dir, data_root, checkpoints, epoch_fractions)


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


def reproduce(part: str, results_dir: Path, runs_dir: Path, jobs: int = 1, data_root: str | None = None,
              checkpoints: Path = CHECKPOINTS, epoch_fractions: tuple[float, ...] = EPOCH_FRACTIONS) -> int:
    """Run the ``part`` of the grid, ``jobs`` entries at a time (each its own process, with
    ``cores // jobs`` threads); returns the number of entries that failed."""
    for method in {m for m, _, _ in entries(part)}:
        if not base_checkpoint(checkpoints, method).exists():
            raise FileNotFoundError(f"{base_checkpoint(checkpoints, method)} is missing: it is committed with the "
                                    "repository; re-create it with `make pretrain-mini`")
    todo = entries(part)
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    print(f"[reproduce] {len(todo)} entries of the {part} grid, {jobs} at a time, {threads} thread(s) each",
          flush=True)

    def launch(entry: tuple[str, str, int]) -> int:
        method, arm, seed = entry
        command = [sys.executable, "-m", "e2mc", "reproduce", "--entry", f"{method}:{arm}:{seed}",
                   "--results", str(results_dir), "--runs", str(runs_dir), "--checkpoints", str(checkpoints),
                   "--epoch-fractions", *(f"{f:g}" for f in epoch_fractions)]
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
    """Execute every notebook with papermill on ``results_dir``; figures go to figures/<results name>/.
    With ``readme``, its table blocks are then refreshed from the tables written
    (:func:`e2mc.tables.sync_readme_tables`)."""
    from e2mc import plots, tables

    executed_dir = executed_dir or Path(tempfile.mkdtemp(prefix="e2mc-notebooks-"))
    for name in NOTEBOOKS:
        print(f"[notebooks] {name} on {results_dir}", flush=True)
        execute_notebook(REPO_ROOT / "notebooks" / f"{name}.ipynb", executed_dir / f"{name}.ipynb",
                         {"results_dir": str(results_dir)})
    print(f"[notebooks] executed copies in {executed_dir}", flush=True)
    if readme is not None:
        _, tables_dir = plots.resolve_io_dirs(results_dir)
        changed = tables.sync_readme_tables(readme, tables_dir)
        print(f"[notebooks] {readme}: " + (f"updated table(s) {', '.join(changed)}" if changed
                                            else "its tables already match"), flush=True)


# --- command line ------------------------------------------------------------------------------

def _reproduce_command(args) -> int:
    results, runs = Path(args.results), Path(args.runs)
    if args.dry_run:
        todo = pending(args.part, results, runs, Path(args.checkpoints), tuple(args.epoch_fractions))
        for method, arm, seed in todo:
            print(f"{method}:{arm}:{seed}")
        print(f"[reproduce] {len(todo)} of {len(entries(args.part))} entries of the {args.part} grid to run "
              f"into {results} (--dry-run: nothing run)")
        return 0
    if args.entry:
        method, arm, seed = _parse_entry(args.entry)
        outcome = run_one(method, arm, int(seed), results, runs, args.data_root, Path(args.checkpoints),
                          tuple(args.epoch_fractions))
        print(f"[reproduce] {method}/{arm}/seed{seed}: {outcome}")
        return 0
    failed = reproduce(args.part, results, runs, args.jobs, args.data_root, Path(args.checkpoints),
                       tuple(args.epoch_fractions))
    if args.compare_to:
        print(compare(Path(args.compare_to), results))
    if failed:
        print(f"[reproduce] {failed} entries failed; rerun the same command to retry them", file=sys.stderr)
    return 1 if failed else 0


def _parse_entry(text: str) -> tuple[str, str, int]:
    parts = text.split(":")
    if len(parts) != 3 or not parts[2].isdigit():
        raise ValueError(f"--entry takes METHOD:ARM:SEED, e.g. vicreg:e2mc:0, got {text!r}")
    return parts[0], parts[1], int(parts[2])


def _export_command(args) -> int:
    path = export_base_checkpoint(Path(args.run_dir), Path(args.to))
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
    p.add_argument("--part", choices=("quick", "full"), default="quick",
                   help="quick: the entries `make reproduce` re-runs (~15 min on 2 cores); full: the whole grid")
    p.add_argument("--results", default="results/mini", help="where the result files go")
    p.add_argument("--runs", default="runs/mini", help="where training runs write checkpoints and logs")
    p.add_argument("--jobs", type=int, default=1, help="entries run at the same time")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: the usual places)")
    p.add_argument("--checkpoints", default=str(CHECKPOINTS.relative_to(REPO_ROOT)),
                   help="folder of the base checkpoints <method>.pt")
    p.add_argument("--compare-to", default=None,
                   help="after the run, print its final-epoch accuracies beside those of this results folder")
    p.add_argument("--epoch-fractions", type=_label_fraction, nargs="+", default=list(EPOCH_FRACTIONS),
                   metavar="FRACTION",
                   help="label fractions probed after every epoch (default: 0.01, as the committed grid; "
                        "0.01 0.1 1 probes all three, about 30 s more per epoch on 2 cores); the others of "
                        "0.01 0.1 1 are probed after the last epoch only")
    p.add_argument("--entry", default=None, help="run one METHOD:ARM:SEED entry in this process")
    p.add_argument("--dry-run", action="store_true", help="list the entries whose results are missing; run nothing")
    p.set_defaults(run=_reproduce_command)
    text = "copy the model of a finished pre-training run to a base checkpoint with its provenance"
    p = sub.add_parser("export-base", help=text, description=text)
    p.add_argument("--run", dest="run_dir", required=True, help="the pre-training run folder (holds checkpoint.pt)")
    p.add_argument("--to", required=True, help="destination .pt, e.g. results/mini/checkpoints/vicreg.pt")
    p.set_defaults(run=_export_command)
    text = "execute every notebook on a results folder with papermill, writing figures/<results name>/"
    p = sub.add_parser("notebooks", help=text, description=text)
    p.add_argument("--results", default="results/mini")
    p.add_argument("--readme", default=None,
                   help="also refresh the <!-- e2mc:table NAME --> blocks of this Markdown file from the tables")
    p.set_defaults(run=_notebooks_command)

"""``python -m e2mc submit``: a grid of training runs as one submitit job array (SLURM, local or debug).

    python -m e2mc submit --config 'configs/imagenet/{method}.yaml' --grid method=vicreg,swav,simsiam \\
        --grid arm=original,e2mc --grid train.seed=0,1,2 --partition gpu --account me
    python -m e2mc submit --grid-file slurm/grids/swav_criteria.yaml --cluster slurm
    python -m e2mc submit --cluster debug --config configs/mini/vicreg.yaml --grid criterion.ent_coeff=1,10

Grid axes (``--grid KEY=V1,V2`` or the ``grid:`` mapping of a YAML file; every combination is one run):

* ``method``: fills ``{method}`` in the configuration path;
* ``arm``: a named arm of :data:`e2mc.arms.ARMS` (original, e2mc, entropy_only, uniformity, ...);
* any configuration key, e.g. ``criterion.ent_coeff=1,10`` (values are read as YAML).

Run ``i`` trains in ``<output_root>/<method>/<label>/seed<seed>``, where the label names the arm and
the other axes' values (``e2mc,criterion.ent_coeff=10``): a function of the grid point alone, so a
resubmitted grid resumes each run from its own ``checkpoint.pt``.

Each run is a :class:`TrainingJob`, a ``submitit.helpers.Checkpointable``: on preemption or timeout
(submitit's USR2, sent ``--signal-delay-s`` before the limit) training saves its checkpoint and
submitit requeues the job with ``checkpoint()``'s DelayedSubmission (the same job), which resumes.
"""
from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
import yaml

from e2mc.cluster import ClusterError, arm_overrides
from e2mc.config import load_config
from e2mc.methods import method_names
from e2mc.naming import ARMS
from e2mc.runs import run_folder

SPECIAL_AXES = ("method", "arm")


@dataclass(frozen=True)
class RunSpec:
    """One grid point: what ``python -m e2mc continue --config <config> <overrides>`` would run."""

    method: str
    config: str                  # configuration file
    overrides: tuple[str, ...]   # key=value, train.output_dir last
    output_dir: str
    point: tuple[tuple[str, Any], ...]  # the grid axes' values of this run, in axis order

    def command(self) -> str:
        import shlex

        return shlex.join(["python", "-m", "e2mc", "continue", "--config", self.config, *self.overrides])


class TrainingJob(submitit.helpers.Checkpointable):
    """Trains one :class:`RunSpec`; resubmitted by submitit on preemption or timeout, and resumes.

    Its state is the checkpoint that training writes in ``output_dir``, not Python objects, so the
    resubmitted job is this same object with the same spec.
    """

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec

    def __call__(self) -> dict[str, Any]:
        from e2mc.cluster import export_torch_distributed
        from e2mc.runs import run_training

        export_torch_distributed()  # several tasks per job: torch.distributed from SLURM's variables
        summary = run_training(load_config(self.spec.config, list(self.spec.overrides)))
        if summary["status"] == "interrupted":
            _hand_signal_back(summary["signal"])
        return summary

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """The job to requeue: this one (training resumes from ``output_dir/checkpoint.pt``)."""
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _hand_signal_back(signal_name: str) -> None:
    """Give the signal that stopped training to the handler installed before training began.

    train() handles SIGUSR1/SIGUSR2/SIGTERM itself while it runs (to stop at a step boundary with a
    checkpoint), so submitit's preemption handler did not see the signal; train() has restored that
    handler on return. Called now, it does what submitit does on USR2: rank 0 calls checkpoint(),
    requeues the job (counting timeouts against max_num_timeout) and exits; other ranks return.
    Outside a submitit job (debug executor, plain Python) no handler is installed: nothing happens.
    """
    signum = signal.Signals[signal_name]
    handler = signal.getsignal(signum)
    if callable(handler):
        handler(signum, None)


# --- the grid -----------------------------------------------------------------------------------

def _parse_values(text: str) -> list[Any]:
    """``1,10`` -> [1, 10]; top-level commas separate values, brackets and braces group (``[1, 2],[3]``)."""
    values, depth, start = [], 0, 0
    for i, char in enumerate(text + ","):
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            values.append(yaml.safe_load(text[start:i]))
            start = i + 1
    return values


def parse_axis(item: str) -> tuple[str, list[Any]]:
    """``KEY=V1,V2`` from the command line."""
    key, sep, raw = item.partition("=")
    if not sep or not key or not raw:
        raise ClusterError(f"--grid takes KEY=V1,V2,..., e.g. criterion.ent_coeff=1,10; got {item!r}")
    return key.strip(), _parse_values(raw)


def _yaml_value(value: Any) -> str:
    """A value as an override reads it back (strings stay bare when YAML reads them unchanged)."""
    if isinstance(value, str) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)


def _label(point: dict[str, Any]) -> str:
    parts = [str(point["arm"])] if "arm" in point else []
    parts += [f"{key}={_yaml_value(value)}" for key, value in point.items()
              if key not in (*SPECIAL_AXES, "train.seed")]
    label = ",".join(parts) or "run"
    return label.replace("/", "_").replace(" ", "")


def expand_grid(config: str, axes: dict[str, list[Any]], overrides: Sequence[str] = (),
                output_root: str = "runs/grid") -> list[RunSpec]:
    """Every combination of ``axes`` (the last axis varies fastest) as a checked :class:`RunSpec`.

    Each run's configuration is loaded (and so checked) here, before anything is submitted.
    """
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ClusterError(f"grid axis {key!r} needs a non-empty list of values, got {values!r}")
    if ("method" in axes) != ("{method}" in config):
        raise ClusterError(f"a method axis (--grid method=vicreg,swav) goes with a {{method}} placeholder in the "
                           f"configuration path (configs/imagenet/{{method}}.yaml); got {config!r} and axes "
                           f"{list(axes)}")
    specs, seen, same_run = [], {}, {}
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values, strict=True))
        if "method" in point and point["method"] not in method_names():
            raise ClusterError(f"grid method {point['method']!r} is not one of {', '.join(method_names())}")
        path = config.format(method=point["method"]) if "method" in point else config
        run_overrides = [*overrides, *(arm_overrides(point["arm"]) if "arm" in point else []),
                         *(f"{k}={_yaml_value(v)}" for k, v in point.items() if k not in SPECIAL_AXES)]
        cfg = load_config(path, run_overrides)
        output_dir = str(run_folder(output_root, cfg.method, _label(point), cfg.train.seed))
        if output_dir in seen:
            raise ClusterError(f"grid points {seen[output_dir]} and {point} would both train in {output_dir}; "
                               "make the grid axes distinct")
        seen[output_dir] = point
        if cfg.hash() in same_run:  # e.g. arm e2mc_gaussian_cdf of SwAV, whose own transform it is
            raise ClusterError(f"grid points {same_run[cfg.hash()]} and {point} train the same configuration; "
                               "drop one of them")
        same_run[cfg.hash()] = point
        specs.append(RunSpec(cfg.method, path, (*run_overrides, f"train.output_dir={output_dir}"), output_dir,
                             tuple(point.items())))
    return specs


def read_grid_file(path: str) -> dict[str, Any]:
    """A YAML grid: ``config``, ``grid`` (axis -> list), optional ``overrides`` and ``output_root``."""
    try:
        spec = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ClusterError(f"grid file {path!r} not found") from None
    unknown = set(spec) - {"config", "grid", "overrides", "output_root"} if isinstance(spec, dict) else {"?"}
    if unknown:
        raise ClusterError(f"{path}: a grid file is a mapping of config, grid, overrides and output_root; "
                           f"unknown keys {sorted(unknown)}")
    if not isinstance(spec.get("grid", {}), dict) or not isinstance(spec.get("overrides", []), list):
        raise ClusterError(f"{path}: grid must map axes to lists, overrides must be a list of key=value")
    return spec


# --- submission ---------------------------------------------------------------------------------

def make_executor(args: argparse.Namespace) -> submitit.AutoExecutor:
    """A submitit executor with the resources of ``args`` (the SLURM ones apply on SLURM only)."""
    executor = submitit.AutoExecutor(folder=args.log_dir, cluster=args.cluster,
                                     slurm_max_num_timeout=args.max_timeouts)
    slurm = {"slurm_partition": args.partition, "slurm_account": args.account,
             "slurm_constraint": args.constraint, "slurm_qos": args.qos,
             "slurm_signal_delay_s": args.signal_delay_s, "slurm_array_parallelism": args.array_parallelism,
             "slurm_setup": args.setup or None, "slurm_additional_parameters": {"requeue": True}}
    executor.update_parameters(name=args.job_name, timeout_min=args.time, nodes=args.nodes,
                               tasks_per_node=args.tasks_per_node, gpus_per_node=args.gpus_per_node,
                               cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
                               **({k: v for k, v in slurm.items() if v is not None} if args.cluster == "slurm" else {}))
    return executor


def submit(specs: list[RunSpec], executor: submitit.AutoExecutor) -> list[submitit.Job]:
    """Submit every spec as one job array (a single ``sbatch --array`` on SLURM)."""
    with executor.batch():
        jobs = [executor.submit(TrainingJob(spec)) for spec in specs]
    return jobs


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m e2mc submit``."""
    p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides for every run")
    p.add_argument("--config", help="configuration file; {method} is replaced by the method axis")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help=f"a grid axis: method, arm ({', '.join(ARMS)}) or a configuration key (repeatable)")
    p.add_argument("--grid-file", help="YAML with config, grid, overrides, output_root (--grid/--config add to it)")
    p.add_argument("--output-root", help="runs go to <root>/<method>/<label>/seed<seed> (default runs/grid)")
    p.add_argument("--cluster", choices=("slurm", "local", "debug"), default="slurm",
                   help="slurm: job array; local: subprocesses here; debug: in this process, one by one")
    p.add_argument("--log-dir", default="runs/submitit/%j", help="submitit's pickles and logs (%%j: job id)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their commands; submit nothing")
    p.add_argument("--wait", action="store_true",
                   help="wait for every job and print its status (on SLURM this needs sacct)")
    g = p.add_argument_group("resources (per job)")
    g.add_argument("--job-name", default="e2mc")
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--tasks-per-node", type=int, default=2, help="one task per GPU (the paper: 2 GPUs)")
    g.add_argument("--gpus-per-node", type=int, default=2, help="0 on CPU nodes")
    g.add_argument("--cpus-per-task", type=int, default=10)
    g.add_argument("--mem-gb", type=float)
    g.add_argument("--time", type=int, default=720, help="time limit in minutes")
    g = p.add_argument_group("SLURM")
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument("--constraint", help="node features, e.g. a100")
    g.add_argument("--qos")
    g.add_argument("--setup", action="append", default=[], metavar="COMMAND",
                   help="shell line run before srun, e.g. 'module load cuda/12.1' (repeatable)")
    g.add_argument("--signal-delay-s", type=int, default=120, help="USR2 this long before the time limit")
    g.add_argument("--array-parallelism", type=int, default=64, help="array tasks running at once")
    g.add_argument("--max-timeouts", type=int, default=3, help="requeues after timeouts before giving up "
                                                              "(preemptions are not counted)")


def submit_command(args: argparse.Namespace) -> int:
    """``python -m e2mc submit``: expand the grid, check every configuration, submit, print the jobs."""
    try:
        spec = read_grid_file(args.grid_file) if args.grid_file else {}
        axes = dict(spec.get("grid", {}))
        axes.update(parse_axis(item) for item in args.grid)
        config = args.config or spec.get("config")
        if not config:
            raise ClusterError("give --config (or config: in --grid-file), "
                               "e.g. --config configs/imagenet/{method}.yaml")
        specs = expand_grid(config, axes, [*spec.get("overrides", []), *args.overrides],
                            args.output_root or spec.get("output_root") or "runs/grid")
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run in specs:
            print(f"{run.output_dir}\n    {run.command()}")
        print(f"[e2mc] {len(specs)} run(s); nothing submitted (--dry-run)")
        return 0
    jobs = submit(specs, make_executor(args))
    print(f"[e2mc] submitted {len(jobs)} run(s) to {args.cluster}; submitit logs in {args.log_dir}", flush=True)
    for job, run in zip(jobs, specs, strict=True):
        print(f"{job.job_id}\t{run.output_dir}", flush=True)
    if not args.wait:
        return 0
    failed = 0
    for job, run in zip(jobs, specs, strict=True):
        try:
            # results(): one per task; a job of several tasks (one per GPU) refuses result()
            status = job.results()[0]["status"]
        except Exception as e:  # submitit re-raises the job's error; report it and go on
            status, failed = f"failed: {e}", failed + 1
        print(f"{job.job_id}\t{status}\t{run.output_dir}", flush=True)
    return 1 if failed else 0

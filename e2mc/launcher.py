"""``python -m e2mc submit``: a grid of training runs as one submitit job array (SLURM, local or debug).

    python -m e2mc submit --config 'configs/imagenet/{method}.yaml' --grid method=vicreg,swav,simsiam \\
        --grid arm=original,e2mc --grid train.seed=0,1,2 --partition gpu --account me
    python -m e2mc submit --grid-file slurm/grids/swav_criteria.yaml --cluster slurm
    python -m e2mc submit --cluster debug --config configs/mini/vicreg.yaml --grid criterion.ent_coeff=1,10

Grid axes (``--grid KEY=V1,V2`` or the ``grid:`` mapping of a YAML file; every combination is one run):

* ``method``: fills ``{method}`` in the configuration path;
* ``arm``: a named arm of :data:`e2mc.naming.ARMS` (original, e2mc, entropy_only, uniformity, ...);
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
import os
import shlex
import signal
import string
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
import yaml

from e2mc import checkpoints
from e2mc.cluster import ClusterError, arm_overrides, check_time_limit, export_torch_distributed
from e2mc.config import ConfigError, load_config, read_yaml
from e2mc.methods import method_names
from e2mc.naming import ARMS
from e2mc.resources import (DEFAULT_CPUS_PER_TASK, SLURM_GPUS_PER_NODE, Resources, check_fits, job_python,
                            node_resources, resources)
from e2mc.runfolder import run_folder
from e2mc.runs import run_training

SPECIAL_AXES = ("method", "arm")


@dataclass(frozen=True)
class RunSpec:
    """One grid point: what ``python -m e2mc continue --config <config> <overrides>`` would run."""

    method: str
    config: str                  # configuration file
    overrides: tuple[str, ...]   # key=value, train.output_dir last
    output_dir: str
    point: tuple[tuple[str, Any], ...]  # the grid axes' values of this run, in axis order

    def argv(self) -> list[str]:
        return ["python", "-m", "e2mc", "continue", "--config", self.config, *self.overrides]

    def command(self) -> str:
        return shlex.join(self.argv())


class TrainingJob(submitit.helpers.Checkpointable):
    """Trains one :class:`RunSpec`; resubmitted by submitit on preemption or timeout, and resumes.

    Its state is the checkpoint that training writes in ``output_dir``, not Python objects, so the
    resubmitted job is this same object with the same spec.
    """

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec

    def __call__(self) -> dict[str, Any]:
        export_torch_distributed()  # several tasks per job: torch.distributed from SLURM's variables
        sys.argv = self.spec.argv()  # provenance records the e2mc command this job runs, not submitit's _submit.py
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
            values.append(read_yaml(text[start:i], f"the --grid value {text[start:i]!r}"))
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
    if not isinstance(config, str):
        raise ClusterError(f"the configuration path must be a string, got {config!r}")
    if not isinstance(output_root, str) or not output_root:
        raise ClusterError(f"output_root must be a folder path, got {output_root!r}")
    try:
        placeholders = {name for _, name, _, _ in string.Formatter().parse(config) if name is not None}
    except ValueError as e:  # a lone { or }
        raise ClusterError(f"configuration path {config!r}: {e}") from None
    if placeholders - {"method"}:
        raise ClusterError(f"configuration path {config!r} has the placeholder(s) "
                           f"{', '.join('{' + p + '}' for p in sorted(placeholders - {'method'}))}; only "
                           "{method} is filled (from the method axis)")
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
        if cfg.eval.every_epoch and not any(o.startswith("eval.seeds=") for o in run_overrides):
            # one probe per training run, seeded by it: a results folder then holds one result per seed
            # (as reproduce writes it), which its figures and tables need
            run_overrides.append(f"eval.seeds=[{cfg.train.seed}]")
            cfg = load_config(path, run_overrides)
        if cfg.train.init:  # a missing start checkpoint would fail only once the job runs
            try:
                checkpoints.require_file(cfg.train.init)
            except FileNotFoundError as e:
                raise ClusterError(f"grid point {point}: train.init: {e}") from None
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
    """A YAML grid: ``config``, ``grid`` (axis -> list), optional ``overrides`` and ``output_root``,
    each checked for its type here, before any configuration is read."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        problem = "not found" if isinstance(e, FileNotFoundError) else f"cannot be read ({e})"
        raise ClusterError(f"grid file {path!r} {problem}") from None
    try:
        spec = read_yaml(text, f"grid file {path}")
    except ConfigError as e:
        raise ClusterError(str(e)) from None
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise ClusterError(f"{path}: a grid file is a mapping of config, grid, overrides and output_root, "
                           f"not a {type(spec).__name__}")
    unknown = set(spec) - {"config", "grid", "overrides", "output_root"}
    if unknown:
        raise ClusterError(f"{path}: a grid file is a mapping of config, grid, overrides and output_root; "
                           f"unknown keys {sorted(map(str, unknown))}")
    for key in ("config", "output_root"):
        if key in spec and not (isinstance(spec[key], str) and spec[key]):
            raise ClusterError(f"{path}: {key} must be a path, got {spec[key]!r}")
    if not isinstance(spec.get("grid", {}), dict) or not all(isinstance(a, str) for a in spec.get("grid", {})):
        raise ClusterError(f"{path}: grid must map axis names to lists of values")
    overrides = spec.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ClusterError(f"{path}: overrides must be a list of key=value strings, got {overrides!r}")
    return spec


# --- submission ---------------------------------------------------------------------------------

POLL_S = 5.0  # --wait: how often job states are read


def make_executor(args: argparse.Namespace, request: Resources) -> submitit.AutoExecutor:
    """A submitit executor for ``request`` (the SLURM options of ``args`` apply on SLURM only) whose jobs
    run :func:`job_python`."""
    executor = submitit.AutoExecutor(folder=args.log_dir, cluster=args.cluster,
                                     slurm_max_num_timeout=args.max_timeouts, slurm_python=job_python(),
                                     local_python=job_python())
    slurm = {"slurm_partition": args.partition, "slurm_account": args.account,
             "slurm_constraint": args.constraint, "slurm_qos": args.qos,
             "slurm_signal_delay_s": args.signal_delay_s, "slurm_array_parallelism": args.array_parallelism,
             "slurm_setup": args.setup or None, "slurm_additional_parameters": {"requeue": True}}
    executor.update_parameters(name=args.job_name, timeout_min=request.time_min, nodes=request.nodes,
                               tasks_per_node=request.tasks_per_node, gpus_per_node=request.gpus_per_node,
                               cpus_per_task=request.cpus_per_task, mem_gb=request.mem_gb,
                               **({k: v for k, v in slurm.items() if v is not None} if args.cluster == "slurm" else {}))
    return executor


def submit(specs: list[RunSpec], executor: submitit.AutoExecutor) -> list[submitit.Job]:
    """Submit every spec as one job array (a single ``sbatch --array`` on SLURM)."""
    with executor.batch():
        jobs = [executor.submit(TrainingJob(spec)) for spec in specs]
    return jobs


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help names each option's default, where it has one."""

    def _get_help_string(self, action):
        return action.help if action.default in (None, [], False) else super()._get_help_string(action)


class IntermixedParser(argparse.ArgumentParser):
    """Reads options and key=value words in any order (``submit --config c data.limit=64 --dry-run
    train.epochs=1``); plain argparse takes the positional words once and rejects the later ones."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:  # parse_known_intermixed_args calls back here for its two passes
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m e2mc submit`` (``p`` is made an :class:`IntermixedParser`)."""
    p.__class__ = IntermixedParser
    p.formatter_class = _DefaultsFormatter
    p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides for every run")
    p.add_argument("--config", help="configuration file; {method} is replaced by the method axis")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help=f"a grid axis: method, arm ({', '.join(ARMS)}) or a configuration key (repeatable)")
    p.add_argument("--grid-file", help="YAML with config, grid, overrides, output_root (--grid/--config add to it)")
    p.add_argument("--output-root", help="runs go to <root>/<method>/<label>/seed<seed> (default runs/grid)")
    p.add_argument("--cluster", choices=("slurm", "local", "debug"), default="slurm",
                   help="slurm: job array; local: subprocesses here; debug: in this process, one by one")
    p.add_argument("--log-dir", default="runs/submitit/%j", help="submitit's pickles and logs (%%j: job id)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the runs, their commands and resources; submit nothing")
    p.add_argument("--wait", action="store_true",
                   help="wait for every job, printing each as it ends (on SLURM this needs sacct)")
    g = p.add_argument_group("resources (per job; checked against sinfo before submitting to SLURM)")
    g.add_argument("--job-name", default="e2mc", help="SLURM's job name")
    g.add_argument("--nodes", type=int, default=1, help="nodes per run")
    g.add_argument("--tasks-per-node", type=int,
                   help="default: one per GPU, one without GPU (several CPU tasks share one run's batch)")
    g.add_argument("--gpus-per-node", type=int,
                   help=f"default: {SLURM_GPUS_PER_NODE} (the paper) on slurm, this machine's GPUs (at most "
                        f"{SLURM_GPUS_PER_NODE}) with --cluster local/debug; 0 on CPU nodes")
    g.add_argument("--cpus-per-task", type=int, default=DEFAULT_CPUS_PER_TASK,
                   help="data.workers follows it (one CPU for the training process)")
    g.add_argument("--mem-gb", type=float, help="default: the partition's (SLURM's DefMemPerCPU x CPUs)")
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


def wait_for(jobs: list[submitit.Job], specs: list[RunSpec]) -> int:
    """Wait for ``jobs``, printing each one's outcome as it ends and the count still running every
    :data:`POLL_S` seconds; returns the number that failed."""
    pending, failed, started = dict(zip(range(len(jobs)), jobs)), 0, time.monotonic()
    print(f"[e2mc] waiting for {len(jobs)} run(s); their logs are in the submitit folder", flush=True)
    while pending:
        for i, job in list(pending.items()):
            if not job.done():
                continue
            del pending[i]
            try:
                # results(): one per task; a job of several tasks (one per GPU) refuses result()
                status = job.results()[0]["status"]
            except Exception as e:  # submitit re-raises the job's error; report it and go on
                status, failed = f"failed: {e}", failed + 1
            print(f"{job.job_id}\t{status}\t{specs[i].output_dir}", flush=True)
        if pending:
            print(f"[e2mc] {len(pending)} run(s) still running after {time.monotonic() - started:.0f} s", flush=True)
            time.sleep(POLL_S)
    return failed


def submit_command(args: argparse.Namespace) -> int:
    """``python -m e2mc submit``: expand the grid, check every configuration and the resources, submit,
    print the jobs."""
    request = resources(args)
    try:
        spec = read_grid_file(args.grid_file) if args.grid_file else {}
        axes = dict(spec.get("grid", {}))
        given = [parse_axis(item) for item in args.grid]
        repeated = sorted({key for key, _ in given if sum(k == key for k, _ in given) > 1})
        if repeated:
            raise ClusterError(f"--grid {', '.join(repeated)} is given more than once; list all its values in "
                               "one --grid KEY=V1,V2")
        axes.update(given)
        config = args.config or spec.get("config")
        if not config:
            raise ClusterError("give --config (or config: in --grid-file), "
                               "e.g. --config configs/imagenet/{method}.yaml")
        specs = expand_grid(config, axes, [*spec.get("overrides", []), *args.overrides],
                            args.output_root or spec.get("output_root") or "runs/grid")
        if args.cluster == "slurm":
            check_time_limit(request.time_min * 60, args.signal_delay_s)
            if not args.dry_run:
                check_fits(request, node_resources(args.partition), args.partition)
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    where = f"{args.cluster}" + (f" partition {args.partition}" if args.partition else "")
    print(f"[e2mc] each run on {where}: {request.describe()}; jobs run {job_python()} "
          f"({'E2MC_PYTHON' if os.environ.get('E2MC_PYTHON') else 'this interpreter; set E2MC_PYTHON to change'})",
          flush=True)
    if args.dry_run:
        for run in specs:
            print(f"{run.output_dir}\n    {run.command()}")
        print(f"[e2mc] {len(specs)} run(s); nothing submitted (--dry-run)")
        return 0
    jobs = submit(specs, make_executor(args, request))
    print(f"[e2mc] submitted {len(jobs)} run(s) to {args.cluster}; submitit logs in {args.log_dir}", flush=True)
    for job, run in zip(jobs, specs, strict=True):
        print(f"{job.job_id}\t{run.output_dir}", flush=True)
    if not args.wait:
        return 0
    return 1 if wait_for(jobs, specs) else 0

"""What one run of ``python -m e2mc submit`` asks for, and whether the cluster can give it: the
defaults per cluster kind, the interpreter each job runs, and the check of a request against the nodes
``sinfo`` lists (a job no node can host would sit PENDING for ever)."""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import torch

from e2mc.cluster import ClusterError

# Resources of a run when not given: the paper's 2 GPUs on SLURM; on a local machine its GPUs (at most
# 2), none on CPU. One task per GPU, one task without GPU (several CPU tasks would split one run's
# batch over a gloo group on the same cores: slower, and not the single-process losses).
SLURM_GPUS_PER_NODE = 2
DEFAULT_CPUS_PER_TASK = 10


@dataclass(frozen=True)
class Resources:
    """What each run of a submission asks for (per job; SLURM's meaning of each field)."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    mem_gb: float | None         # None: the partition's default (SLURM: DefMemPerCPU x CPUs)
    time_min: int

    def describe(self) -> str:
        memory = f"{self.mem_gb:g} GB" if self.mem_gb else "the partition's default memory"
        return (f"{self.nodes} node(s) x {self.tasks_per_node} task(s), {self.gpus_per_node} GPU(s) per node, "
                f"{self.cpus_per_task} CPU(s) per task, {memory}, {self.time_min} min")


def local_gpus() -> int:
    return min(torch.cuda.device_count(), SLURM_GPUS_PER_NODE)


def resources(args: argparse.Namespace) -> Resources:
    """The resources of ``args``, defaults filled in for ``args.cluster`` (see the constants above)."""
    gpus = args.gpus_per_node
    if gpus is None:
        gpus = SLURM_GPUS_PER_NODE if args.cluster == "slurm" else local_gpus()
    tasks = args.tasks_per_node if args.tasks_per_node is not None else max(gpus, 1)
    return Resources(args.nodes, tasks, gpus, args.cpus_per_task, args.mem_gb, args.time)


def job_python() -> str:
    """The interpreter command each job runs: E2MC_PYTHON (may be several words, e.g. ``apptainer exec
    e2mc.sif python``), as for the slurm/ scripts, else the interpreter running ``submit``."""
    return os.environ.get("E2MC_PYTHON") or shlex.quote(sys.executable)


def node_resources(partition: str | None, run=subprocess.run) -> list[dict[str, Any]]:
    """One dict per node of ``partition`` (default: the default partition): its CPUs, memory in MB and
    GPUs, read from ``sinfo``. Raises ClusterError when sinfo fails or the partition has no node."""
    command = ["sinfo", "--Node", "--noheader", "--format=%P|%c|%m|%G"]
    try:
        result = run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ClusterError(f"cannot run sinfo ({e}); is this a SLURM login node? (--cluster local runs here)") from None
    if result.returncode != 0:
        raise ClusterError(f"sinfo failed: {result.stderr.strip()}")
    nodes = []
    for line in result.stdout.splitlines():
        name, cpus, memory, gres = (line.strip().split("|") + ["", "", "", ""])[:4]
        default = name.endswith("*")
        if (partition is None and not default) or (partition is not None and name.rstrip("*") != partition):
            continue
        gpus = sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,(]+)?:(\d+)", gres))
        nodes.append({"cpus": int(cpus.rstrip("+") or 0), "memory_mb": int(memory.rstrip("+") or 0), "gpus": gpus})
    if not nodes:
        where = f"partition {partition!r}" if partition else "a default partition"
        raise ClusterError(f"sinfo lists no node in {where}; choose one with --partition (sinfo lists them)")
    return nodes


def check_fits(request: Resources, nodes: list[dict[str, Any]], partition: str | None) -> None:
    """Raise a one-line ClusterError when no node of the partition can host ``request`` (the job
    would sit PENDING for ever, or be rejected for its gres), naming the option to change."""
    where = f"partition {partition}" if partition else "the default partition"
    cpus = request.tasks_per_node * request.cpus_per_task
    most_gpus, most_cpus = max(n["gpus"] for n in nodes), max(n["cpus"] for n in nodes)
    if request.gpus_per_node > most_gpus:
        fix = "--gpus-per-node 0 on CPU nodes" if most_gpus == 0 else f"--gpus-per-node {most_gpus} or fewer"
        raise ClusterError(f"{request.gpus_per_node} GPU(s) per node requested, but no node of {where} has more "
                           f"than {most_gpus} (sinfo's gres); pass {fix}")
    if cpus > most_cpus:
        raise ClusterError(f"{request.tasks_per_node} task(s) x {request.cpus_per_task} CPU(s) = {cpus} CPUs per node "
                           f"requested, but the largest node of {where} has {most_cpus}; lower --cpus-per-task or "
                           "--tasks-per-node")
    if request.mem_gb and request.mem_gb * 1024 > max(n["memory_mb"] for n in nodes):
        raise ClusterError(f"--mem-gb {request.mem_gb:g} requested, but the largest node of {where} has "
                           f"{max(n['memory_mb'] for n in nodes) / 1024:.1f} GB")
    fitting = [n for n in nodes if n["gpus"] >= request.gpus_per_node and n["cpus"] >= cpus and
               (not request.mem_gb or n["memory_mb"] >= request.mem_gb * 1024)]
    if len(fitting) < request.nodes:
        raise ClusterError(f"{request.nodes} node(s) requested, but only {len(fitting)} node(s) of {where} can host "
                           f"one run's share ({request.describe()}); lower --nodes")

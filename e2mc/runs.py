"""The one way a training run starts: from a configuration to a trained run folder, with its hooks.

Every launcher goes through :func:`run_training`: the command line (``python -m e2mc continue`` and
``pretrain``, which the sbatch scripts in ``slurm/`` call), ``python -m e2mc submit`` (submitit, every
cluster kind) and the mini reproduction. So whichever way a run starts, it sizes its threads and
data-loading workers from its allocation, evaluates after every epoch when ``eval.every_epoch`` is set,
and lives in the folder :func:`e2mc.runfolder.output_dir_of` names.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Any

import torch

from e2mc.config import Config
from e2mc.evaluation import make_epoch_probe_hook  # evaluation sits above training; only here do they meet
from e2mc.train import train


def allocated_cpus() -> int:
    """CPUs this process may use: SLURM's per-task allocation, else the CPU affinity mask."""
    for variable in ("SLURM_CPUS_PER_TASK",):
        if os.environ.get(variable, "").isdigit():
            return max(1, int(os.environ[variable]))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def allocated_threads() -> int:
    """Threads a run should use: ``OMP_NUM_THREADS`` when set, else :func:`allocated_cpus`."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    return int(threads) if threads.isdigit() and int(threads) > 0 else allocated_cpus()


@contextlib.contextmanager
def pinned_threads():
    """Size torch's intra-op thread pool to the allocation while a run trains (a 1-CPU task must not
    run 2 threads fighting for one core), and restore it afterwards (a caller's setting stays)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(allocated_threads())
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def sized_workers(cfg: Config) -> Config:
    """``cfg`` with ``data.workers`` at most the allocation's CPUs less one (the training process's): 8
    loader processes in a 2-CPU task only compete for its cores. ``data.workers`` says where the data is
    read, not what is computed, so the configuration's hash stays."""
    most = allocated_cpus() - 1
    if cfg.data.workers <= most:
        return cfg
    print(f"[e2mc] data.workers={cfg.data.workers} lowered to {most}: this task has {most + 1} CPU(s)",
          file=sys.stderr, flush=True)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, workers=most))


def epoch_hooks(cfg: Config) -> list:
    """The hooks a run's configuration asks for: evaluation after every epoch (``eval.every_epoch``)."""
    return [make_epoch_probe_hook(cfg)] if cfg.eval.every_epoch else []


def run_training(cfg: Config, extra_hooks: list | None = None) -> dict[str, Any]:
    """Train ``cfg`` in its run folder (resuming if it holds a checkpoint), with the hooks its
    configuration asks for; returns the run summary (see :func:`e2mc.train.train`)."""
    cfg = sized_workers(cfg)
    hooks = [*epoch_hooks(cfg), *(extra_hooks or [])]
    with pinned_threads():
        return train(cfg, epoch_end_hooks=hooks)

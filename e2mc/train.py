"""The training loop: continued pre-training (and pre-training from scratch) of any registered method.

:func:`train` runs one configuration to the end or until it is interrupted, in four steps, each
going down the layers once: :func:`setup` (process group, device, network, losses, run folder, data,
the weights of ``train.init``, optimizer), :func:`start` (resume from the run folder's checkpoint),
the epochs, and :func:`finish` (the summary). Each pass of the epochs first brings the run folder up
to date with the run (the checkpoint, this start's record, the epoch-end hooks), then trains the next
epoch (:func:`e2mc.epoch.train_one_epoch`, whose numbers an :class:`e2mc.meter.EpochMeter` keeps).
Everything a run writes lives in its run folder (:mod:`e2mc.runfolder`), which one process at a time
holds:

* ``checkpoint.pt``: model, optimiser, every rank's loss state (SwAV queue), RNG, position and the
  part-done epoch's meter (:mod:`e2mc.meter`); one file, written atomically at the end of every epoch
  and when SIGUSR1 / SIGUSR2 / SIGTERM / SIGINT (Ctrl-C) asks the run to stop. A restarted run resumes
  from it on its own, at the exact step, and only under the same training configuration; first it
  redoes the epoch-end hooks (per-epoch evaluation) that the last completed epoch still owed.
* ``metrics.jsonl``: one JSON line per ``log_every`` steps (``"kind": "step"``) and per epoch
  (``"kind": "epoch"``): every loss term, embedding diagnostics, learning rate, images/s. Each start
  or resume first writes a ``"kind": "segment"`` line (where it started, from what, and its
  provenance), so a run trained in several pieces says which code and machine trained each.
* ``config.yaml``, written with every checkpoint, and ``summary.json`` (with provenance).

The loop knows no method and no criterion by name: it asks the method (:mod:`e2mc.methods`) how views
reach the loss, and the criterion (:mod:`e2mc.criteria`) what it consumes. Evaluation after each
epoch comes in as ``epoch_end_hooks`` (see :mod:`e2mc.runs`); this module never imports evaluation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from e2mc import checkpoints
from e2mc.build import build_added_criterion, build_network, build_objective, build_stream, resolve_device
from e2mc.config import Config
from e2mc.errors import check_folder_path
from e2mc.criteria import get_criterion
from e2mc.distributed import StopRequest, end_distributed, init_distributed, is_distributed, rank, world_size
from e2mc.epoch import MultiViewNetwork, Run, restore_objective_state, save_checkpoint, train_one_epoch
from e2mc.meter import EpochMeter, MetricsLog
from e2mc.methods import get_method
from e2mc.optim import build_optimizer, learning_rate_schedule
from e2mc.provenance import provenance, repo_relative, write_json_atomic
from e2mc.releases import apply_optimizer_state
from e2mc.runfolder import check_resumable, hooks_done, output_dir_of, run_epoch_hooks
from e2mc.runlock import RunFolderError, RunLock

EpochHook = Callable[[int, nn.Module, Path], None]


# --- setup -------------------------------------------------------------------------------------

def setup(cfg: Config) -> Run:
    """Build the run from its configuration, each part once and from the top of the layers down: the
    launch's process group; the device, network, forward pass and losses (:mod:`e2mc.build`); the
    run folder, the file ``train.init`` names and the folders the run writes (a file in the way is
    named at once), before any data are read; the data stream; the weights of ``train.init`` unless
    the folder holds a checkpoint to resume from; the optimizer (with a release's state, when the
    method continues it), the learning rate of every step and the metrics log. Writes nothing."""
    owns_group = init_distributed()  # first: the data stream and the forward pass shard by its ranks
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # this rank's GPU, before any collective
    torch.manual_seed(cfg.train.seed)
    network = build_network(cfg)
    objective, added = build_objective(cfg), build_added_criterion(cfg)
    criterion, method = get_criterion(cfg.criterion.name), get_method(cfg.method)
    network.to(device)
    objective.to(device)
    if cfg.train.channels_last:
        network.to(memory_format=torch.channels_last)
    if is_distributed() and device.type == "cuda":
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    forward: nn.Module = MultiViewNetwork(network, method)
    if is_distributed():
        forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
    output_dir = output_dir_of(cfg)
    if cfg.train.output_dir is None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output_dir=str(output_dir)))
    # before any data are read: the file train.init names, and no file in the way of a folder the run writes
    fresh = not (output_dir / "checkpoint.pt").exists()
    if cfg.train.init and fresh:
        checkpoints.require_file(cfg.train.init)
    check_folder_path(output_dir, "train.output_dir")
    if cfg.eval.results_dir:
        check_folder_path(cfg.eval.results_dir, "eval.results_dir")
    stream = build_stream(cfg, device)
    origin, release_optimizer = "random initialisation", None
    if cfg.train.init and fresh:  # a resumed run takes its weights from its checkpoint (start)
        origin, release_optimizer = checkpoints.load_initial_weights(cfg.train.init, method, network)
    lr_scaling = cfg.data.batch_size / 256 if cfg.optim.scale_lr else 1.0
    base_lr = cfg.optim.base_lr * lr_scaling
    bias_lr = None if cfg.optim.bias_base_lr is None else cfg.optim.bias_base_lr * lr_scaling
    optimizer = build_optimizer(cfg.optim.name, network, base_lr, cfg.optim.momentum, cfg.optim.weight_decay,
                                cfg.optim.eta, bias_lr)
    restore = cfg.train.restore_release_optimizer
    if release_optimizer and (method.restore_release_optimizer if restore is None else restore):
        apply_optimizer_state(optimizer, network, release_optimizer)  # as the E2MC authors continue VICReg's LARS
    steps = stream.steps_per_epoch
    learning_rates = learning_rate_schedule(cfg.optim.schedule, base_lr, cfg.train.epochs * steps,
                                            cfg.optim.warmup_epochs * steps)
    metrics = MetricsLog(output_dir / "metrics.jsonl", rank() == 0)
    section = cfg.to_dict()["criterion"]
    return Run(cfg, device, owns_group, output_dir, method, network, forward, objective, added, criterion.inputs, optimizer,
               stream, metrics, learning_rates, criterion.measured_transform(section, cfg.method), origin=origin)


FRESH, RESUME, ORPHANED = 0, 1, 2  # what start() finds in the run folder


def start(run: Run) -> dict[str, Any]:
    """Resume from the run folder's checkpoint when it holds one (a fresh run starts from the weights
    :func:`setup` loaded), and return this segment's record for ``metrics.jsonl``: the caller writes it
    once a checkpoint covers the folder, so that a folder holding records but no checkpoint was
    tampered with, and is refused here."""
    cfg, resume_path = run.cfg, run.output_dir / "checkpoint.pt"
    found = RESUME if resume_path.exists() else ORPHANED if run.metrics.size() > 0 else FRESH
    if is_distributed():  # rank 0 decides: the others must not see the epoch-0 checkpoint it writes next
        flag = torch.tensor([found], device=run.device)
        dist.broadcast(flag, 0)
        found = int(flag.item())
    if found == ORPHANED:
        raise RunFolderError(f"{run.output_dir} holds metrics.jsonl but no checkpoint.pt: it cannot resume, and "
                             "starting over would append a second run's records to the first's; choose a new "
                             "train.output_dir, or delete the folder to start clean")
    if found == RESUME:
        state = checkpoints.load_training(resume_path)
        check_resumable(state["config"], cfg, state["epoch"], resume_path)
        if run.metrics.size() < state["metrics_bytes"]:  # cut or replaced after the checkpoint: never padded
            raise RunFolderError(f"{run.metrics.path} holds {run.metrics.size()} bytes but {resume_path} recorded "
                                 f"{state['metrics_bytes']}: the metrics were cut or replaced after the checkpoint "
                                 "was written; restore the file, or start over in a new train.output_dir")
        restore_objective_state(run, state, resume_path)
        run.network.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        checkpoints.restore_rng_state(state["rng"])
        run.metrics.truncate(state["metrics_bytes"])
        run.epoch, run.step, run.global_step = state["epoch"], state["step"], state["global_step"]
        run.saved_at, run.carried = (run.epoch, run.step), state["epoch_sums"]
        run.earlier_seconds = float(state.get("run_seconds", 0.0))
        run.origin = f"resumed from {repo_relative(resume_path)} at epoch {run.epoch} step {run.step}"
    if run.main_process:
        print(f"[e2mc] {cfg.method} + {cfg.criterion.name} on {run.device}, world size {world_size()}; "
              f"{run.origin}", flush=True)
    return {"kind": "segment", "epoch": run.epoch, "step": run.step, "global_step": run.global_step,
            "origin": run.origin, "provenance": provenance(run.device)}


def finish(run: Run, status: str, stop: StopRequest) -> dict[str, Any]:
    """Write and return the run summary (``status`` "finished" or "interrupted"); ``seconds`` is the
    training time of every segment of the run together."""
    summary = {"status": status, "epoch": run.epoch, "global_step": run.global_step, "method": run.cfg.method,
               "criterion": run.cfg.criterion.name, "config_hash": run.cfg.hash(), "config": run.cfg.to_dict(),
               "seconds": run.run_seconds(), "provenance": provenance(run.device),
               "output_dir": str(run.output_dir)}
    if status == "interrupted":
        summary["signal"] = signal.Signals(stop.signal).name
    if run.main_process:
        write_json_atomic(run.output_dir / "summary.json", summary)
    return summary


def train(cfg: Config, epoch_end_hooks: list[EpochHook] | None = None) -> dict[str, Any]:
    """Train ``cfg`` to ``cfg.train.epochs`` (resuming from its run folder's checkpoint if there is one).

    ``epoch_end_hooks`` are called on rank 0 as ``hook(epochs_done, network, output_dir)`` after each
    epoch's checkpoint is written (evaluation after every epoch); a run resumed at the end of an epoch
    whose hooks did not all return (killed, or one raised) calls them again for that epoch first.
    Returns the run summary; its ``status`` is ``"finished"`` or ``"interrupted"``. Raises
    :class:`NonFiniteLossError`, :class:`RunFolderError` (:class:`RunFolderBusyError`), and ConfigError
    when the folder holds a run of another configuration.
    """
    run = setup(cfg)
    created = not run.output_dir.exists()
    run.output_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run.output_dir) if run.main_process else contextlib.nullcontext()
    hooks = epoch_end_hooks or []
    try:
        with lock, StopRequest() as stop:
            segment = start(run)
            while True:  # bring the run folder up to date with the run, then train the next epoch
                if run.saved_at != (run.epoch, run.step):  # a fresh start, an epoch's end, a stop mid-epoch
                    save_checkpoint(run)
                if segment is not None:  # only now: a folder holding records always holds a checkpoint
                    run.metrics.write(segment)
                    segment = None
                at_epoch_end = run.step == 0 and run.epoch > 0
                if run.main_process and hooks and at_epoch_end and hooks_done(run.output_dir) != run.epoch:
                    run_epoch_hooks(hooks, run.epoch, run.network, run.output_dir)  # new, or owed by a killed process
                if run.epoch >= run.cfg.train.epochs or stop.requested():  # a stop may arrive in the hooks
                    break
                train_one_epoch(run, EpochMeter(run.cfg.data.batch_size, run.step, run.carried), stop)
            summary = finish(run, "finished" if run.epoch >= run.cfg.train.epochs else "interrupted", stop)
    except BaseException:
        if created and run.main_process:  # a start that failed before writing anything leaves no folder
            with contextlib.suppress(OSError):
                run.output_dir.rmdir()
        raise
    if run.owns_process_group:  # not on an exception: a barrier could wait for ranks stuck elsewhere
        del run
        end_distributed()
    return summary

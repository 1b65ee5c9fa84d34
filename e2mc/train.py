"""The training loop: continued pre-training (and pre-training from scratch) of any registered method.

:func:`train` runs one configuration to the end or until it is interrupted, in four steps:
:func:`setup` (run folder, device, network, losses, process group, data, optimizer), :func:`start`
(resume from the run folder, or load ``train.init``), :func:`train_one_epoch` (repeated; its numbers
are kept by an :class:`e2mc.meter.EpochMeter`), and :func:`finish` (the summary). Everything a run
writes lives in its run folder (:mod:`e2mc.runfolder`), which one process at a time holds:

* ``checkpoint.pt``: model, optimiser, every rank's loss state (SwAV queue), RNG, position and the
  part-done epoch's meter (:mod:`e2mc.meter`); one file, written atomically at the end of every epoch
  and when SIGUSR1 / SIGUSR2 / SIGTERM / SIGINT (Ctrl-C) asks the run to stop. A restarted run resumes
  from it on its own, at the exact step, and only under the same training configuration; first it
  redoes the epoch-end hooks (per-epoch evaluation) that the last completed epoch still owed.
* ``metrics.jsonl``: one JSON line per ``log_every`` steps (``"kind": "step"``) and per epoch
  (``"kind": "epoch"``): every loss term, embedding diagnostics, learning rate, images/s. Each start
  or resume first writes a ``"kind": "segment"`` line (where it started, from what, and its
  provenance), so a run trained in several pieces says which code and machine trained each.
* ``config.yaml`` and ``summary.json`` (with provenance).

The loop knows no method and no criterion by name: it asks the method (:mod:`e2mc.methods`) how views
reach the loss, and the criterion (:mod:`e2mc.criteria`) what it consumes. Evaluation after each
epoch comes in as ``epoch_end_hooks`` (see :mod:`e2mc.runs`); this module never imports evaluation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from e2mc import checkpoints, releases
from e2mc.build import build_added_criterion, build_network, build_objective, load_initial_weights, resolve_device
from e2mc.config import Config, save_config
from e2mc.criteria import get_criterion
from e2mc.data.registry import get_dataset
from e2mc.diagnostics import embedding_stats
from e2mc.distributed import (StopRequest, end_distributed, gather_objects, init_distributed, is_distributed, rank,
                              world_size)
from e2mc.meter import EpochMeter
from e2mc.methods import Method, get_method
from e2mc.optim import build_optimizer, learning_rate, set_learning_rate
from e2mc.provenance import provenance, repo_relative, write_json_atomic
from e2mc.runfolder import (MetricsLog, RunFolderError, RunLock, check_resumable, hooks_done,
                            output_dir_of, record_hooks_done)

EpochHook = Callable[[int, nn.Module, Path], None]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the run stopped without touching its last checkpoint."""


# --- setup -------------------------------------------------------------------------------------

class MultiViewNetwork(nn.Module):
    """Runs the network on every view in one ``forward`` (one DDP call per step), the method's way."""

    def __init__(self, network: nn.Module, method: Method) -> None:
        super().__init__()
        self.network, self.method = network, method

    def forward(self, views: list[torch.Tensor]):
        return self.method.forward(self.network, views)


def compute_loss(method: Method, outputs, batch: int, objective: nn.Module, added: nn.Module | None,
                 network: nn.Module, consumes: Callable | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Total loss, its named terms, and the embedding of the first view (for diagnostics).

    Terms are prefixed: ``ssl_*`` from the method's loss, ``add_*`` from the added criterion, which
    receives ``consumes(views)`` (default: the two views)."""
    base, views = method.loss(outputs, batch, objective, network)
    terms = {f"ssl_{k}": v for k, v in base.items()}
    loss = base["loss"]
    if added is not None:
        extra = added(*(consumes(views) if consumes else (views.first, views.second)))
        terms.update({f"add_{k}": v for k, v in extra.items()})
        loss = loss + extra["loss"]
    terms["loss"] = loss
    return loss, terms, views.first


def build_stream(cfg: Config, device: torch.device):
    """The training batch stream for the configured dataset (its record in :mod:`e2mc.data.registry`)."""
    return get_dataset(cfg.data.dataset).train_stream(cfg.data, get_method(cfg.method), cfg.train.seed, device)


@dataclasses.dataclass
class Run:
    """Everything one training run holds between its steps."""

    cfg: Config
    device: torch.device
    owns_process_group: bool            # train() created the process group and ends it
    output_dir: Path
    method: Method
    network: nn.Module                  # the bare network (checkpoints, hooks)
    forward: nn.Module                  # MultiViewNetwork, wrapped in DDP when distributed
    objective: nn.Module
    added: nn.Module | None
    consumes: Callable
    optimizer: torch.optim.Optimizer
    stream: Any
    metrics: MetricsLog
    base_lr: float
    transform: str                      # under which the diagnostics are measured
    started: float = dataclasses.field(default_factory=time.time)
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    carried: dict = dataclasses.field(default_factory=dict)   # EpochMeter.state() of a part-done epoch
    earlier_seconds: float = 0.0        # training time of earlier segments of this run
    origin: str = ""

    @property
    def main_process(self) -> bool:
        return rank() == 0

    def run_seconds(self) -> float:
        return self.earlier_seconds + time.time() - self.started


def setup(cfg: Config) -> Run:
    """Build the run from its configuration, each part once and from the top of the layers down: the
    run folder (a file in its way is named at once); the device, network and losses (:mod:`e2mc.build`);
    the file ``train.init`` names, checked before any data are read; the process group; the forward
    pass, data stream and optimizer. Loads no weights (see :func:`start`)."""
    output_dir = output_dir_of(cfg)
    metrics = MetricsLog(output_dir / "metrics.jsonl", rank() == 0)
    if cfg.train.output_dir is None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output_dir=str(output_dir)))
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    network = build_network(cfg)
    objective, added = build_objective(cfg), build_added_criterion(cfg)
    criterion, method = get_criterion(cfg.criterion.name), get_method(cfg.method)
    if cfg.train.init and not (output_dir / "checkpoint.pt").exists():
        checkpoints.require_file(cfg.train.init)
    owns_group = init_distributed(device)
    network.to(device)
    objective.to(device)
    if cfg.train.channels_last:
        network.to(memory_format=torch.channels_last)
    if is_distributed() and device.type == "cuda":
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    forward: nn.Module = MultiViewNetwork(network, method)
    if is_distributed():
        forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
    stream = build_stream(cfg, device)
    lr_scaling = cfg.data.batch_size / 256 if cfg.optim.scale_lr else 1.0
    base_lr = cfg.optim.base_lr * lr_scaling
    bias_lr = None if cfg.optim.bias_base_lr is None else cfg.optim.bias_base_lr * lr_scaling
    optimizer = build_optimizer(cfg.optim.name, network, base_lr, cfg.optim.momentum, cfg.optim.weight_decay,
                                cfg.optim.eta, bias_lr)
    section = cfg.to_dict()["criterion"]
    return Run(cfg, device, owns_group, output_dir, method, network, forward, objective, added, criterion.inputs, optimizer,
               stream, metrics, base_lr, criterion.measured_transform(section, cfg.method))


FRESH, RESUME, ORPHANED = 0, 1, 2  # what start() finds in the run folder


def start(run: Run) -> None:
    """Resume from the run folder's checkpoint, or start from ``train.init`` (or random weights), and
    write the segment record; a fresh run saves epoch 0 first (resumable, and the baseline), so that a
    folder holding records but no checkpoint was tampered with, and is refused."""
    cfg, resume_path = run.cfg, run.output_dir / "checkpoint.pt"
    found = RESUME if resume_path.exists() else ORPHANED if run.metrics.size() > 0 else FRESH
    if is_distributed():  # rank 0 decides: the others must not see the epoch-0 checkpoint it writes below
        flag = torch.tensor([found], device=run.device)
        dist.broadcast(flag, 0)
        found = int(flag.item())
    if found == ORPHANED:
        raise RunFolderError(f"{run.output_dir} holds metrics.jsonl but no checkpoint.pt: it cannot resume, and "
                             "starting over would append a second run's records to the first's; choose a new "
                             "train.output_dir, or delete the folder to start clean")
    resuming = found == RESUME
    if resuming:
        state = checkpoints.load_training(resume_path)
        check_resumable(state["config"], cfg, state["epoch"], resume_path)
        run.network.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        checkpoints.restore_rng_state(state["rng"])
        run.metrics.truncate(state["metrics_bytes"], resume_path)
        _restore_objective_state(run, state, resume_path)
        run.epoch, run.step, run.global_step = state["epoch"], state["step"], state["global_step"]
        run.carried = state["epoch_sums"]
        run.earlier_seconds = float(state.get("run_seconds", 0.0))
        run.origin = f"resumed from {repo_relative(resume_path)} at epoch {run.epoch} step {run.step}"
    elif cfg.train.init:
        run.origin, released = load_initial_weights(cfg.train.init, cfg.method, run.network,
                                                    cfg.train.restore_release_optimizer)
        if released:  # continue with the release's momentum, as the authors' code does
            releases.apply_optimizer_state(run.optimizer, run.network, released)
    else:
        run.origin = "random initialisation"
    if not resuming:  # before any record: a folder with records always has a checkpoint
        save_checkpoint(run)
    if run.main_process:
        save_config(cfg, run.output_dir / "config.yaml")
        print(f"[e2mc] {cfg.method} + {cfg.criterion.name} on {run.device}, world size {world_size()}; "
              f"{run.origin}", flush=True)
    run.metrics.write({"kind": "segment", "epoch": run.epoch, "step": run.step, "global_step": run.global_step,
                       "origin": run.origin, "provenance": provenance(run.device)})


def _restore_objective_state(run: Run, state: dict, path: Path) -> None:
    """Load this rank's loss state from the checkpoint (or, for an older run folder, from its
    ``loss-state-rank<r>.pt``); refuse to resume without it, which would not be exact."""
    if not run.objective.state_dict():
        return
    states = state.get("objective_states")
    if states is None:
        legacy = run.output_dir / f"loss-state-rank{rank()}.pt"  # before the loss state moved into checkpoint.pt
        if not legacy.exists():
            raise RunFolderError(f"{path} holds no loss state ({run.cfg.method}'s queue) and {legacy} is missing: "
                                 "resuming would restart with an empty queue, not exactly; restore the file, or "
                                 "start over in a new train.output_dir")
        own = checkpoints.load(legacy, map_location=run.device)
    elif len(states) != world_size():
        raise RunFolderError(f"{path} holds the loss state of {len(states)} processes but this run has "
                             f"{world_size()}; resume with {len(states)}")
    else:
        own = states[rank()]
    run.objective.load_state_dict(own)


def save_checkpoint(run: Run, meter: EpochMeter | None = None) -> None:
    """Write the state to resume at (``run.epoch``, ``run.step``) into one file on rank 0: the model,
    optimizer, RNG and every rank's loss state together, so a kill leaves all of it old or all new.
    ``meter`` is the part-done epoch's (saved as ``epoch_sums``), so that its line after a resume is the
    one an uninterrupted run writes."""
    # every rank's loss state (the SwAV queue differs between ranks), on CPU: a collective
    own = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in run.objective.state_dict().items()}
    objective_states = gather_objects(own) if own else None
    if run.main_process:
        state = {
            "format": checkpoints.FORMAT, "method": run.cfg.method, "config": run.cfg.to_dict(),
            "epoch": run.epoch, "step": run.step, "global_step": run.global_step,
            "model": run.network.state_dict(), "optimizer": run.optimizer.state_dict(),
            "rng": checkpoints.capture_rng_state(), "metrics_bytes": run.metrics.size(),
            "epoch_sums": meter.state() if meter else {}, "run_seconds": run.run_seconds(),
        }
        if objective_states is not None:
            state["objective_states"] = objective_states
        if run.cfg.train.keep_epoch_checkpoints and run.step == 0:
            # before checkpoint.pt: a kill in between resumes the epoch, which writes this file again
            checkpoints.export_slim(state, run.output_dir / f"checkpoint-epoch{run.epoch:03d}.pt")
        checkpoints.save_atomic(state, run.output_dir / "checkpoint.pt")
        for legacy in run.output_dir.glob("loss-state-rank*.pt"):  # superseded by objective_states
            legacy.unlink(missing_ok=True)
    if is_distributed():
        dist.barrier()


# --- the loop ---------------------------------------------------------------------------------

def train_one_epoch(run: Run, stop: StopRequest) -> bool:
    """Train from (``run.epoch``, ``run.step``) to the end of the epoch, log it and save the checkpoint.

    Returns False when a stop signal interrupted the epoch (its state is saved to resume at the next
    step). Raises :class:`NonFiniteLossError` on a NaN or inf loss, without touching the checkpoint."""
    cfg, network = run.cfg, run.network
    network.train()
    meter, run.carried = EpochMeter(cfg.data.batch_size, run.step, run.carried), {}
    steps_per_epoch = run.stream.steps_per_epoch
    total_steps, warmup_steps = cfg.train.epochs * steps_per_epoch, cfg.optim.warmup_epochs * steps_per_epoch
    lr = None
    progress = tqdm(total=steps_per_epoch, initial=run.step, desc=f"epoch {run.epoch + 1}", leave=False,
                    disable=not (run.main_process and sys.stderr.isatty()))
    for step, views in enumerate(run.stream.epoch(run.epoch, run.step), start=run.step):
        lr = learning_rate(cfg.optim.schedule, run.base_lr, run.global_step, total_steps, warmup_steps)
        set_learning_rate(run.optimizer, lr)
        if cfg.train.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        run.method.before_step(network)
        try:
            with torch.autocast(run.device.type, dtype=torch.bfloat16,
                                enabled=run.device.type == "cuda" and cfg.train.amp):
                outputs = run.forward(views)
                loss, terms, z1 = compute_loss(run.method, outputs, views[0].shape[0], run.objective, run.added,
                                               network, run.consumes)
        except FloatingPointError as e:  # a criterion refused non-finite embeddings
            raise NonFiniteLossError(_non_finite_report({}, run, step, lr, str(e))) from e
        if not torch.isfinite(loss):
            raise NonFiniteLossError(_non_finite_report(terms, run, step, lr))
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        values = {k: v.item() for k, v in terms.items()}
        meter.update(values)
        run.global_step += 1
        if run.global_step % cfg.train.log_every == 0 or step == steps_per_epoch - 1:
            stats = embedding_stats(z1, run.transform)
            meter.update_diagnostics(stats)
            run.metrics.write({"kind": "step", "epoch": run.epoch, "step": step, "global_step": run.global_step,
                               "lr": lr, **values, **stats, "images_per_s": meter.window_rate(step, cfg.train.log_every)})
        progress.update(1)
        progress.set_postfix(loss=f"{values['loss']:.4f}")
        if stop.requested(run.device):
            run.step = step + 1
            save_checkpoint(run, meter)
            progress.close()
            return False
    progress.close()
    run.epoch, run.step = run.epoch + 1, 0
    record = {"kind": "epoch", "epoch": run.epoch, "global_step": run.global_step,
              **meter.epoch_record(steps_per_epoch), "lr": lr if meter.counted else None}
    run.metrics.write(record)
    save_checkpoint(run)
    if run.main_process:
        print(f"[e2mc] epoch {run.epoch}/{cfg.train.epochs}: loss {record.get('loss', float('nan')):.4f}, "
              f"{record['images_per_s']:.0f} images/s", flush=True)
    return True


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
    status = "finished"
    try:
        with lock, StopRequest() as stop:
            start(run)
            if run.step == 0 and run.epoch > 0 and hooks_done(run.output_dir) != run.epoch:
                _run_hooks(run, hooks)  # the last completed epoch's evaluation was lost with its process
            while run.epoch < run.cfg.train.epochs:
                if not train_one_epoch(run, stop):
                    status = "interrupted"
                    break
                _run_hooks(run, hooks)
                if run.epoch < run.cfg.train.epochs and stop.requested(run.device):  # arrived during the hooks
                    status = "interrupted"
                    break
            summary = finish(run, status, stop)
    except BaseException:
        if created and run.main_process:  # a start that failed before writing anything leaves no folder
            with contextlib.suppress(OSError):
                run.output_dir.rmdir()
        raise
    if run.owns_process_group:  # not on an exception: a barrier could wait for ranks stuck elsewhere
        del run
        end_distributed()
    return summary


def _run_hooks(run: Run, hooks: list[EpochHook]) -> None:
    """Call the epoch-end hooks for ``run.epoch`` on rank 0, then record that they all returned."""
    if run.main_process and hooks:
        for hook in hooks:
            hook(run.epoch, run.network, run.output_dir)
        record_hooks_done(run.output_dir, run.epoch)


def _non_finite_settings(tree: Any, prefix: str = "") -> list[str]:
    """The dotted keys of ``tree`` (a configuration dict) whose numbers are NaN or inf."""
    if isinstance(tree, dict):
        return [k for key, value in tree.items() for k in _non_finite_settings(value, f"{prefix}{key}.")]
    if isinstance(tree, (list, tuple)):
        return [k for i, value in enumerate(tree) for k in _non_finite_settings(value, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if isinstance(tree, float) and not math.isfinite(tree) else []


def _non_finite_report(terms: dict[str, torch.Tensor], run: Run, step: int, lr: float, cause: str = "") -> str:
    """What went wrong and what to do that works: a run resumes only under its own settings, so a
    rerun hits the same NaN; a new run can start from the last good weights with a lower LR."""
    values = cause or ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
    last_good = run.output_dir / "checkpoint.pt"
    report = (f"non-finite loss at epoch {run.epoch} step {step} (lr {lr:.4g}): {values}. The run stopped; "
              f"{last_good} still holds the last good state. ")
    infinite = _non_finite_settings(run.cfg.to_dict())
    if infinite:
        return report + f"The configuration sets {', '.join(infinite)} to a non-finite number: give a finite value."
    return report + ("Rerunning the same command resumes into the same loss. To go on from the last good "
                     f"weights, start a new run from them with a lower learning rate: `python -m e2mc continue` "
                     f"with train.init={last_good}, a lower optim.base_lr and a new train.output_dir; or check "
                     "the inputs and the initial checkpoint.")

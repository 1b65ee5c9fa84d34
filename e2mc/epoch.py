"""One epoch of training: the steps of continued pre-training (and pre-training from scratch) of any
registered method, and the state a run carries from step to step (:class:`Run`).

:func:`train_one_epoch` runs the steps from where the run stands to the end of the epoch: the method's
forward pass and loss plus the added criterion (:func:`compute_loss`), the diagnostics of the step's
embedding, the update at the step's learning rate (laid out before training), and a line in
``metrics.jsonl`` every ``log_every`` steps and at the end of the epoch, whose numbers an
:class:`e2mc.meter.EpochMeter` keeps. :func:`save_checkpoint` writes the state to resume at. Setting a
run up, resuming it and running its epochs is :mod:`e2mc.train`'s.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from e2mc import checkpoints
from e2mc.config import Config
from e2mc.diagnostics import embedding_stats
from e2mc.distributed import StopRequest, gather_objects, is_distributed, rank, world_size
from e2mc.meter import EpochMeter, MetricsLog
from e2mc.methods import Method
from e2mc.optim import set_learning_rate
from e2mc.provenance import write_atomic
from e2mc.runlock import RunFolderError


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the run stopped without touching its last checkpoint."""


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
    learning_rates: np.ndarray          # (total steps,) the rate of every step (optim.learning_rate_schedule)
    transform: str                      # under which the diagnostics are measured
    started: float = dataclasses.field(default_factory=time.time)
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    carried: dict = dataclasses.field(default_factory=dict)   # EpochMeter.state() of a part-done epoch
    earlier_seconds: float = 0.0        # training time of earlier segments of this run
    origin: str = ""                    # where this segment's weights came from
    saved_at: tuple[int, int] | None = None  # (epoch, step) of the checkpoint in the run folder

    @property
    def main_process(self) -> bool:
        return rank() == 0

    def run_seconds(self) -> float:
        return self.earlier_seconds + time.time() - self.started


def save_checkpoint(run: Run) -> None:
    """Write the state to resume at (``run.epoch``, ``run.step``) on rank 0: one file holding the model,
    optimizer, RNG and every rank's loss state together, so a kill leaves all of it old or all new;
    with ``train.keep_epoch_checkpoints`` the epoch's slim copy before it; and ``config.yaml``.
    ``run.carried``, the part-done epoch's meter, is saved as ``epoch_sums``, so that its line after a
    resume is the one an uninterrupted run writes."""
    # every rank's loss state (the SwAV queue differs between ranks), on CPU: a collective
    own = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in run.objective.state_dict().items()}
    objective_states = gather_objects(own) if own else None
    if run.main_process:
        config = run.cfg.to_yaml()
        state = {
            "format": checkpoints.FORMAT, "method": run.cfg.method, "config": run.cfg.to_dict(),
            "epoch": run.epoch, "step": run.step, "global_step": run.global_step,
            "model": run.network.state_dict(), "optimizer": run.optimizer.state_dict(),
            "rng": checkpoints.capture_rng_state(), "metrics_bytes": run.metrics.size(),
            "epoch_sums": run.carried, "run_seconds": run.run_seconds(),
        }
        if objective_states is not None:
            state["objective_states"] = objective_states
        files = [(run.output_dir / "checkpoint.pt", state)]
        if run.cfg.train.keep_epoch_checkpoints and run.step == 0:
            # the epoch's copy first: a kill in between resumes the epoch, which writes it again
            files.insert(0, (run.output_dir / f"checkpoint-epoch{run.epoch:03d}.pt", checkpoints.slim(state)))
        for path, content in files:
            checkpoints.save_atomic(content, path)
        write_atomic(run.output_dir / "config.yaml", config)
        for legacy in run.output_dir.glob("loss-state-rank*.pt"):  # superseded by objective_states
            legacy.unlink(missing_ok=True)
    if is_distributed():
        dist.barrier()
    run.saved_at = (run.epoch, run.step)


def restore_objective_state(run: Run, state: dict, path: Path) -> None:
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


def train_one_epoch(run: Run, meter: EpochMeter, stop: StopRequest) -> bool:
    """Train from (``run.epoch``, ``run.step``) to the end of the epoch and log it; the caller saves
    the checkpoint (:func:`save_checkpoint`). ``meter``: the epoch's numbers, new or (resuming a
    part-done epoch) made from the checkpoint's.

    Returns False when a stop signal interrupted the epoch: ``run.step`` is then the next step and
    ``run.carried`` the part-done epoch's meter, which the checkpoint saves. Raises
    :class:`NonFiniteLossError` on a NaN or inf loss, before the checkpoint is touched."""
    cfg, network = run.cfg, run.network
    network.train()
    run.carried = {}
    steps_per_epoch = run.stream.steps_per_epoch
    lr = None
    progress = tqdm(total=steps_per_epoch, initial=run.step, desc=f"epoch {run.epoch + 1}", leave=False,
                    disable=not (run.main_process and sys.stderr.isatty()))
    for step, views in enumerate(run.stream.epoch(run.epoch, run.step), start=run.step):
        # (past the end only when a resume with another number of processes shortened the epochs)
        lr = float(run.learning_rates[min(run.global_step, len(run.learning_rates) - 1)])
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
        logged = (run.global_step + 1) % cfg.train.log_every == 0 or step == steps_per_epoch - 1
        stats = embedding_stats(z1, run.transform) if logged else {}  # of the embedding the step trained on
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        set_learning_rate(run.optimizer, lr)
        run.optimizer.step()
        values = {k: v.item() for k, v in terms.items()}
        meter.update(values)
        run.global_step += 1
        if logged:
            meter.update_diagnostics(stats)
            rate = meter.window_rate(step, cfg.train.log_every)
            run.metrics.write({"kind": "step", "epoch": run.epoch, "step": step, "global_step": run.global_step,
                               "lr": lr, **values, **stats, "images_per_s": rate})
        progress.update(1)
        progress.set_postfix(loss=f"{values['loss']:.4f}")
        if stop.requested():
            run.step, run.carried = step + 1, meter.state()
            progress.close()
            return False
    progress.close()
    run.epoch, run.step = run.epoch + 1, 0
    record = {"kind": "epoch", "epoch": run.epoch, "global_step": run.global_step,
              **meter.epoch_record(steps_per_epoch), "lr": lr if meter.counted else None}
    run.metrics.write(record)
    if run.main_process:
        print(f"[e2mc] epoch {run.epoch}/{cfg.train.epochs}: loss {record.get('loss', float('nan')):.4f}, "
              f"{record['images_per_s']:.0f} images/s", flush=True)
    return True


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

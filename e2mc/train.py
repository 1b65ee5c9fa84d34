"""The training loop: continued pre-training (and pre-training from scratch) of any registered method.

:func:`train` runs one configuration to the end or until it is interrupted, in four steps:
:func:`setup` (device, process group, network, objective, criterion, optimizer, data), :func:`start`
(resume from the run folder, or load ``train.init``), :func:`train_one_epoch` (repeated), and
:func:`finish` (the summary). Everything a run writes lives in its run folder ``cfg.train.output_dir``:

* ``checkpoint.pt``: model, optimiser, loss state (SwAV queue), RNG, position; written atomically at
  the end of every epoch and when SIGUSR1 / SIGUSR2 / SIGTERM asks the run to stop. A restarted run
  resumes from it on its own, at the exact step, and only under the same training configuration.
* ``metrics.jsonl``: one JSON line per ``log_every`` steps (``"kind": "step"``) and per epoch
  (``"kind": "epoch"``): every loss term, embedding diagnostics, learning rate, images/s. Each start
  or resume first writes a ``"kind": "segment"`` line (where it started, from what, and its
  provenance), so a run trained in several pieces says which code and machine trained each.
* ``config.yaml``, ``summary.json`` (with provenance) and ``run.lock``, held by the process training
  in the folder so that a second one cannot write into it at the same time.

The loop knows no method and no criterion by name: it asks the method (:mod:`e2mc.methods`) how views
reach the loss, and the criterion (:mod:`e2mc.criteria`) what it consumes. Evaluation after each
epoch comes in as ``epoch_end_hooks`` (see :mod:`e2mc.runs`); this module never imports evaluation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gc
import json
import os
import signal
import socket
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from e2mc import checkpoints
from e2mc.batches import LoaderViews, TensorViews
from e2mc.build import (CHECKPOINT_FORMAT, build_added_criterion, build_network, build_objective,  # noqa: F401
                        load_initial_weights, resolve_device)
from e2mc.config import LOCATION_FIELDS, Config, ConfigError, save_config
from e2mc.criteria import get_criterion
from e2mc.diagnostics import embedding_stats
from e2mc.distributed import is_distributed, rank, world_size
from e2mc.errors import UserError, write_error
from e2mc.methods import Method, get_method
from e2mc.naming import infer_arm
from e2mc.optim import build_optimizer, learning_rate, set_learning_rate
from e2mc.provenance import provenance, repo_relative, write_json_atomic

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
EpochHook = Callable[[int, nn.Module, Path], None]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the run stopped without touching its last checkpoint."""


class RunFolderBusyError(UserError, RuntimeError):
    """Another process is training in this run folder."""


# --- the run folder ----------------------------------------------------------------------------

class RunLock:
    """An exclusive lock on a run folder (``run.lock``), held while a process trains in it.

    The lock is an ``flock`` on the file, so the kernel releases it when its process dies: a lock
    left by a killed run is free at once. The file says who holds it (pid, host, start time)."""

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / "run.lock"
        self._handle = None

    def __enter__(self) -> "RunLock":
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunFolderBusyError(f"{self.path.parent} is in use by {holder}; wait for that run to end, or "
                                     "choose another train.output_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def remove_partial_writes(output_dir: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed process left (``.<name>.*.tmp``);
    only call it while holding the folder's :class:`RunLock`."""
    removed = [p for p in Path(output_dir).glob(".*.tmp") if p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


# Configuration keys a resumed run may change: where things are, and what does not alter training.
RESUMABLE_CHANGES = {f"{section}.{key}" for section, key in LOCATION_FIELDS} | {
    "train.epochs", "train.device", "train.keep_epoch_checkpoints", "train.log_every"}


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("heads", "params", "datasets"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resumable(saved_config: dict, cfg: Config, done_epochs: int, path: Path) -> None:
    """A run resumes only under the configuration that trained it: every key that alters training
    must be equal (evaluation settings, locations and the device may change), and ``train.epochs``
    may only grow (and only with a constant learning rate, whose schedule does not depend on it)."""
    from e2mc.config import config_from_dict

    saved = _flatten(config_from_dict(json.loads(json.dumps(saved_config))).to_dict())
    ours = _flatten(cfg.to_dict())
    differing = sorted(k for k in set(saved) | set(ours)
                       if saved.get(k) != ours.get(k) and k not in RESUMABLE_CHANGES and not k.startswith("eval."))
    if saved["train.epochs"] != ours["train.epochs"]:
        if ours["train.epochs"] < done_epochs:
            differing.append("train.epochs (below the epochs already trained)")
        elif cfg.optim.schedule != "constant":
            differing.append("train.epochs (the cosine schedule is laid out over it)")
    if differing:
        listing = ", ".join(f"{k}: {saved.get(k.split(' ')[0])!r} -> {ours.get(k.split(' ')[0])!r}"
                            for k in differing[:6])
        raise ConfigError(f"{path} was trained with another configuration ({listing}); resume with the same "
                          f"settings, or start over in a new train.output_dir (or delete {path.parent})")


def default_output_dir(cfg: Config) -> Path:
    """The run folder when ``train.output_dir`` is not set: ``runs/<scale>/<method>/<arm>/seed<seed>``,
    the convention of every launcher (see :func:`e2mc.runs.run_folder`)."""
    scale = "mini" if cfg.data.dataset == "fashion_mnist" else cfg.data.dataset
    return Path("runs") / scale / cfg.method / infer_arm(cfg.to_dict()) / f"seed{cfg.train.seed}"


# --- setup -------------------------------------------------------------------------------------

def init_distributed(device: torch.device) -> bool:
    """Join the process group described by the environment (torchrun, or SLURM through e2mc.cluster);
    True when this call created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return True
    return False


def end_distributed() -> None:
    """Leave the process group cleanly: every rank past its last collective, DDP's buffers freed, then
    the group destroyed, so that interpreter shutdown never races the backend's threads (gloo's last
    all-reduce needing the GIL during finalisation aborted processes)."""
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()


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
    """The training batch stream for the configured dataset."""
    from e2mc import data

    if cfg.data.dataset == "fashion_mnist":
        images, _ = data.load_fashion_mnist("train", cfg.data.root)
        if cfg.data.limit is not None:
            images = images[:cfg.data.limit]
        return TensorViews(images, data.make_mini_augment(cfg.method).to(device), cfg.data.batch_size,
                           cfg.train.seed, rank(), world_size(), device)
    if cfg.data.root is None:
        raise UserError("data.dataset=imagenet needs data.root, the ImageNet train/ folder")
    dataset = data.imagenet_train_dataset(cfg.data.root, cfg.method)
    if cfg.data.limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(cfg.data.limit, len(dataset))))
    return LoaderViews(dataset, cfg.data.batch_size, cfg.train.seed, rank(), world_size(), cfg.data.workers, device)


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
    metrics: "MetricsLog"
    base_lr: float
    transform: str                      # under which the diagnostics are measured
    started: float = dataclasses.field(default_factory=time.time)
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    carried: dict = dataclasses.field(default_factory=dict)   # sums of a part-done epoch, from the checkpoint
    earlier_seconds: float = 0.0        # training time of earlier segments of this run
    origin: str = ""

    @property
    def main_process(self) -> bool:
        return rank() == 0

    def run_seconds(self) -> float:
        return self.earlier_seconds + time.time() - self.started


def setup(cfg: Config) -> Run:
    """Build the run: device and process group, the method's network, objective, added criterion,
    optimizer and data stream. Loads no weights (see :func:`start`)."""
    output_dir = Path(cfg.train.output_dir) if cfg.train.output_dir else default_output_dir(cfg)
    if cfg.train.init and not (output_dir / "checkpoint.pt").exists():
        checkpoints.require_file(cfg.train.init)  # the files the configuration names before the data
    device = resolve_device(cfg.train.device)
    owns_group = init_distributed(device)
    if cfg.train.output_dir is None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output_dir=str(output_dir)))
    method, criterion = get_method(cfg.method), get_criterion(cfg.criterion.name)
    torch.manual_seed(cfg.train.seed)
    network = build_network(cfg)
    objective, added = build_objective(cfg), build_added_criterion(cfg)
    network.to(device)
    objective.to(device)
    if cfg.train.channels_last:
        network.to(memory_format=torch.channels_last)
    if is_distributed() and device.type == "cuda":
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    stream = build_stream(cfg, device)
    lr_scaling = cfg.data.batch_size / 256 if cfg.optim.scale_lr else 1.0
    base_lr = cfg.optim.base_lr * lr_scaling
    bias_lr = None if cfg.optim.bias_base_lr is None else cfg.optim.bias_base_lr * lr_scaling
    optimizer = build_optimizer(cfg.optim.name, network, base_lr, cfg.optim.momentum, cfg.optim.weight_decay,
                                cfg.optim.eta, bias_lr)
    forward: nn.Module = MultiViewNetwork(network, method)
    if is_distributed():
        forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
    section = cfg.to_dict()["criterion"]
    return Run(cfg, device, owns_group, output_dir, method, network, forward, objective, added, criterion.inputs, optimizer,
               stream, MetricsLog(output_dir / "metrics.jsonl", rank() == 0), base_lr,
               criterion.measured_transform(section, cfg.method))


def start(run: Run) -> None:
    """Resume from the run folder's checkpoint, or start from ``train.init`` (or random weights), and
    write the segment record; a fresh run saves epoch 0 at once (resumable, and the baseline)."""
    cfg, resume_path = run.cfg, run.output_dir / "checkpoint.pt"
    resuming = resume_path.exists()
    if is_distributed():  # rank 0 decides: the others must not see the epoch-0 checkpoint it writes below
        flag = torch.tensor([int(resuming)], device=run.device)
        dist.broadcast(flag, 0)
        resuming = bool(flag.item())
    if resuming:
        state = checkpoints.load(resume_path)
        if not (isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT):
            raise checkpoints.CheckpointError(f"{resume_path} is not a training checkpoint of e2mc; move it away")
        check_resumable(state["config"], cfg, state["epoch"], resume_path)
        run.network.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        checkpoints.restore_rng_state(state["rng"])
        run.metrics.truncate(state["metrics_bytes"])
        loss_state = _objective_state_path(run.output_dir, rank())
        if loss_state.exists():
            run.objective.load_state_dict(checkpoints.load(loss_state, map_location=run.device))
        run.epoch, run.step, run.global_step = state["epoch"], state["step"], state["global_step"]
        run.carried = state["epoch_sums"]
        run.earlier_seconds = float(state.get("run_seconds", 0.0))
        run.origin = f"resumed from {repo_relative(resume_path)} at epoch {run.epoch} step {run.step}"
    elif cfg.train.init:
        run.origin, released = load_initial_weights(cfg.train.init, cfg.method, run.network,
                                                    cfg.train.restore_release_optimizer)
        if released:  # continue with the release's momentum, as the authors' code does
            checkpoints.apply_optimizer_state(run.optimizer, run.network, released)
    else:
        run.origin = "random initialisation"
    if run.main_process:
        save_config(cfg, run.output_dir / "config.yaml")
        print(f"[e2mc] {cfg.method} + {cfg.criterion.name} on {run.device}, world size {world_size()}; "
              f"{run.origin}", flush=True)
    run.metrics.write({"kind": "segment", "epoch": run.epoch, "step": run.step, "global_step": run.global_step,
                       "origin": run.origin, "provenance": provenance(run.device)})
    if not resuming:
        save_checkpoint(run)


# --- interruption ------------------------------------------------------------------------------

class StopRequest:
    """Turns SIGUSR1, SIGUSR2 and SIGTERM into a flag the loop checks after every step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for s in STOP_SIGNALS:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave handlers alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def requested(self, device: torch.device) -> bool:
        """True on every rank as soon as any rank received a stop signal."""
        flag = torch.tensor([0 if self.signal is None else int(self.signal)], device=device)
        if is_distributed():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signal is None:
            self.signal = int(flag.item())
        return bool(flag.item())


# --- checkpoints and metrics -------------------------------------------------------------------

class MetricsLog:
    """Appends JSON lines on rank 0; on resume, cuts the file back to what the checkpoint had seen."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, size: int) -> None:
        if self.enabled and self.path.exists():
            with open(self.path, "r+b") as f:
                f.truncate(size)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            size = self.size()
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:  # full disk, ...: no half line, and no empty file, left behind
                with contextlib.suppress(OSError):
                    if size:
                        os.truncate(self.path, size)
                    else:
                        self.path.unlink()
                raise write_error(self.path, e) from e


def read_metrics(output_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``, in order; only those of ``kind`` ("step", "epoch",
    "segment") when given."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {output_dir} is not the output_dir of a training run")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]


def _objective_state_path(output_dir: Path, r: int) -> Path:
    return output_dir / f"loss-state-rank{r}.pt"


def save_checkpoint(run: Run, epoch_sums: dict[str, Any] | None = None) -> None:
    """Write the state to resume at (``run.epoch``, ``run.step``); rank 0 the model, every rank its loss
    state. ``epoch_sums`` carries the running sums of a part-done epoch, so that its summary line after
    a resume is the one an uninterrupted run writes."""
    if run.objective.state_dict():  # the SwAV queue differs between ranks
        checkpoints.save_atomic(run.objective.state_dict(), _objective_state_path(run.output_dir, rank()))
    if run.main_process:
        state = {
            "format": CHECKPOINT_FORMAT, "method": run.cfg.method, "config": run.cfg.to_dict(),
            "epoch": run.epoch, "step": run.step, "global_step": run.global_step,
            "model": run.network.state_dict(), "optimizer": run.optimizer.state_dict(),
            "rng": checkpoints.capture_rng_state(), "metrics_bytes": run.metrics.size(),
            "epoch_sums": epoch_sums or {}, "run_seconds": run.run_seconds(),
        }
        checkpoints.save_atomic(state, run.output_dir / "checkpoint.pt")
        if run.cfg.train.keep_epoch_checkpoints and run.step == 0:
            checkpoints.save_atomic({k: state[k] for k in ("format", "method", "config", "epoch", "model")},
                                    run.output_dir / f"checkpoint-epoch{run.epoch:03d}.pt")
    if is_distributed():
        dist.barrier()


# --- the loop ---------------------------------------------------------------------------------

def train_one_epoch(run: Run, stop: StopRequest) -> bool:
    """Train from (``run.epoch``, ``run.step``) to the end of the epoch, log it and save the checkpoint.

    Returns False when a stop signal interrupted the epoch (its state is saved to resume at the next
    step). Raises :class:`NonFiniteLossError` on a NaN or inf loss, without touching the checkpoint."""
    cfg, network = run.cfg, run.network
    network.train()
    # Running sums for the epoch line, and the epoch's time so far (carried over a resume).
    carried, run.carried = run.carried, {}
    sums: dict[str, float] = defaultdict(float, carried.get("sums", {}))
    diag_sums: dict[str, float] = defaultdict(float, carried.get("diag_sums", {}))
    counted, diag_counted = carried.get("counted", 0), carried.get("diag_counted", 0)
    earlier_seconds = carried.get("seconds", 0.0)
    segment_start = window_start = time.time()
    first_step, images_per_step = run.step, cfg.data.batch_size
    total_steps = cfg.train.epochs * run.stream.steps_per_epoch
    warmup_steps = cfg.optim.warmup_epochs * run.stream.steps_per_epoch
    lr = None
    progress = _progress(run.stream.steps_per_epoch, run.step, run.epoch, run.main_process)
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
        for k, v in values.items():
            sums[k] += v
        counted += 1
        run.global_step += 1
        if run.global_step % cfg.train.log_every == 0 or step == run.stream.steps_per_epoch - 1:
            stats = embedding_stats(z1, run.transform)
            for k, v in stats.items():
                diag_sums[k] += v
            diag_counted += 1
            now = time.time()
            window = min(cfg.train.log_every, step + 1 - first_step)  # steps since the last line or the resume
            run.metrics.write({"kind": "step", "epoch": run.epoch, "step": step, "global_step": run.global_step,
                               "lr": lr, **values, **stats,
                               "images_per_s": images_per_step * window / max(now - window_start, 1e-9)})
            window_start = now
        progress.update(1)
        progress.set_postfix(loss=f"{values['loss']:.4f}")
        if stop.requested(run.device):
            run.step = step + 1
            save_checkpoint(run, {"sums": dict(sums), "diag_sums": dict(diag_sums), "counted": counted,
                                  "diag_counted": diag_counted, "seconds": earlier_seconds + time.time() - segment_start})
            progress.close()
            return False
    progress.close()
    elapsed = time.time() - segment_start
    run.epoch, run.step = run.epoch + 1, 0
    record = {"kind": "epoch", "epoch": run.epoch, "global_step": run.global_step,
              **{k: v / max(counted, 1) for k, v in sums.items()},
              **{k: v / max(diag_counted, 1) for k, v in diag_sums.items()},
              "lr": lr if counted else None,
              # images trained in this segment over its time: a resumed epoch is not credited with the
              # steps done before the interruption
              "images_per_s": images_per_step * (run.stream.steps_per_epoch - first_step) / max(elapsed, 1e-9),
              "seconds": earlier_seconds + elapsed}
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
    epoch's checkpoint is written (evaluation after every epoch). Returns the run summary; its
    ``status`` is ``"finished"`` or ``"interrupted"``. Raises :class:`NonFiniteLossError`,
    :class:`RunFolderBusyError`, and ConfigError when the folder holds a run of another configuration.
    """
    run = setup(cfg)
    run.output_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run.output_dir) if run.main_process else contextlib.nullcontext()
    status = "finished"
    with lock, StopRequest() as stop:
        if run.main_process:
            remove_partial_writes(run.output_dir)
        start(run)
        while run.epoch < run.cfg.train.epochs:
            if not train_one_epoch(run, stop):
                status = "interrupted"
                break
            if run.main_process:
                for hook in epoch_end_hooks or []:
                    hook(run.epoch, run.network, run.output_dir)
        summary = finish(run, status, stop)
    if run.owns_process_group:  # not on an exception: a barrier could wait for ranks stuck elsewhere
        del run
        end_distributed()
    return summary


def _progress(total: int, initial: int, epoch: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}", leave=False,
                disable=not (enabled and sys.stderr.isatty()))


def _non_finite_report(terms: dict[str, torch.Tensor], run: Run, step: int, lr: float, cause: str = "") -> str:
    values = cause or ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
    return (f"non-finite loss at epoch {run.epoch} step {step} (lr {lr:.4g}): {values}. The run stopped; "
            f"{run.output_dir / 'checkpoint.pt'} still holds the last good state. Lower optim.base_lr, "
            "or check the inputs and the initial checkpoint, then rerun to resume.")

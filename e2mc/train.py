"""The training loop: continued pre-training (and pre-training from scratch) of any registered method.

:func:`train` runs one configuration to the end or until it is interrupted, in four steps:
:func:`setup` (device, process group, network, objective, criterion, optimizer, data), :func:`start`
(resume from the run folder, or load ``train.init``), :func:`train_one_epoch` (repeated), and
:func:`finish` (the summary). Everything a run writes lives in its run folder ``cfg.train.output_dir``:

* ``checkpoint.pt``: model, optimiser, every rank's loss state (SwAV queue), RNG, position; one file,
  written atomically at the end of every epoch and when SIGUSR1 / SIGUSR2 / SIGTERM / SIGINT (Ctrl-C)
  asks the run to stop. A restarted run resumes from it on its own, at the exact step, and only under
  the same training configuration; first it redoes the epoch-end hooks (per-epoch evaluation) that the
  last completed epoch still owed (``epoch-hooks.json`` records the last epoch whose hooks finished).
* ``metrics.jsonl``: one JSON line per ``log_every`` steps (``"kind": "step"``) and per epoch
  (``"kind": "epoch"``): every loss term, embedding diagnostics, learning rate, images/s. Each start
  or resume first writes a ``"kind": "segment"`` line (where it started, from what, and its
  provenance), so a run trained in several pieces says which code and machine trained each.
* ``config.yaml`` and ``summary.json`` (with provenance). The process training in the folder holds a
  lock on the folder itself, so that a second one cannot write into it at the same time; while it
  trains, ``run.lock`` says who it is (removed when the run ends).

The loop knows no method and no criterion by name: it asks the method (:mod:`e2mc.methods`) how views
reach the loss, and the criterion (:mod:`e2mc.criteria`) what it consumes. Evaluation after each
epoch comes in as ``epoch_end_hooks`` (see :mod:`e2mc.runs`); this module never imports evaluation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import gc
import json
import math
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
from e2mc.build import build_added_criterion, build_network, build_objective, load_initial_weights, resolve_device
from e2mc.config import LOCATION_FIELDS, Config, ConfigError, save_config
from e2mc.criteria import get_criterion
from e2mc.data.registry import get_dataset
from e2mc.diagnostics import embedding_stats
from e2mc.distributed import is_distributed, rank, world_size
from e2mc.errors import UserError, write_error
from e2mc.methods import Method, get_method
from e2mc.naming import infer_arm
from e2mc.optim import build_optimizer, learning_rate, set_learning_rate
from e2mc.provenance import provenance, repo_relative, write_json_atomic

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
HOOKS_DONE = "epoch-hooks.json"  # {"epoch": the last epoch whose epoch-end hooks all returned}
EpochHook = Callable[[int, nn.Module, Path], None]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the run stopped without touching its last checkpoint."""


class RunFolderError(UserError, RuntimeError):
    """The run folder holds something a run cannot resume from or start over (one line names the fix)."""


class RunFolderBusyError(RunFolderError):
    """Another process is training in this run folder."""


# --- the run folder ----------------------------------------------------------------------------

class RunLock:
    """An exclusive lock on a run folder, held while a process trains in it.

    The lock is an ``flock`` on the folder itself, which no one deletes by hand while a run is in it
    (a lock file could be deleted, and a second trainer would then run beside the first); the kernel
    releases it when its process dies, so a killed run leaves nothing locked. While held, ``run.lock``
    says who holds it (pid, host, start time); the file goes when the lock is released. On a
    filesystem that cannot lock a folder (some NFS setups), ``metrics.jsonl`` is locked instead."""

    def __init__(self, output_dir: Path) -> None:
        self.folder = Path(output_dir)
        self.path = self.folder / "run.lock"
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EBADF, errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP):
                self._busy()
            fd = os.open(self.folder / "metrics.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                self._busy()
        self._fd = fd
        self.path.write_text(f"pid {os.getpid()} on {socket.gethostname()} since "
                             f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        return self

    def _busy(self) -> None:
        try:
            holder = self.path.read_text().strip() or "another process"
        except OSError:
            holder = "another process"
        raise RunFolderBusyError(f"{self.folder} is in use by {holder}; wait for that run to end, or "
                                 "choose another train.output_dir") from None

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


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
    return Path("runs") / get_dataset(cfg.data.dataset).scale / cfg.method / infer_arm(cfg.to_dict()) / f"seed{cfg.train.seed}"


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
            checkpoints.apply_optimizer_state(run.optimizer, run.network, released)
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


# --- interruption ------------------------------------------------------------------------------

class StopRequest:
    """Turns SIGUSR1, SIGUSR2, SIGTERM and SIGINT (Ctrl-C) into a flag the loop checks after every
    step; a second Ctrl-C aborts at once, without saving."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for s in (*STOP_SIGNALS, signal.SIGINT):
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave handlers alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            if self.signal == signal.SIGINT:
                raise KeyboardInterrupt
            print("\n[e2mc] Ctrl-C: saving after this step (press it again to abort without saving)",
                  file=sys.stderr, flush=True)
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

    def truncate(self, size: int, checkpoint: Path) -> None:
        """Cut the file back to the ``size`` bytes that ``checkpoint`` recorded. A shorter file was cut
        or replaced after the checkpoint was written: refused, never padded to ``size``."""
        if self.size() < size:
            raise RunFolderError(f"{self.path} holds {self.size()} bytes but {checkpoint} recorded {size}: the "
                                 "metrics were cut or replaced after the checkpoint was written; restore the "
                                 "file, or start over in a new train.output_dir")
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
    records = []
    for number, line in enumerate(path.read_bytes().decode(errors="replace").splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number} is not a JSON record ({error.msg}): the file is damaged; "
                                 "restore it, or train the run again in a new folder") from None
            if not (isinstance(record, dict) and "kind" in record):
                raise ValueError(f"{path} line {number} is not a metrics record (no \"kind\"): the file is damaged")
            records.append(record)
    return [r for r in records if kind is None or r["kind"] == kind]


def _legacy_objective_state_path(output_dir: Path, r: int) -> Path:
    """Where run folders written before the loss state moved into checkpoint.pt keep rank r's."""
    return output_dir / f"loss-state-rank{r}.pt"


def _objective_states(run: Run) -> list[dict] | None:
    """Every rank's loss state (the SwAV queue differs between ranks), by rank, on CPU; None for an
    objective without state. A collective: every rank calls it."""
    own = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in run.objective.state_dict().items()}
    if not own:
        return None
    if not is_distributed():
        return [own]
    states: list[Any] = [None] * world_size()
    dist.all_gather_object(states, own)
    return states


def _restore_objective_state(run: Run, state: dict, path: Path) -> None:
    """Load this rank's loss state from the checkpoint (or, for an older run folder, from its
    ``loss-state-rank<r>.pt``); refuse to resume without it, which would not be exact."""
    if not run.objective.state_dict():
        return
    states = state.get("objective_states")
    if states is None:
        legacy = _legacy_objective_state_path(run.output_dir, rank())
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


def save_checkpoint(run: Run, epoch_sums: dict[str, Any] | None = None) -> None:
    """Write the state to resume at (``run.epoch``, ``run.step``) into one file on rank 0: the model,
    optimizer, RNG and every rank's loss state together, so a kill leaves all of it old or all new.
    ``epoch_sums`` carries the running sums of a part-done epoch, so that its summary line after a
    resume is the one an uninterrupted run writes."""
    objective_states = _objective_states(run)
    if run.main_process:
        state = {
            "format": checkpoints.FORMAT, "method": run.cfg.method, "config": run.cfg.to_dict(),
            "epoch": run.epoch, "step": run.step, "global_step": run.global_step,
            "model": run.network.state_dict(), "optimizer": run.optimizer.state_dict(),
            "rng": checkpoints.capture_rng_state(), "metrics_bytes": run.metrics.size(),
            "epoch_sums": epoch_sums or {}, "run_seconds": run.run_seconds(),
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
            if run.main_process:
                remove_partial_writes(run.output_dir)
            start(run)
            if run.step == 0 and run.epoch > 0 and _hooks_done(run.output_dir) != run.epoch:
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


def _hooks_done(output_dir: Path) -> int | None:
    """The last epoch whose epoch-end hooks all returned (see :data:`HOOKS_DONE`); None if unknown."""
    try:
        return int(json.loads((output_dir / HOOKS_DONE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _run_hooks(run: Run, hooks: list[EpochHook]) -> None:
    """Call the epoch-end hooks for ``run.epoch`` on rank 0, then record that they all returned."""
    if run.main_process and hooks:
        for hook in hooks:
            hook(run.epoch, run.network, run.output_dir)
        write_json_atomic(run.output_dir / HOOKS_DONE, {"epoch": run.epoch})


def _progress(total: int, initial: int, epoch: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}", leave=False,
                disable=not (enabled and sys.stderr.isatty()))


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

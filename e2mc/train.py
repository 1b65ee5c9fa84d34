"""Continued pre-training (and pre-training from scratch) of VICReg, SwAV and SimSiam networks.

:func:`train` runs one configuration to the end or until it is interrupted. Everything a run writes
lives in ``cfg.train.output_dir``:

* ``checkpoint.pt``: model, optimiser, loss state (SwAV queue), RNG, position; written atomically at
  the end of every epoch and when SIGUSR1 / SIGUSR2 / SIGTERM asks the run to stop. A restarted run
  resumes from it on its own, at the exact step.
* ``metrics.jsonl``: one JSON line per ``log_every`` steps (``"kind": "step"``) and per epoch
  (``"kind": "epoch"``): every loss term, embedding diagnostics, learning rate, images/s. Each start
  or resume first writes a ``"kind": "segment"`` line (where it started, from what, and its
  provenance), so a run trained in several pieces says which code and machine trained each.
* ``config.yaml`` and ``summary.json`` (with provenance).
"""
from __future__ import annotations

import json
import os
import signal
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
from e2mc.config import Config, save_config
from e2mc.criterion import E2MC
from e2mc.diagnostics import METHOD_TRANSFORM, embedding_stats
from e2mc.distributed import is_distributed, rank, world_size
from e2mc.models import build_model
from e2mc.objectives import CRITERIA, MMCR, SimSiamLoss, SwAVLoss, VICRegLoss
from e2mc.optim import build_optimizer, learning_rate
from e2mc.provenance import provenance, write_json_atomic

CHECKPOINT_FORMAT = "e2mc-train-v1"
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the run stopped without touching its last checkpoint."""


# --- setup -------------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no GPU is visible; use train.device=cpu or auto")
        # One GPU per local rank. SLURM may already show each task only its own GPU(s)
        # (--gpus-per-task, --gpu-bind), so the index is taken among the visible ones.
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device: torch.device) -> None:
    """Join the process group described by the environment (torchrun, or SLURM through e2mc.cluster)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def build_network(cfg: Config) -> nn.Module:
    """The method's network as configured in ``cfg.model`` (the one place configs become models)."""
    try:
        return build_model(cfg.method, cfg.model.backbone, backbone_widths=cfg.model.widths, **cfg.model.heads)
    except TypeError as e:
        raise ValueError(f"model.heads does not fit {cfg.method}: {e}") from None


def build_objective(cfg: Config) -> nn.Module:
    """The method's own loss, configured by ``cfg.loss.params``."""
    cls = {"vicreg": VICRegLoss, "swav": SwAVLoss, "simsiam": SimSiamLoss}[cfg.method]
    try:
        return cls(**cfg.loss.params)
    except TypeError as e:
        raise ValueError(f"loss.params does not fit {cls.__name__}: {e}") from None


def build_added_criterion(cfg: Config) -> nn.Module | None:
    """E2MC, an alternative criterion, or None for the original loss alone."""
    c = cfg.criterion
    if c.name == "none":
        return None
    if c.name == "e2mc":
        if c.params:
            raise ValueError("criterion.params is for the alternative criteria; E2MC takes "
                             "criterion.transform, criterion.ent_coeff and criterion.cov_coeff")
        return E2MC(c.transform, ent_coeff=c.ent_coeff, cov_coeff=c.cov_coeff)
    try:
        return CRITERIA[c.name](**c.params)
    except TypeError as e:
        raise ValueError(f"criterion.params does not fit {CRITERIA[c.name].__name__}: {e}") from None


class MultiViewNetwork(nn.Module):
    """Runs the network on every view in one ``forward`` (one DDP call per step).

    VICReg and SimSiam see each view as its own batch (BatchNorm statistics per view, as in the
    reference code); SwAV's network groups crops of equal resolution itself.
    """

    def __init__(self, network: nn.Module, method: str) -> None:
        super().__init__()
        self.network, self.method = network, method

    def forward(self, views: list[torch.Tensor]) -> list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]:
        if self.method == "swav":
            return self.network(views)
        return [self.network(v) for v in views]


def compute_loss(method: str, outputs, batch: int, objective: nn.Module, added: nn.Module | None,
                 network: nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Total loss, its named terms, and the embedding of the first view (for diagnostics).

    Terms are prefixed: ``ssl_*`` from the method's loss, ``add_*`` from the added criterion.
    """
    other_crops: list[torch.Tensor] = []
    if method == "vicreg":
        z1, z2 = outputs[0]["embedding"], outputs[1]["embedding"]
        base = objective(z1, z2)
    elif method == "simsiam":
        z1, z2 = outputs[0]["embedding"], outputs[1]["embedding"]
        base = objective(outputs[0]["prediction"], outputs[1]["prediction"], z1, z2)
    else:  # swav: rows of crop i are [i * batch, (i + 1) * batch)
        crops = list(outputs["normalized"].split(batch))
        base = objective(crops, network.prototypes.weight)
        z1, z2, *other_crops = outputs["embedding"].split(batch)  # E2MC acts on the two assignment crops
    terms = {f"ssl_{k}": v for k, v in base.items()}
    loss = base["loss"]
    if added is not None:
        # MMCR's centroids average every crop, as in the authors' SwAV + MMCR code.
        extra = added(z1, z2, *other_crops) if isinstance(added, MMCR) else added(z1, z2)
        terms.update({f"add_{k}": v for k, v in extra.items()})
        loss = loss + extra["loss"]
    terms["loss"] = loss
    return loss, terms, z1


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
        raise ValueError("data.dataset=imagenet needs data.root, the ImageNet train/ folder")
    dataset = data.imagenet_train_dataset(cfg.data.root, cfg.method)
    if cfg.data.limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(cfg.data.limit, len(dataset))))
    return LoaderViews(dataset, cfg.data.batch_size, cfg.train.seed, rank(), world_size(), cfg.data.workers, device)


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
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


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


def save_checkpoint(output_dir: Path, cfg: Config, network: nn.Module, optimizer, objective: nn.Module,
                    epoch: int, step: int, global_step: int, metrics: MetricsLog,
                    epoch_sums: dict[str, Any] | None = None) -> None:
    """Write the state to resume at (``epoch``, ``step``); rank 0 the model, every rank its loss state.

    ``epoch_sums`` carries the running sums of a part-done epoch, so that its summary line after a
    resume is the one an uninterrupted run writes."""
    if objective.state_dict():  # the SwAV queue differs between ranks
        checkpoints.save_atomic(objective.state_dict(), _objective_state_path(output_dir, rank()))
    if rank() == 0:
        state = {
            "format": CHECKPOINT_FORMAT, "method": cfg.method, "config": cfg.to_dict(),
            "epoch": epoch, "step": step, "global_step": global_step,
            "model": network.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": checkpoints.capture_rng_state(), "metrics_bytes": metrics.size(),
            "epoch_sums": epoch_sums or {},
        }
        checkpoints.save_atomic(state, output_dir / "checkpoint.pt")
        if cfg.train.keep_epoch_checkpoints and step == 0:
            checkpoints.save_atomic({k: state[k] for k in ("format", "method", "config", "epoch", "model")},
                                    output_dir / f"checkpoint-epoch{epoch:03d}.pt")
    if is_distributed():
        dist.barrier()


def _check_resumable(state: dict, cfg: Config, path: Path) -> None:
    """A run resumes only into the same method, architecture and optimizer."""
    saved = state["config"]
    for key, ours, theirs in (("method", cfg.method, saved["method"]),
                              ("model", cfg.to_dict()["model"], saved["model"]),
                              ("optim.name", cfg.optim.name, saved["optim"]["name"])):
        if ours != theirs:
            raise ValueError(f"{path} was written with {key}={theirs!r} but this run has {key}={ours!r}; "
                             "resume with the same setting, or choose a new train.output_dir")


def load_initial_weights(path: str, method: str, network: nn.Module) -> tuple[str, dict | None]:
    """Load ``path``, one of our checkpoints or an official release of ``method``, into ``network``.

    Returns a description and, for a release that ships its optimizer (VICReg's full checkpoint,
    SimSiam's), the per-parameter optimizer state keyed by our parameter names.
    """
    state = checkpoints.load(path)
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        if state["method"] != method:
            raise ValueError(f"{path} holds a {state['method']} network but method={method}; "
                             "choose the matching config")
        network.load_state_dict(state["model"])
        return f"started from {path} (epoch {state['epoch']})", None
    report = checkpoints.load_official(state, method, network)
    return report.summary(), report.optimizer_state_by_name


# --- the loop ---------------------------------------------------------------------------------

def train(cfg: Config, epoch_end_hooks: list[Callable[[int, nn.Module, Path], None]] | None = None) -> dict[str, Any]:
    """Train ``cfg`` to ``cfg.train.epochs`` (resuming from ``output_dir/checkpoint.pt`` if there is one).

    ``epoch_end_hooks`` are called on rank 0 as ``hook(epochs_done, network, output_dir)`` after each
    epoch's checkpoint is written (evaluation after every epoch). Returns the run summary; its
    ``status`` is ``"finished"`` or ``"interrupted"``. Raises :class:`NonFiniteLossError`.
    """
    started = time.time()
    device = resolve_device(cfg.train.device)
    init_distributed(device)
    output_dir = Path(cfg.train.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    main_process = rank() == 0
    metrics = MetricsLog(output_dir / "metrics.jsonl", main_process)
    torch.manual_seed(cfg.train.seed)

    network = build_network(cfg)
    objective, added = build_objective(cfg), build_added_criterion(cfg)
    resume_path = output_dir / "checkpoint.pt"
    epoch, start_step, global_step = 0, 0, 0
    resumed_sums: dict[str, Any] = {}
    released_optimizer_state = None
    resumed = resume_path.exists()
    if resumed:
        state = checkpoints.load(resume_path)
        _check_resumable(state, cfg, resume_path)
        network.load_state_dict(state["model"])
        epoch, start_step, global_step = state["epoch"], state["step"], state["global_step"]
        resumed_sums = state["epoch_sums"]
        origin = f"resumed from {resume_path} at epoch {epoch} step {start_step}"
    elif cfg.train.init:
        origin, released_optimizer_state = load_initial_weights(cfg.train.init, cfg.method, network)
    else:
        origin = "random initialisation"

    use_cuda = device.type == "cuda"
    network.to(device)
    objective.to(device)
    if cfg.train.channels_last:
        network.to(memory_format=torch.channels_last)
    if is_distributed() and use_cuda:
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    stream = build_stream(cfg, device)
    lr_scale = cfg.data.batch_size / 256 if cfg.optim.scale_lr else 1.0
    base_lr = cfg.optim.base_lr * lr_scale
    optimizer = build_optimizer(cfg.optim.name, network, base_lr, cfg.optim.momentum, cfg.optim.weight_decay,
                                cfg.optim.eta)
    if released_optimizer_state:  # continue with the release's momentum, as the authors' code does
        checkpoints.apply_optimizer_state(optimizer, network, released_optimizer_state)
    if resumed:
        optimizer.load_state_dict(state["optimizer"])
        checkpoints.restore_rng_state(state["rng"])
        metrics.truncate(state["metrics_bytes"])
        loss_state = _objective_state_path(output_dir, rank())
        if loss_state.exists():
            objective.load_state_dict(checkpoints.load(loss_state, map_location=device))
    forward = MultiViewNetwork(network, cfg.method)
    if is_distributed():
        forward = DistributedDataParallel(forward, device_ids=[device.index] if use_cuda else None)
    if main_process:
        save_config(cfg, output_dir / "config.yaml")
        print(f"[e2mc] {cfg.method} + {cfg.criterion.name} on {device}, world size {world_size()}; {origin}",
              flush=True)

    metrics.write({"kind": "segment", "epoch": epoch, "step": start_step, "global_step": global_step,
                   "origin": origin, "provenance": provenance(device)})
    if not resumed:  # epoch 0 is the starting point: resumable at once, and evaluable as the baseline
        save_checkpoint(output_dir, cfg, network, optimizer, objective, 0, 0, 0, metrics)

    transform = cfg.criterion.transform if cfg.criterion.name == "e2mc" else METHOD_TRANSFORM[cfg.method]
    total_steps = cfg.train.epochs * stream.steps_per_epoch
    warmup_steps = cfg.optim.warmup_epochs * stream.steps_per_epoch
    images_per_step = cfg.data.batch_size
    status = "finished"
    with StopRequest() as stop:
        while epoch < cfg.train.epochs:
            network.train()
            # Running sums for the epoch line (restored when resuming a part-done epoch).
            sums: dict[str, float] = defaultdict(float, resumed_sums.get("sums", {}))
            diag_sums: dict[str, float] = defaultdict(float, resumed_sums.get("diag_sums", {}))
            counted, diag_counted = resumed_sums.get("counted", 0), resumed_sums.get("diag_counted", 0)
            resumed_sums = {}
            epoch_start = window_start = time.time()
            progress = _progress(stream.steps_per_epoch, start_step, epoch, main_process)
            for step, views in enumerate(stream.epoch(epoch, start_step), start=start_step):
                lr = learning_rate(cfg.optim.schedule, base_lr, global_step, total_steps, warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if cfg.train.channels_last:
                    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                if cfg.method == "swav":
                    network.normalize_prototypes()
                try:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_cuda and cfg.train.amp):
                        outputs = forward(views)
                        loss, terms, z1 = compute_loss(cfg.method, outputs, views[0].shape[0], objective, added,
                                                       network)
                except FloatingPointError as e:  # a criterion refused non-finite embeddings
                    raise NonFiniteLossError(_non_finite_report({}, epoch, step, lr, output_dir, str(e))) from e
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(_non_finite_report(terms, epoch, step, lr, output_dir))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                values = {k: v.item() for k, v in terms.items()}
                for k, v in values.items():
                    sums[k] += v
                counted += 1
                global_step += 1
                if global_step % cfg.train.log_every == 0 or step == stream.steps_per_epoch - 1:
                    stats = embedding_stats(z1, transform)
                    for k, v in stats.items():
                        diag_sums[k] += v
                    diag_counted += 1
                    now = time.time()
                    metrics.write({"kind": "step", "epoch": epoch, "step": step, "global_step": global_step,
                                   "lr": lr, **values, **stats,
                                   "images_per_s": images_per_step * cfg.train.log_every / max(now - window_start, 1e-9)})
                    window_start = now
                progress.update(1)
                progress.set_postfix(loss=f"{values['loss']:.4f}")
                if stop.requested(device):
                    save_checkpoint(output_dir, cfg, network, optimizer, objective, epoch, step + 1, global_step,
                                    metrics, {"sums": dict(sums), "diag_sums": dict(diag_sums),
                                              "counted": counted, "diag_counted": diag_counted})
                    status = "interrupted"
                    break
            progress.close()
            if status == "interrupted":
                break
            elapsed = time.time() - epoch_start
            epoch += 1
            record = {"kind": "epoch", "epoch": epoch, "global_step": global_step,
                      **{k: v / max(counted, 1) for k, v in sums.items()},
                      **{k: v / max(diag_counted, 1) for k, v in diag_sums.items()},
                      "lr": lr if counted else None,
                      "images_per_s": images_per_step * counted / max(elapsed, 1e-9), "seconds": elapsed}
            metrics.write(record)
            save_checkpoint(output_dir, cfg, network, optimizer, objective, epoch, 0, global_step, metrics)
            start_step = 0
            if main_process:
                print(f"[e2mc] epoch {epoch}/{cfg.train.epochs}: loss {record.get('loss', float('nan')):.4f}, "
                      f"{record['images_per_s']:.0f} images/s", flush=True)
                for hook in epoch_end_hooks or []:
                    hook(epoch, network, output_dir)

    summary = {"status": status, "epoch": epoch, "global_step": global_step, "method": cfg.method,
               "criterion": cfg.criterion.name, "config_hash": cfg.hash(), "config": cfg.to_dict(),
               "seconds": time.time() - started, "provenance": provenance(device)}
    if status == "interrupted":
        summary["signal"] = signal.Signals(stop.signal).name
    if main_process:
        write_json_atomic(output_dir / "summary.json", summary)
    return summary


def _progress(total: int, initial: int, epoch: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}", leave=False,
                disable=not (enabled and sys.stderr.isatty()))


def _non_finite_report(terms: dict[str, torch.Tensor], epoch: int, step: int, lr: float, output_dir: Path,
                       cause: str = "") -> str:
    values = cause or ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
    return (f"non-finite loss at epoch {epoch} step {step} (lr {lr:.4g}): {values}. The run stopped; "
            f"{output_dir / 'checkpoint.pt'} still holds the last good state. Lower optim.base_lr, "
            "or check the inputs and the initial checkpoint, then rerun to resume.")

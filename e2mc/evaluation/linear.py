"""Linear classifiers on frozen features: the fast path on cached features, and the paper's protocol on images.

Both train a linear layer (weights N(0, 0.01), bias 0, as the reference ``RegLog``) with SGD,
momentum 0.9 and a cosine learning rate per epoch (``CosineAnnealingLR`` to 0), and measure the
test split after every epoch. Accuracies are percentages. A probe's result reports the best epoch
(the reference protocol's "best validation top-1", which is chosen on the test split) and the last one.
With ``ProbeSettings.val_fraction > 0`` it also holds out a class-balanced validation part of the
labelled set, measures it after every epoch too, and reports the test accuracy at the epoch of best
validation accuracy (``top1_val_selected``): an epoch choice that never looks at the test labels.
The settings that a configuration's ``eval.probe`` section shares with :class:`ProbeSettings` obey that
section's rules (:func:`e2mc.eval_settings.check_shared`).

* :func:`train_linear_probe` works on cached features (extract once, see
  :func:`e2mc.evaluation.sources.extract_features`), standardised with the training set's mean and
  standard deviation (an affine change of variables: it changes the optimisation, not the family of
  classifiers). A weight-decay grid may be searched on a held-out part of the labelled set.
* :func:`e2mc.evaluation.image_probe.train_linear_on_images` is the ImageNet protocol on images (see there).

The learning rate follows ``ProbeSettings.schedule``: ``"cosine"`` (the default above) or ``"step"``
(``MultiStepLR``: multiplied by ``gamma`` at every epoch of ``milestones``), set per epoch by
:func:`epoch_lr`.
"""
from __future__ import annotations

import bisect
import contextlib
import hashlib
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from e2mc.data import balanced_subset
from e2mc.errors import UserError
from e2mc.eval_settings import check_shared
from e2mc.optim import set_learning_rate


@dataclass
class ProbeSettings:
    """Hyper-parameters of a linear probe.

    epochs: passes over the labelled set. batch_size: images per step. lr: initial learning rate.
    schedule: ``"cosine"`` (annealed to 0 over ``epochs``, CosineAnnealingLR stepped per epoch) or
    ``"step"`` (``lr * gamma ** k`` after the k-th epoch of ``milestones``, MultiStepLR stepped per
    epoch); milestones (strictly increasing epochs >= 1) and gamma (> 0) are read by the step schedule
    only (see :func:`epoch_lr`). momentum, weight_decay, nesterov: of SGD (weight decay
    on weights and bias, as the reference). standardize: cached-feature path only, standardise
    features with the labelled set's statistics. weight_decays: if non-empty, the weight decay is
    chosen from this grid by top-1 on a class-balanced held-out ``holdout_fraction`` of the
    labelled set (the test split is never used for the choice); ``weight_decay`` is then ignored.
    val_fraction: if > 0, a class-balanced ``val_fraction`` of the labelled set (seeded by
    :func:`validation_seed` of the probe seed, disjoint from the test split) is held out as a
    validation set: the probe trains (and standardises, and searches ``weight_decays``) on the rest
    only, measures validation and test accuracy after every epoch, and reports
    ``top1_val_selected``, the test top-1 at the epoch of best validation top-1. The default 0 keeps
    the reference protocol (train on every labelled image, no validation metric), so results stay
    comparable with those written before this setting existed; callers opt in (e.g. 0.1). Each
    class needs at least one image on each side of the split, else the probe raises ValueError.
    """

    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    standardize: bool = True
    weight_decays: tuple[float, ...] = ()
    holdout_fraction: float = 0.2
    val_fraction: float = 0.0
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        check_shared("probe", self)  # epochs, batch_size, lr, weight_decay(s), val_fraction: as eval.probe.*
        if not 0 < self.holdout_fraction < 1:
            raise UserError(f"holdout_fraction must lie in (0, 1), got {self.holdout_fraction}")
        self.val_fraction = float(self.val_fraction)
        self.weight_decays = tuple(float(w) for w in self.weight_decays)
        if self.schedule not in ("cosine", "step"):
            raise UserError(f"probe schedule must be 'cosine' or 'step', got {self.schedule!r}")
        milestones = tuple(self.milestones)
        if any(isinstance(m, bool) or int(m) != m or m < 1 for m in milestones) or \
                any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise UserError(f"probe milestones must be strictly increasing epochs >= 1, got {list(milestones)}")
        self.milestones = tuple(int(m) for m in milestones)
        if not (isinstance(self.gamma, (int, float)) and math.isfinite(self.gamma) and self.gamma > 0):
            raise UserError(f"probe gamma must be a finite number > 0, got {self.gamma!r}")
        self.gamma = float(self.gamma)

    def to_dict(self) -> dict:
        return {**asdict(self), "weight_decays": list(self.weight_decays), "milestones": list(self.milestones)}


# The paper's image protocol: SwAV's eval_linear defaults (lr 0.3 for 256 images, wd 1e-6), raw features.
PAPER_IMAGE_PROBE = ProbeSettings(epochs=100, batch_size=256, lr=0.3, weight_decay=1e-6, standardize=False)

# The authors' transfer protocol (deepc94/e2mc trainer_probe_transfer.sh with eval_linear.py, which is
# facebookresearch/swav's RegLog with global_pooling=false, use_bn=true): SGD momentum 0.9 without
# Nesterov, lr 0.01, weight decay 1e-4, MultiStepLR milestones 24, 48, 72 with gamma 0.1, 84 epochs,
# batch 256, on the :class:`RegLog` head (``train_linear_on_images(..., head="reglog")``).
AUTHORS_TRANSFER_PROBE = ProbeSettings(epochs=84, batch_size=256, lr=0.01, weight_decay=1e-4, standardize=False,
                                       schedule="step", milestones=(24, 48, 72), gamma=0.1)


@dataclass
class ProbeResult:
    """Per-epoch test accuracies (percent) of a trained classifier.

    ``metrics()`` gives top1_best / top5_best (top-5 at the epoch of best top-1), top1_last /
    top5_last, best_epoch (1-based), and top1 / top5 equal to the best-epoch values (the reported
    number of the reference protocol). With a validation split (``val_top1`` non-empty) it adds
    top1_val_selected / top5_val_selected, the test accuracies at the epoch of best validation top-1
    (the earliest of ties), and val_selected_epoch (1-based).

    ``validation_indices`` / ``training_indices``: with a validation split, the held-out and the
    trained-on part of the labelled set (cached features: row positions in ``train_x``; images:
    indices into ``train_source``); None without one."""

    top1: list[float]
    top5: list[float]
    train_loss: list[float]
    weight_decay: float
    selection: dict[str, float] = field(default_factory=dict)  # weight decay -> held-out top-1
    val_top1: list[float] = field(default_factory=list)  # validation top-1 per epoch (empty: no split)
    validation_indices: torch.Tensor | None = None
    training_indices: torch.Tensor | None = None

    def val_selected_epoch(self) -> int | None:
        """0-based epoch of best validation top-1 (the earliest of ties); None without a validation split."""
        if not self.val_top1:
            return None
        return max(range(len(self.val_top1)), key=lambda e: (self.val_top1[e], -e))

    def metrics(self) -> dict[str, float]:
        best = max(range(len(self.top1)), key=lambda e: (self.top1[e], -e))  # earliest best epoch
        metrics = {"top1": self.top1[best], "top5": self.top5[best],
                   "top1_best": self.top1[best], "top5_best": self.top5[best],
                   "top1_last": self.top1[-1], "top5_last": self.top5[-1],
                   "best_epoch": best + 1, "weight_decay": self.weight_decay}
        chosen = self.val_selected_epoch()
        if chosen is not None:
            metrics.update(top1_val_selected=self.top1[chosen], top5_val_selected=self.top5[chosen],
                           val_selected_epoch=chosen + 1)
        return metrics

    def history(self) -> dict[str, list[float] | dict[str, float] | int]:
        history = {"top1_per_epoch": self.top1, "top5_per_epoch": self.top5, "train_loss_per_epoch": self.train_loss,
                   "weight_decay_selection": self.selection}
        if self.val_top1:
            history["val_top1_per_epoch"] = self.val_top1
            history["n_val"] = len(self.validation_indices) if self.validation_indices is not None else None
        return history


def validation_seed(seed: int) -> int:
    """Seed of a probe's validation split, derived from the probe seed: reproducible, and a stream of
    its own (the label subset, the initialisation and the weight-decay hold-out use ``seed`` itself)."""
    digest = hashlib.sha256(f"e2mc-probe-validation:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def holdout_split(labels: torch.Tensor, fraction: float, seed: int,
                  every_class_both_sides: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Split positions ``0..N-1`` of a labelled set into (kept, held out), class-balanced.

    The held-out part is :func:`e2mc.data.balanced_subset` of ``labels`` (round(fraction * n_c)
    images of each class c, at least one, seeded by ``seed``); the kept part is the rest. Both are
    sorted int64 tensors on the CPU. With ``every_class_both_sides`` every class present must keep at
    least one image on each side, else ValueError (e.g. a class with a single labelled image).
    """
    labels = torch.as_tensor(labels).long().cpu()
    held_out = balanced_subset(labels, fraction, seed)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_out] = False
    if every_class_both_sides:
        counts = torch.bincount(labels)
        kept = torch.bincount(labels[keep], minlength=len(counts))
        short = [c for c in range(len(counts)) if counts[c] > 0 and (kept[c] == 0 or kept[c] == counts[c])]
        if short:
            raise UserError(
                f"cannot hold out a class-balanced {fraction:g} of the labelled set with at least one image of "
                f"each class on each side: class(es) {short} have {[int(counts[c]) for c in short]} image(s); "
                "use more labels or a val_fraction of 0")
    return torch.nonzero(keep).flatten(), held_out


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of rows whose label is among the k highest logits, for each k (k capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels.view(-1, 1)
    return [int(hits[:, :min(k, logits.shape[1])].any(dim=1).sum()) for k in ks]


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Learning rate of (0-based) ``epoch``: CosineAnnealingLR(T_max=epochs, eta_min=0) stepped per epoch."""
    return base_lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def epoch_lr(settings: ProbeSettings, epoch: int) -> float:
    """Learning rate of (0-based) ``epoch`` under ``settings.schedule``: :func:`cosine_lr`, or for
    ``"step"`` ``lr * gamma ** (number of milestones <= epoch)``, which is what
    ``MultiStepLR(milestones, gamma)`` gives after ``epoch`` calls of ``step()``."""
    if settings.schedule == "step":
        return settings.lr * settings.gamma ** bisect.bisect_right(settings.milestones, epoch)
    return cosine_lr(settings.lr, epoch, settings.epochs)


def new_linear(in_features: int, num_classes: int, generator: torch.Generator) -> nn.Linear:
    """A linear classifier initialised as the reference: weights N(0, 0.01), bias 0."""
    layer = nn.Linear(in_features, num_classes)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.01)
        layer.bias.zero_()
    return layer


@contextlib.contextmanager
def _one_thread_for_small_products(device: torch.device, batch: int, features: int, classes: int):
    """A probe step on CPU is a product of a few million multiply-adds; extra intra-op threads cost more
    to wake than they save, and on a shared machine they wait for each other (measured 20x slower under
    load). Such probes run on one thread; the thread count is restored afterwards."""
    if device.type != "cpu" or batch * features * classes > (1 << 22):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def check_labels(x: torch.Tensor, y: torch.Tensor, num_classes: int, name: str, any_shape: bool = False) -> None:
    """Features (N, F) (with ``any_shape``: (N, ...), e.g. pooled maps) and labels (N,) in [0, num_classes)."""
    if (x.dim() < 2 if any_shape else x.dim() != 2) or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"{name}: expected features (N, F) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(y) == 0:
        raise ValueError(f"{name}: no samples")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"{name}: labels must lie in [0, {num_classes}), got {int(y.min())}..{int(y.max())}")


@torch.no_grad()
def measure_accuracy(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (percent) of the classifier ``layer`` on inputs ``x`` (N, ...) with labels
    ``y`` (N,), ``chunk`` rows at a time."""
    correct = [0, 0]
    for start in range(0, len(x), chunk):
        hits = topk_correct(layer(x[start:start + chunk]), y[start:start + chunk])
        correct = [c + h for c, h in zip(correct, hits)]
    return 100.0 * correct[0] / len(x), 100.0 * correct[1] / len(x)


def _fit_cached(x: torch.Tensor, y: torch.Tensor, eval_x: torch.Tensor, eval_y: torch.Tensor, num_classes: int,
                settings: ProbeSettings, weight_decay: float, seed: int,
                val: tuple[torch.Tensor, torch.Tensor] | None = None) -> ProbeResult:
    generator = torch.Generator().manual_seed(int(seed))
    layer = new_linear(x.shape[1], num_classes, generator).to(x.device)
    optimizer = torch.optim.SGD(layer.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=weight_decay, nesterov=settings.nesterov)
    top1, top5, losses, val_top1 = [], [], [], []
    for epoch in range(settings.epochs):
        set_learning_rate(optimizer, epoch_lr(settings, epoch))
        order = torch.randperm(len(x), generator=generator).to(x.device)
        total = 0.0
        for start in range(0, len(x), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            loss = F.cross_entropy(layer(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / len(x))
        accuracy = measure_accuracy(layer, eval_x, eval_y)
        top1.append(accuracy[0])
        top5.append(accuracy[1])
        if val is not None:
            val_top1.append(measure_accuracy(layer, *val)[0])
    return ProbeResult(top1, top5, losses, weight_decay, val_top1=val_top1)


def train_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                       num_classes: int, settings: ProbeSettings | None = None, seed: int = 0,
                       device: torch.device | str | None = None) -> ProbeResult:
    """Train a linear classifier on cached features and measure the test split after every epoch.

    Args:
        train_x, train_y: labelled features (N, F) float and labels (N,) int in [0, num_classes).
        test_x, test_y: test features (M, F) and labels (M,).
        num_classes: number of classes C.
        settings: :class:`ProbeSettings` (defaults when None).
        seed: seeds the initialisation, the batch order and the held-out split (the validation split,
            when ``settings.val_fraction > 0``, by :func:`validation_seed` of it).
        device: where to train (default: where ``train_x`` is).
    """
    settings = settings or ProbeSettings()
    check_labels(train_x, train_y, num_classes, "training set")
    check_labels(test_x, test_y, num_classes, "test set")
    device = torch.device(device) if device is not None else train_x.device
    train_x, test_x = train_x.to(device, torch.float32), test_x.to(device, torch.float32)
    train_y, test_y = train_y.to(device).long(), test_y.to(device).long()
    val, fit_rows, val_rows = None, None, None
    if settings.val_fraction > 0:
        fit_rows, val_rows = holdout_split(train_y.cpu(), settings.val_fraction, validation_seed(seed))
        val = train_x[val_rows.to(device)], train_y[val_rows.to(device)]
        train_x, train_y = train_x[fit_rows.to(device)], train_y[fit_rows.to(device)]
    if settings.standardize:  # with the statistics of the part trained on
        mean = train_x.mean(dim=0)
        std = train_x.std(dim=0) if len(train_x) > 1 else torch.ones_like(mean)
        std = std.clamp_min(1e-6)  # constant features (dead units) stay 0 instead of dividing by 0
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
        if val is not None:
            val = (val[0] - mean) / std, val[1]

    with _one_thread_for_small_products(device, settings.batch_size, train_x.shape[1], num_classes):
        result = _select_and_fit(train_x, train_y, test_x, test_y, num_classes, settings, seed, val)
    result.validation_indices, result.training_indices = val_rows, fit_rows
    return result


def _select_and_fit(train_x, train_y, test_x, test_y, num_classes, settings, seed, val=None) -> ProbeResult:
    device = train_x.device
    weight_decay, selection = settings.weight_decay, {}
    if settings.weight_decays:
        keep, held_out = (i.to(device) for i in holdout_split(train_y.cpu(), settings.holdout_fraction, seed,
                                                               every_class_both_sides=False))
        if len(keep) == 0:
            raise UserError("the labelled set is too small to hold out a part for choosing the weight decay; "
                             "give one weight_decay instead of a grid")
        for candidate in settings.weight_decays:
            trial = _fit_cached(train_x[keep], train_y[keep], train_x[held_out], train_y[held_out], num_classes,
                                settings, candidate, seed)
            selection[repr(candidate)] = trial.top1[-1]
        weight_decay = max(settings.weight_decays, key=lambda w: selection[repr(w)])  # first of the ties
    result = _fit_cached(train_x, train_y, test_x, test_y, num_classes, settings, weight_decay, seed, val)
    result.selection = selection
    return result

"""Linear classifiers on frozen features: the fast path on cached features, and the paper's protocol on images.

Both train a linear layer (weights N(0, 0.01), bias 0, as the reference ``RegLog``) with SGD,
momentum 0.9 and a cosine learning rate per epoch (``CosineAnnealingLR`` to 0), and measure the
test split after every epoch. Accuracies are percentages. A probe's result reports the best epoch
(the reference protocol's "best validation top-1", which is chosen on the test split) and the last one.
With ``ProbeSettings.val_fraction > 0`` it also holds out a class-balanced validation part of the
labelled set, measures it after every epoch too, and reports the test accuracy at the epoch of best
validation accuracy (``top1_val_selected``): an epoch choice that never looks at the test labels.

* :func:`train_linear_probe` works on cached features (extract once, see
  :func:`e2mc.evaluation.sources.extract_features`), standardised with the training set's mean and
  standard deviation (an affine change of variables: it changes the optimisation, not the family of
  classifiers). A weight-decay grid may be searched on a held-out part of the labelled set.
* :func:`train_linear_on_images` is the ImageNet protocol of the authors' ``eval_linear.py``: every
  epoch sends freshly augmented images (RandomResizedCrop + flip) through the frozen backbone.
  Its ``head`` chooses what is trained on the frozen backbone: ``"linear"``, a linear layer on the
  pooled features, or ``"reglog"``, the authors' transfer head :class:`RegLog` on the backbone's last
  spatial feature map (:func:`spatial_trunk`), with :data:`AUTHORS_TRANSFER_PROBE` its settings.

The learning rate follows ``ProbeSettings.schedule``: ``"cosine"`` (the default above) or ``"step"``
(``MultiStepLR``: multiplied by ``gamma`` at every epoch of ``milestones``), set per epoch by
:func:`epoch_lr`.
"""
from __future__ import annotations

import bisect
import contextlib
import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from e2mc.data import balanced_subset
from e2mc.errors import UserError
from e2mc.models import ConvNet
from e2mc.optim import set_learning_rate
from e2mc.evaluation.sources import ImageSource, backbone_of, extract_features, like_network, network_device


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
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError(f"probe epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.lr <= 0:
            raise UserError(f"probe lr must be > 0, got {self.lr}")
        if not 0 < self.holdout_fraction < 1:
            raise UserError(f"holdout_fraction must lie in (0, 1), got {self.holdout_fraction}")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"val_fraction must lie in [0, 1) (0: no validation split), got {self.val_fraction}")
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


def _check_labels(x: torch.Tensor, y: torch.Tensor, num_classes: int, name: str, any_shape: bool = False) -> None:
    """Features (N, F) (with ``any_shape``: (N, ...), e.g. pooled maps) and labels (N,) in [0, num_classes)."""
    if (x.dim() < 2 if any_shape else x.dim() != 2) or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"{name}: expected features (N, F) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(y) == 0:
        raise ValueError(f"{name}: no samples")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"{name}: labels must lie in [0, {num_classes}), got {int(y.min())}..{int(y.max())}")


@torch.no_grad()
def _accuracy(layer: nn.Linear, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> tuple[float, float]:
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
        accuracy = _accuracy(layer, eval_x, eval_y)
        top1.append(accuracy[0])
        top5.append(accuracy[1])
        if val is not None:
            val_top1.append(_accuracy(layer, *val)[0])
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
    _check_labels(train_x, train_y, num_classes, "training set")
    _check_labels(test_x, test_y, num_classes, "test set")
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


# ----------------------------------------------------------------------------- the authors' transfer head

def spatial_trunk(network: nn.Module) -> nn.Module:
    """The part of ``network``'s backbone that ends at its last spatial feature map (N, C, H, W).

    torchvision ResNets (``build_backbone("resnet50" | "resnet18")``, ``fc`` = Identity): conv1, bn1,
    relu, maxpool, layer1 to layer4, without avgpool ((N, 2048, 7, 7) for ResNet-50 at 224 px). The mini
    :class:`e2mc.models.ConvNet`: its ``blocks``, without ``pool`` ((N, 256, 3, 3) at 28 px). The
    modules are the backbone's own (shared, not copied). Raises ValueError for any other backbone.
    """
    backbone = backbone_of(network)
    if isinstance(backbone, torchvision.models.ResNet):
        return nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool,
                             backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
    if isinstance(backbone, ConvNet):
        return backbone.blocks
    raise UserError(f"no spatial feature map known for a {type(backbone).__name__} backbone: the RegLog transfer "
                     "head reads the last feature map of a torchvision ResNet (layer4) or of the mini ConvNet "
                     "(blocks); use the pooled transfer protocol for other backbones")


@torch.no_grad()
def feature_map(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The last spatial feature map of ``network``'s backbone for ``images`` (see :func:`spatial_trunk`),
    computed in whatever mode the backbone is in, without gradients."""
    trunk = spatial_trunk(network)
    return trunk(like_network(images, trunk))


class RegLog(nn.Module):
    """The authors' transfer head (SwAV's ``RegLog`` with global_pooling=false, use_bn=true) on a feature
    map (N, C, H, W): AvgPool2d(kernel_size=6, stride=1) -> BatchNorm2d(C) -> flatten -> Linear.

    On ResNet-50's 7 x 7 map at 224 px the pooled map is 2 x 2, so the linear layer has C * 4 = 8192
    inputs. The linear layer is initialised as :func:`new_linear` (weights N(0, 0.01) from
    ``generator``, bias 0), the BatchNorm as PyTorch's default (weight 1, bias 0); both are trained.
    The kernel is clamped to the map, ``min(kernel_size, H)`` x ``min(kernel_size, W)``, so that the
    head also runs on maps smaller than 6 (the mini ConvNet's 3 x 3 at 28 px: a 1 x 1 pooled map, i.e.
    global average pooling); for maps of at least 6 it is the reference head exactly.

    ``forward(x) = classify(av_pool(x))``: the pooling has no parameters, so the image trainer applies
    it once per image on the frozen side and trains :meth:`classify`.
    """

    def __init__(self, channels: int, map_size: int | tuple[int, int], num_classes: int,
                 generator: torch.Generator | None = None, kernel_size: int = 6) -> None:
        super().__init__()
        height, width = (map_size, map_size) if isinstance(map_size, int) else map_size
        if min(channels, height, width, num_classes, kernel_size) < 1:
            raise ValueError(f"RegLog needs positive channels, map size, classes and kernel, got {channels}, "
                             f"{(height, width)}, {num_classes}, {kernel_size}")
        self.kernel_size = (min(kernel_size, height), min(kernel_size, width))
        self.pooled_size = (height - self.kernel_size[0] + 1, width - self.kernel_size[1] + 1)
        self.av_pool = nn.AvgPool2d(self.kernel_size, stride=1)
        self.bn = nn.BatchNorm2d(channels)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.linear = new_linear(channels * self.pooled_size[0] * self.pooled_size[1], num_classes, generator)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits of an already pooled map (N, C, s_h, s_w)."""
        return self.linear(torch.flatten(self.bn(pooled), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.av_pool(x))


IMAGE_PROBE_HEADS = ("linear", "reglog")


def _image_head(network: nn.Module, head: str, test_source: ImageSource, test_indices: torch.Tensor | None,
                num_classes: int, generator: torch.Generator, device: torch.device
                ) -> tuple[nn.Module, Callable[[int], nn.Module]]:
    """(encoder, make_classifier) of an image probe whose backbone is in eval mode. The encoder maps
    images to the frozen input of the trained part (run without gradients, its output cached for the
    test and validation images); ``make_classifier(dim)`` builds the trained part, ``dim`` being the
    encoder's output width."""
    if head == "linear":
        return backbone_of(network), lambda dim: new_linear(dim, num_classes, generator).to(device)
    trunk = spatial_trunk(network)
    first = torch.as_tensor(test_indices if test_indices is not None else torch.arange(len(test_source)))[:1]
    batches = test_source.batches(first, 1, device)
    try:
        images, _ = next(iter(batches))
    finally:
        if hasattr(batches, "close"):
            batches.close()  # ends the DataLoader (and its workers) at once
    with torch.no_grad():  # one image tells the map's shape, which fixes the pooling kernel
        channels, height, width = trunk(like_network(images, trunk)).shape[1:]
    reglog = RegLog(channels, (height, width), num_classes, generator).to(device)
    return nn.Sequential(trunk, reglog.av_pool).eval(), lambda dim: _Classify(reglog)


class _Classify(nn.Module):
    """A :class:`RegLog` without its (parameter-free) pooling: what the image trainer trains."""

    def __init__(self, reglog: RegLog) -> None:
        super().__init__()
        self.reglog = reglog

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.reglog.classify(pooled)


def train_linear_on_images(network: nn.Module, train_source: ImageSource, train_indices: torch.Tensor,
                           test_source: ImageSource, test_indices: torch.Tensor | None, num_classes: int,
                           settings: ProbeSettings = PAPER_IMAGE_PROBE, seed: int = 0,
                           extraction_batch_size: int = 256, head: str = "linear") -> ProbeResult:
    """The paper's linear evaluation: a classifier on the frozen backbone, trained on augmented images.

    Each epoch draws new training augmentations (``train_source.batches(train=True)``) and sends them
    through the backbone in eval mode without gradients; the test split (deterministic transform)
    is encoded once. No feature standardisation (the reference has none). Runs on the network's device.
    With ``settings.val_fraction > 0`` a class-balanced part of ``train_indices`` (seeded by
    :func:`validation_seed`) is held out, encoded once with the evaluation transform, and measured
    after every epoch; the classifier trains on the other images only.

    ``head``: ``"linear"`` (default), a linear layer on the backbone's pooled features; ``"reglog"``,
    the authors' transfer protocol: :class:`RegLog` on the last spatial feature map
    (:func:`spatial_trunk`; its average pooling is applied on the frozen side and cached for the test
    and validation images, exactly as computing it every epoch), its BatchNorm in train mode while
    training and in eval mode when measuring (use :data:`AUTHORS_TRANSFER_PROBE` as ``settings``).
    A training batch whose pooled map holds a single value per channel (one image on a 1 x 1 pooled
    map, possible only with the clamped kernel of small maps) cannot be batch-normalised and is skipped.
    """
    if head not in IMAGE_PROBE_HEADS:
        raise UserError(f"image probe head must be one of {', '.join(IMAGE_PROBE_HEADS)}, got {head!r}")
    if settings.weight_decays:
        raise UserError("the image protocol uses one weight decay; weight_decays is for train_linear_probe")
    backbone = backbone_of(network)
    device = network_device(network)
    was_training = backbone.training
    backbone.eval()
    try:
        return _train_on_images(network, train_source, train_indices, test_source, test_indices, num_classes,
                                settings, seed, extraction_batch_size, head, device)
    finally:
        backbone.train(was_training)


def _train_on_images(network, train_source, train_indices, test_source, test_indices, num_classes, settings, seed,
                     extraction_batch_size, head, device) -> ProbeResult:
    generator = torch.Generator().manual_seed(int(seed))
    encoder, make_classifier = _image_head(network, head, test_source, test_indices, num_classes, generator, device)
    test_x, test_y = extract_features(encoder, test_source, test_indices, extraction_batch_size)
    test_x, test_y = test_x.to(device), test_y.to(device)
    _check_labels(test_x, test_y, num_classes, "test set", any_shape=True)
    val, val_indices = None, None
    if settings.val_fraction > 0:
        train_indices = torch.as_tensor(train_indices, dtype=torch.long).cpu()
        fit_rows, val_rows = holdout_split(train_source.labels[train_indices], settings.val_fraction,
                                           validation_seed(seed))
        train_indices, val_indices = train_indices[fit_rows], train_indices[val_rows]
        val_x, val_y = extract_features(encoder, train_source, val_indices, extraction_batch_size)
        val = val_x.to(device), val_y.to(device)
        _check_labels(*val, num_classes, "validation set", any_shape=True)
    classifier = make_classifier(test_x.shape[1])
    optimizer = torch.optim.SGD(classifier.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay, nesterov=settings.nesterov)
    values_per_channel = math.prod(test_x.shape[2:])  # 1 for pooled features
    top1, top5, losses, val_top1 = [], [], [], []
    for epoch in range(settings.epochs):
        set_learning_rate(optimizer, epoch_lr(settings, epoch))
        classifier.train()
        total, seen = 0.0, 0
        for images, labels in train_source.batches(train_indices, settings.batch_size, device, train=True,
                                                   generator=generator):
            if head == "reglog" and len(labels) * values_per_channel < 2:
                continue  # BatchNorm in train mode needs two values per channel
            with torch.no_grad():
                features = encoder(like_network(images, encoder)).float()
            loss = F.cross_entropy(classifier(features), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(labels), seen + len(labels)
        losses.append(total / max(seen, 1))
        classifier.eval()
        accuracy = _accuracy(classifier, test_x, test_y)
        top1.append(accuracy[0])
        top5.append(accuracy[1])
        if val is not None:
            val_top1.append(_accuracy(classifier, *val)[0])
    return ProbeResult(top1, top5, losses, settings.weight_decay, val_top1=val_top1,
                       validation_indices=val_indices, training_indices=train_indices if val is not None else None)

"""The paper's linear probe on images, and the authors' transfer head on the last feature map.

* :func:`train_linear_on_images` is the ImageNet protocol of the authors' ``eval_linear.py``: every
  epoch sends freshly augmented images (RandomResizedCrop + flip) through the frozen backbone.
  Its ``head`` chooses what is trained on the frozen backbone: ``"linear"``, a linear layer on the
  pooled features, or ``"reglog"``, the authors' transfer head :class:`RegLog` on the backbone's last
  spatial feature map (:func:`spatial_trunk`), with :data:`e2mc.evaluation.linear.AUTHORS_TRANSFER_PROBE`
  its settings.

The settings, the result and the learning-rate schedule are those of the cached-feature probe
(:mod:`e2mc.evaluation.linear`).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from e2mc.errors import UserError
from e2mc.models import ConvNet
from e2mc.optim import set_learning_rate
from e2mc.evaluation.linear import (PAPER_IMAGE_PROBE, ProbeResult, ProbeSettings, check_labels, epoch_lr,
                                    holdout_split, measure_accuracy, new_linear, validation_seed)
from e2mc.evaluation.sources import ImageSource, backbone_of, extract_features, like_network, network_device


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
    check_labels(test_x, test_y, num_classes, "test set", any_shape=True)
    val, val_indices = None, None
    if settings.val_fraction > 0:
        train_indices = torch.as_tensor(train_indices, dtype=torch.long).cpu()
        fit_rows, val_rows = holdout_split(train_source.labels[train_indices], settings.val_fraction,
                                           validation_seed(seed))
        train_indices, val_indices = train_indices[fit_rows], train_indices[val_rows]
        val_x, val_y = extract_features(encoder, train_source, val_indices, extraction_batch_size)
        val = val_x.to(device), val_y.to(device)
        check_labels(*val, num_classes, "validation set", any_shape=True)
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
        accuracy = measure_accuracy(classifier, test_x, test_y)
        top1.append(accuracy[0])
        top5.append(accuracy[1])
        if val is not None:
            val_top1.append(measure_accuracy(classifier, *val)[0])
    return ProbeResult(top1, top5, losses, settings.weight_decay, val_top1=val_top1,
                       validation_indices=val_indices, training_indices=train_indices if val is not None else None)

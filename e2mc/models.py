"""Backbones shared by every method: torchvision ResNets and a small ConvNet for 28 px grey images.

Each method's network lives in its own module (``e2mc/methods/<name>.py``), its heads built by
:mod:`e2mc.heads`. Every method network returns a dict from ``model(x)``; all tensors are float,
N is the batch size:

* ``"features"``   (N, F)  backbone output (F = 2048 for ResNet-50), what linear probes read;
* ``"embedding"``  (N, D)  the tensor E2MC acts on;
* and whatever else the method's objective needs (SwAV's prototype scores, SimSiam's prediction).

Module names follow the official repositories, so that :mod:`e2mc.checkpoints` maps the official
releases onto them tensor for tensor. All networks work with ``channels_last`` inputs and weights.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision
from torch import nn

from e2mc.errors import UserError

BACKBONES = ("resnet50", "resnet18", "convnet")


class ConvNet(nn.Module):
    """Small backbone for 28 x 28 grey images (Fashion-MNIST).

    Four blocks of 3x3 convolution - BatchNorm - ReLU; a 2x2 max-pool follows each of the
    first three (28 -> 14 -> 7 -> 3), then global average pooling.

    Input (N, in_channels, H, W) with H, W >= 8; output (N, widths[-1]).
    The default widths (32, 64, 128, 256) train one epoch of 60k images with two views
    (120k images forward and backward, batch 256, with a 1024-1024-1024 expander) in
    about 60 to 85 s on two CPU cores.
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        if len(widths) != 4 or any(int(w) < 1 for w in widths):
            raise UserError(f"ConvNet needs four positive widths, got {tuple(widths)}")
        layers: list[nn.Module] = []
        channels = in_channels
        for index, width in enumerate(widths):
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if index < 3:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = int(widths[-1])
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.blocks(x)), 1)


def _resnet(name: str, in_channels: int) -> tuple[nn.Module, int]:
    # zero_init_residual as in the official VICReg and SimSiam code (matters only from scratch).
    net = getattr(torchvision.models, name)(weights=None, zero_init_residual=True)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()  # the trunk ends at the pooled features
    return net, feature_dim


def build_backbone(name: str, in_channels: int | None = None,
                   widths: Sequence[int] | None = None) -> tuple[nn.Module, int]:
    """Build a backbone and return ``(module, feature_dim)``.

    ``"resnet50"`` (2048-d) and ``"resnet18"`` (512-d) are torchvision ResNets with ``fc``
    replaced by Identity; their state-dict keys equal those of the official VICReg, SwAV and
    SimSiam ResNets (whose extra padding layer has no parameters). ``"convnet"`` is
    :class:`ConvNet` (256-d by default) for 28 x 28 grey images; ``widths`` sets its four block
    widths (the last is the feature dimension).

    ``in_channels`` defaults to 3 for the ResNets and 1 for the ConvNet.
    """
    if name in ("resnet50", "resnet18"):
        if widths is not None:
            raise UserError(f"widths is a ConvNet option; {name} has fixed widths")
        return _resnet(name, 3 if in_channels is None else in_channels)
    if name == "convnet":
        channels = 1 if in_channels is None else in_channels
        net = ConvNet(channels) if widths is None else ConvNet(channels, tuple(widths))
        return net, net.feature_dim
    raise UserError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")

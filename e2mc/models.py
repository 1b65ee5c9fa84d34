"""Backbones shared by every method: torchvision ResNets and a small ConvNet for 28 px grey images.

Each method's heads live in its own module (``e2mc/methods/<name>.py``). Every method network
returns a dict from ``model(x)``; all tensors are float, N is the batch size:

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


def check_dims(**dims: int) -> None:
    for name, value in dims.items():
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")


class EmbeddingHead(nn.Sequential):
    """An ``nn.Sequential`` whose last ``float32_tail`` modules run in float32 with autocast off.

    Under mixed precision (``train.amp``) a Linear's output is bf16, and casting it up afterwards does
    not bring back the bits that E2MC's sort and spacings need; here the embedding is computed in
    float32 from the start (docs/fidelity.md gives the measured difference). Without autocast, on
    float32 input, it computes exactly what ``nn.Sequential`` computes. Module indices, and so
    state-dict keys, are those of ``nn.Sequential``.
    """

    def __init__(self, *modules: nn.Module, float32_tail: int = 1) -> None:
        super().__init__(*modules)
        if not 1 <= float32_tail <= len(self):
            raise ValueError(f"float32_tail must be between 1 and {len(self)}, got {float32_tail}")
        self.float32_tail = float32_tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        modules = list(self)
        for module in modules[:-self.float32_tail]:
            x = module(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(torch.promote_types(x.dtype, torch.float32))
            for module in modules[-self.float32_tail:]:
                x = module(x)
        return x


def projector_mlp(sizes: Sequence[int], hidden_bias: bool = True) -> EmbeddingHead:
    """(Linear - BatchNorm1d - ReLU) between consecutive ``sizes`` but the last pair, then a Linear
    without bias: VICReg's expander (hidden biases) and Barlow Twins' projector (none). Module indices
    follow the official repositories (0, 1, 3, 4, 6 for three layers), so releases load as they are.
    The last Linear runs in float32 under autocast (:class:`EmbeddingHead`)."""
    if len(sizes) < 2:
        raise UserError(f"a projector needs at least an input and an output size, got {list(sizes)}")
    check_dims(**{f"sizes[{i}]": s for i, s in enumerate(sizes)})
    layers: list[nn.Module] = []
    for width_in, width_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(width_in, width_out, bias=hidden_bias), nn.BatchNorm1d(width_out), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    return EmbeddingHead(*layers)

"""Backbones and the three method networks that E2MC continues to train.

Every network returns a dict from ``model(x)``; all tensors are float, N is the batch size:

* ``"features"``   (N, F)  backbone output (F = 2048 for ResNet-50), what linear probes read;
* ``"embedding"``  (N, D)  the tensor E2MC acts on (VICReg: expander output; SwAV: projector
  output before L2 normalisation; SimSiam: projector output);
* SwAV also ``"normalized"`` (N, D), the L2-normalised embedding, and ``"scores"`` (N, K),
  its dot products with the K prototypes; SimSiam also ``"prediction"`` (N, D).

Module names follow the official repositories (``backbone``/``projector`` as in
facebookresearch/vicreg, ``projection_head``/``prototypes`` as in facebookresearch/swav,
``projector``/``predictor`` for facebookresearch/simsiam's ``encoder.fc``/``predictor``) so that
:mod:`e2mc.checkpoints` maps the official releases onto them tensor for tensor.
All networks work with ``channels_last`` inputs and weights.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from e2mc.objectives.swav import normalize_prototypes_

BACKBONES = ("resnet50", "resnet18", "convnet")
METHODS = ("vicreg", "swav", "simsiam")


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
            raise ValueError(f"ConvNet needs four positive widths, got {tuple(widths)}")
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
            raise ValueError(f"widths is a ConvNet option; {name} has fixed widths")
        return _resnet(name, 3 if in_channels is None else in_channels)
    if name == "convnet":
        channels = 1 if in_channels is None else in_channels
        net = ConvNet(channels) if widths is None else ConvNet(channels, tuple(widths))
        return net, net.feature_dim
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def _check_dims(**dims: int) -> None:
    for name, value in dims.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class VICRegNet(nn.Module):
    """Backbone plus VICReg's expander (``projector``).

    The expander is (Linear - BatchNorm1d - ReLU) for every size but the last, then a Linear
    without bias, as ``Projector`` in facebookresearch/vicreg; sizes ``feature_dim-8192-8192-8192``
    by default.

    ``forward(x)``: x (N, C, H, W) -> {"features": (N, feature_dim), "embedding": (N, expander[-1])}.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, expander: Sequence[int] = (8192, 8192, 8192)) -> None:
        super().__init__()
        sizes = [feature_dim, *expander]
        if len(sizes) < 2:
            raise ValueError("expander needs at least one size, e.g. expander=(8192, 8192, 8192)")
        _check_dims(**{f"sizes[{i}]": s for i, s in enumerate(sizes)})
        layers: list[nn.Module] = []
        for width_in, width_out in zip(sizes[:-2], sizes[1:-1]):
            layers += [nn.Linear(width_in, width_out), nn.BatchNorm1d(width_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        self.backbone = backbone
        self.projector = nn.Sequential(*layers)
        self.feature_dim = feature_dim
        self.embedding_dim = sizes[-1]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        return {"features": features, "embedding": self.projector(features)}


class SwAVNet(nn.Module):
    """Backbone plus SwAV's projection head and prototypes.

    ``projection_head``: Linear(feature_dim, hidden_dim) - BatchNorm1d - ReLU - Linear(hidden_dim,
    output_dim); ``prototypes``: Linear(output_dim, n_prototypes) without bias, as
    facebookresearch/swav ``src/resnet50.py``.

    ``forward(x)`` takes one batch (N, C, H, W) or a list of crops, each (N_i, C, H_i, W_i).
    Consecutive crops of equal resolution go through the backbone together (so BatchNorm sees
    them as one batch, as in official SwAV), and all outputs are stacked in crop order: with
    M = sum N_i rows, the result is {"features": (M, feature_dim), "embedding": (M, output_dim)
    unnormalised, "normalized": (M, output_dim) unit rows, "scores": (M, n_prototypes)}.
    Rows of crop i are ``[sum_{j<i} N_j, sum_{j<=i} N_j)``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        hidden_dim: int = 2048,
        output_dim: int = 128,
        n_prototypes: int = 3000,
    ) -> None:
        super().__init__()
        _check_dims(feature_dim=feature_dim, hidden_dim=hidden_dim, output_dim=output_dim, n_prototypes=n_prototypes)
        self.backbone = backbone
        self.projection_head = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, output_dim),
        )
        self.prototypes = nn.Linear(output_dim, n_prototypes, bias=False)
        self.feature_dim = feature_dim
        self.embedding_dim = output_dim

    def forward_features(self, crops: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Backbone features of all crops, (sum N_i, feature_dim), in crop order."""
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        if len(crops) == 0:
            raise ValueError("SwAVNet needs at least one crop")
        for index, crop in enumerate(crops):
            if not isinstance(crop, torch.Tensor) or crop.dim() != 4:
                shape = tuple(crop.shape) if isinstance(crop, torch.Tensor) else type(crop).__name__
                raise ValueError(f"crop {index} must be an (N, C, H, W) tensor, got {shape}")
        outputs, start = [], 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            outputs.append(self.backbone(torch.cat(list(crops[start:end]))))
            start = end
        return torch.cat(outputs)

    def forward(self, crops: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        features = self.forward_features(crops)
        embedding = self.projection_head(features)
        normalized = F.normalize(embedding, dim=1, p=2)
        return {
            "features": features,
            "embedding": embedding,
            "normalized": normalized,
            "scores": self.prototypes(normalized),
        }

    def normalize_prototypes(self) -> None:
        """Rescale every prototype to unit L2 norm (official SwAV does this before each step)."""
        normalize_prototypes_(self.prototypes)


class SimSiamNet(nn.Module):
    """Backbone plus SimSiam's 3-layer projector and 2-layer predictor.

    ``projector`` (official ``encoder.fc``): Linear(F, h, no bias) - BN - ReLU - Linear(h, h, no bias)
    - BN - ReLU - Linear(h, dim) - BatchNorm1d(dim, affine=False), with h = ``hidden_dim``
    (official: h = F). The bias of ``projector[6]`` is kept frozen (requires_grad False) exactly
    as in facebookresearch/simsiam, where it exists but is not trained because a BN follows.
    ``predictor``: Linear(dim, pred_dim, no bias) - BN - ReLU - Linear(pred_dim, dim).

    ``forward(x)``: x (N, C, H, W) -> {"features": (N, F), "embedding": (N, dim),
    "prediction": (N, dim)}. The stop-gradient belongs to the loss, not here.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        dim: int = 2048,
        pred_dim: int = 512,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        hidden_dim = feature_dim if hidden_dim is None else hidden_dim
        _check_dims(feature_dim=feature_dim, dim=dim, pred_dim=pred_dim, hidden_dim=hidden_dim)
        self.backbone = backbone
        self.projector = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, dim),
            nn.BatchNorm1d(dim, affine=False),
        )
        self.projector[6].bias.requires_grad_(False)
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred_dim, bias=False),
            nn.BatchNorm1d(pred_dim),
            nn.ReLU(inplace=True),
            nn.Linear(pred_dim, dim),
        )
        self.feature_dim = feature_dim
        self.embedding_dim = dim

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        embedding = self.projector(features)
        return {"features": features, "embedding": embedding, "prediction": self.predictor(embedding)}


_NETWORKS: dict[str, type[nn.Module]] = {"vicreg": VICRegNet, "swav": SwAVNet, "simsiam": SimSiamNet}


def build_model(method: str, backbone: str = "resnet50", in_channels: int | None = None,
                backbone_widths: Sequence[int] | None = None, **head_sizes) -> nn.Module:
    """Build ``method``'s network on the named backbone.

    ``head_sizes`` go to the network: ``expander=(...)`` for VICReg; ``hidden_dim``,
    ``output_dim``, ``n_prototypes`` for SwAV; ``dim``, ``pred_dim``, ``hidden_dim`` for
    SimSiam. Defaults are the paper's (official releases') sizes.

    Example: ``build_model("vicreg", "convnet", expander=(1024, 1024, 1024))``.
    """
    if method not in _NETWORKS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    network = _NETWORKS[method]
    accepted = [p for p in inspect.signature(network.__init__).parameters if p not in ("self", "backbone", "feature_dim")]
    unknown = sorted(set(head_sizes) - set(accepted))
    if unknown:
        raise TypeError(f"{method} does not take head size(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}")
    trunk, feature_dim = build_backbone(backbone, in_channels, backbone_widths)
    return network(trunk, feature_dim, **head_sizes)

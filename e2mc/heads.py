"""The heads the methods put on a backbone, built in one place.

:func:`projection_mlp` builds every projector, expander and predictor: (Linear - BatchNorm1d - ReLU)
between consecutive sizes, then a last Linear, optionally followed by an affine-free BatchNorm1d.
Module indices are those of the official repositories (0, 1, 2 for the first block, 3, 4, 5 for the
second, ...), so their releases load as they are, and modules are created in order, so a seed gives
the weights it gave before this module existed.

:class:`ProjectedBackbone` is a backbone with one such MLP on top (``projector``), the network of the
methods whose embedding is the projector output (VICReg, Barlow Twins).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from e2mc.checks import check_dims
from e2mc.errors import UserError


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


def projection_mlp(sizes: Sequence[int], hidden_bias: bool = True, last_bias: bool = False,
                   last_bn: bool = False, float32_tail: bool = True) -> nn.Sequential:
    """An MLP from ``sizes[0]`` to ``sizes[-1]`` features: input (N, sizes[0]) -> (N, sizes[-1]).

    Args:
        sizes: the widths, input first; at least two.
        hidden_bias: whether the Linear layers before a BatchNorm have a bias (VICReg's and SwAV's do,
            Barlow Twins' and SimSiam's do not).
        last_bias: whether the last Linear has a bias (SwAV, SimSiam: yes; VICReg, Barlow Twins: no).
        last_bn: end with ``BatchNorm1d(sizes[-1], affine=False)`` (SimSiam's projector).
        float32_tail: an :class:`EmbeddingHead` whose last Linear (and last BatchNorm) run in float32
            under autocast, for a head whose output E2MC reads; False: a plain ``nn.Sequential``
            (SimSiam's predictor). Both compute the same on float32 input without autocast.
    """
    if len(sizes) < 2:
        raise UserError(f"a projector needs at least an input and an output size, got {list(sizes)}")
    check_dims(**{f"sizes[{i}]": s for i, s in enumerate(sizes)})
    layers: list[nn.Module] = []
    for width_in, width_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(width_in, width_out, bias=hidden_bias), nn.BatchNorm1d(width_out), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=last_bias))
    if last_bn:
        layers.append(nn.BatchNorm1d(sizes[-1], affine=False))
    if not float32_tail:
        return nn.Sequential(*layers)
    return EmbeddingHead(*layers, float32_tail=2 if last_bn else 1)


class ProjectedBackbone(nn.Module):
    """Backbone plus one :func:`projection_mlp` (``projector``) of sizes ``feature_dim, *sizes``.

    ``forward(x)``: x (N, C, H, W) -> {"features": (N, feature_dim), "embedding": (N, sizes[-1])}.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, sizes: Sequence[int], hidden_bias: bool,
                 option: str) -> None:
        super().__init__()
        if len(sizes) < 1:
            raise UserError(f"{option} needs at least one size, e.g. {option}=(8192, 8192, 8192)")
        self.backbone = backbone
        self.projector = projection_mlp([feature_dim, *sizes], hidden_bias=hidden_bias)
        self.feature_dim = feature_dim
        self.embedding_dim = sizes[-1]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        return {"features": features, "embedding": self.projector(features)}

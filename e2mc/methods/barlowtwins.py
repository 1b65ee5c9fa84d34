"""Barlow Twins (Zbontar, Jing, Misra, LeCun & Deny, ICML 2021; facebookresearch/barlowtwins).

Not one of the paper's methods: E2MC is added here as to VICReg, on the 8192-d projector output
(before the affine-free batch norm the loss reads) with the sigmoid, lambda_ent 10, lambda_cov 1.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from e2mc.data.recipes import grey_recipe
from e2mc.heads import ProjectedBackbone
from e2mc.methods.base import Method, Release, register
from e2mc.methods.vicreg import IMAGENET_VIEWS
from e2mc.objectives.barlowtwins import BarlowTwinsLoss


class BarlowTwinsNet(ProjectedBackbone):
    """Backbone, Barlow Twins' projector, and the affine-free batch norm of its output (``bn``).

    ``projector``: (Linear without bias - BatchNorm1d - ReLU) for every size but the last, then a
    Linear without bias, sizes ``feature_dim-8192-8192-8192`` by default, as ``main.py`` of
    facebookresearch/barlowtwins (whose module names these are, so its checkpoints load as they are).

    ``forward(x)``: x (N, C, H, W) -> {"features": (N, feature_dim), "embedding": (N, D) the projector
    output, "normalized": (N, D) its batch norm (batch statistics in training, as the loss needs)}.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, projector: Sequence[int] = (8192, 8192, 8192)) -> None:
        super().__init__(backbone, feature_dim, projector, hidden_bias=False, option="projector")
        self.bn = nn.BatchNorm1d(self.embedding_dim, affine=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = super().forward(x)
        return {**outputs, "normalized": self.bn(outputs["embedding"])}


class BarlowTwins(Method):
    name, label = "barlowtwins", "Barlow Twins"
    network_class, objective_class = BarlowTwinsNet, BarlowTwinsLoss
    transform, paper_coefficients = "sigmoid", (10.0, 1.0)  # not in the paper: VICReg's setting
    in_paper = False
    objective_input = "normalized"  # the loss reads the batch-normalised views, E2MC the embeddings
    # facebookresearch/barlowtwins main.py Transform: BYOL's asymmetric pair, as VICReg's.
    imagenet_views = IMAGENET_VIEWS
    mini_views = tuple(grey_recipe(r, 28) for r in IMAGENET_VIEWS)
    releases = (
        Release("resnet50.pth", "https://dl.fbaipublicfiles.com/barlowtwins/ljng/resnet50.pth",
                "backbone only (torchvision ResNet-50 keys, no fc); the projector starts from random weights"),
        Release("checkpoint.pth", "https://dl.fbaipublicfiles.com/barlowtwins/ljng/checkpoint.pth",
                "backbone, projector and bn (keys module.*, under 'model'), LARS state, epoch"),
    )


register(BarlowTwins())

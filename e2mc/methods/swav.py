"""SwAV (Caron et al., NeurIPS 2020; facebookresearch/swav).

E2MC acts on the unnormalised 128-d projection of the two large (assignment) crops with the
Gaussian CDF, lambda_ent 10, lambda_cov 1.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from e2mc.checks import check_dims
from e2mc.data.recipes import SWAV_IMAGENET_STD, ViewRecipe, grey_recipe
from e2mc.heads import projection_mlp
from e2mc.methods.base import CriterionViews, Method, Release, register
from e2mc.objectives.swav import SwAVLoss, normalize_prototypes_


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

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int = 2048, output_dim: int = 128,
                 n_prototypes: int = 3000) -> None:
        super().__init__()
        check_dims(feature_dim=feature_dim, hidden_dim=hidden_dim, output_dim=output_dim, n_prototypes=n_prototypes)
        self.backbone = backbone
        self.projection_head = projection_mlp([feature_dim, hidden_dim, output_dim], last_bias=True)  # float32 tail
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
        return {"features": features, "embedding": embedding, "normalized": normalized,
                "scores": self.prototypes(normalized)}

    def normalize_prototypes(self) -> None:
        """Rescale every prototype to unit L2 norm (official SwAV does this before each step)."""
        normalize_prototypes_(self.prototypes)


# facebookresearch/swav multicropdataset.py with --nmb_crops 2 6 --size_crops 224 96
# --min_scale_crops 0.14 0.05 --max_scale_crops 1. 0.14: colour distortion s = 1, i.e.
# ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale p 0.2, blur p 0.5; SwAV's std (0.228, 0.224, 0.225).
_LARGE = ViewRecipe(224, (0.14, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5, std=SWAV_IMAGENET_STD)


class SwAV(Method):
    name, label = "swav", "SwAV"
    network_class, objective_class = SwAVNet, SwAVLoss
    transform, paper_coefficients = "gaussian_cdf", (10.0, 1.0)
    imagenet_views = (_LARGE,) * 2 + (replace(_LARGE, size=96, scale=(0.05, 0.14)),) * 6
    # 2 x 28 px + 4 x 16 px: 16 px keeps roughly SwAV's small/large side ratio 96/224 while leaving a
    # small CNN a few feature-map pixels; 4 rather than 6 small crops keeps a CPU epoch short.
    mini_views = (grey_recipe(_LARGE, 28),) * 2 + (grey_recipe(_LARGE, 16, (0.05, 0.14)),) * 4
    releases = (
        Release("swav_800ep_pretrain.pth.tar",
                "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar",
                "ResNet-50 with projection_head and prototypes (keys module.*); no optimizer state"),
    )

    def before_step(self, network):
        network.normalize_prototypes()

    def forward(self, network, views):
        return network(views)  # crops of equal resolution share one backbone pass

    def loss(self, outputs, batch, objective, network):
        # Rows of crop i are [i * batch, (i + 1) * batch); E2MC acts on the two assignment crops,
        # MMCR's centroids average every crop (as in the authors' SwAV + MMCR code).
        terms = objective(list(outputs["normalized"].split(batch)), network.prototypes.weight)
        z1, z2, *others = outputs["embedding"].split(batch)
        return terms, CriterionViews(z1, z2, others)


register(SwAV())

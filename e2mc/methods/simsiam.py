"""SimSiam (Chen & He, CVPR 2021; facebookresearch/simsiam).

E2MC acts on the 2048-d projector output with the Gaussian CDF, lambda_ent 1, lambda_cov 25.
"""
from __future__ import annotations

import torch
from torch import nn

from e2mc.checks import check_dims
from e2mc.data.recipes import ViewRecipe, grey_recipe
from e2mc.heads import projection_mlp
from e2mc.methods.base import CriterionViews, Method, Release, register
from e2mc.objectives.simsiam import SimSiamLoss


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

    def __init__(self, backbone: nn.Module, feature_dim: int, dim: int = 2048, pred_dim: int = 512,
                 hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = feature_dim if hidden_dim is None else hidden_dim
        check_dims(feature_dim=feature_dim, dim=dim, pred_dim=pred_dim, hidden_dim=hidden_dim)
        self.backbone = backbone
        self.projector = projection_mlp([feature_dim, hidden_dim, hidden_dim, dim], hidden_bias=False,
                                        last_bias=True, last_bn=True)  # last Linear and BN in float32: E2MC's input
        self.projector[6].bias.requires_grad_(False)
        self.predictor = projection_mlp([dim, pred_dim, dim], hidden_bias=False, last_bias=True, float32_tail=False)
        self.feature_dim = feature_dim
        self.embedding_dim = dim

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        embedding = self.projector(features)
        return {"features": features, "embedding": embedding, "prediction": self.predictor(embedding)}


# facebookresearch/simsiam (MoCo v2's recipe): 224 px, scale (0.2, 1), ColorJitter(0.4, 0.4, 0.4, 0.1)
# p 0.8, grayscale p 0.2, blur sigma U(0.1, 2) p 0.5, flip (applied last there, which gives the same
# distribution: flipping commutes with the other steps).
_VIEW = ViewRecipe(224, (0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5)


class SimSiam(Method):
    name, label = "simsiam", "SimSiam"
    network_class, objective_class = SimSiamNet, SimSiamLoss
    transform, paper_coefficients = "gaussian_cdf", (1.0, 25.0)
    imagenet_views = (_VIEW,) * 2
    mini_views = (grey_recipe(_VIEW, 28),) * 2
    releases = (
        Release("checkpoint_0099.pth.tar",
                "https://dl.fbaipublicfiles.com/simsiam/models/100ep-256bs/pretrain/checkpoint_0099.pth.tar",
                "encoder and predictor (keys module.encoder.*, module.predictor.*, under 'state_dict'), "
                "SGD state, epoch"),
    )

    def loss(self, outputs, batch, objective, network):
        z1, z2 = outputs[0]["embedding"], outputs[1]["embedding"]
        return objective(outputs[0]["prediction"], outputs[1]["prediction"], z1, z2), CriterionViews(z1, z2)

    def official_key(self, key: str) -> str:
        # The projector is the encoder's fc; the rest of the encoder is the backbone.
        if key.startswith("encoder.fc."):
            return "projector." + key[len("encoder.fc."):]
        if key.startswith("encoder."):
            return "backbone." + key[len("encoder."):]
        return key


register(SimSiam())

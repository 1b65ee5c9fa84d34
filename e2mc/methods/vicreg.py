"""VICReg (Bardes, Ponce & LeCun, ICLR 2022; facebookresearch/vicreg).

E2MC acts on the 8192-d expander output with the sigmoid, lambda_ent 10, lambda_cov 1.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from torch import nn

from e2mc.data.recipes import ViewRecipe, grey_recipe
from e2mc.heads import ProjectedBackbone
from e2mc.methods.base import Method, Release, register
from e2mc.objectives.vicreg import VICRegLoss


class VICRegNet(ProjectedBackbone):
    """Backbone plus VICReg's expander (``projector``).

    The expander is (Linear - BatchNorm1d - ReLU) for every size but the last, then a Linear
    without bias, as ``Projector`` in facebookresearch/vicreg; sizes ``feature_dim-8192-8192-8192``
    by default.

    ``forward(x)``: x (N, C, H, W) -> {"features": (N, feature_dim), "embedding": (N, expander[-1])}.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, expander: Sequence[int] = (8192, 8192, 8192)) -> None:
        super().__init__(backbone, feature_dim, expander, hidden_bias=True, option="expander")


# facebookresearch/vicreg augmentations.py (BYOL's asymmetric pair): 224 px, bicubic
# RandomResizedCrop scale (0.08, 1), flip, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2,
# Gaussian blur sigma U(0.1, 2) p 1.0 / 0.1, solarize p 0.0 / 0.2.
_VIEW = ViewRecipe(224, (0.08, 1.0), interpolation="bicubic", jitter=(0.4, 0.4, 0.2, 0.1))
IMAGENET_VIEWS = (replace(_VIEW, blur_p=1.0, solarize_p=0.0), replace(_VIEW, blur_p=0.1, solarize_p=0.2))


class VICReg(Method):
    name, label = "vicreg", "VICReg"
    network_class, objective_class = VICRegNet, VICRegLoss
    transform, paper_coefficients = "sigmoid", (10.0, 1.0)
    imagenet_views = IMAGENET_VIEWS
    mini_views = tuple(grey_recipe(r, 28) for r in IMAGENET_VIEWS)
    restore_release_optimizer = True  # the authors' main_vicreg_ent_ft.py loads the full checkpoint's LARS state
    releases = (
        Release("resnet50_fullckpt.pth", "https://dl.fbaipublicfiles.com/vicreg/resnet50_fullckpt.pth",
                "backbone and expander (keys backbone.*, projector.*, under 'model'), LARS state, epoch"),
        Release("resnet50.pth", "https://dl.fbaipublicfiles.com/vicreg/resnet50.pth",
                "backbone only (bare ResNet keys); the expander starts from random weights"),
    )


register(VICReg())

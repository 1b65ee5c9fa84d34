"""The SSL objectives E2MC extends and the alternative added criteria, one loss per file.

Every loss is a small ``nn.Module`` whose ``forward`` returns a dict of named terms plus
``"loss"``. The alternatives to E2MC (added to SwAV in the paper) are called like E2MC,
``criterion(z1, z2)``; :mod:`e2mc.criteria` registers them by name.
"""
from e2mc.objectives.barlowtwins import BarlowTwinsLoss, cross_correlation
from e2mc.objectives.alternatives import MMCR, Uniformity, VarianceCovariance, uniformity
from e2mc.objectives.simsiam import SimSiamLoss
from e2mc.objectives.swav import SwAVLoss, normalize_prototypes_, sinkhorn
from e2mc.objectives.vicreg import VICRegLoss, variance_covariance_terms, variance_hinge

__all__ = [
    "BarlowTwinsLoss",
    "cross_correlation",
    "MMCR",
    "SimSiamLoss",
    "SwAVLoss",
    "Uniformity",
    "VICRegLoss",
    "VarianceCovariance",
    "normalize_prototypes_",
    "sinkhorn",
    "uniformity",
    "variance_covariance_terms",
    "variance_hinge",
]

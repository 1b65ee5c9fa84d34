"""The SSL objectives E2MC extends (VICReg, SwAV, SimSiam) and the alternative added criteria.

Every loss is a small ``nn.Module`` whose ``forward`` returns a dict of named terms plus
``"loss"``. ``CRITERIA`` maps the names of the alternatives to E2MC (added to SwAV in the
paper) to their classes; each is called like E2MC, ``criterion(z1, z2)``.
"""
from e2mc.objectives.alternatives import MMCR, Uniformity, VarianceCovariance, uniformity
from e2mc.objectives.simsiam import SimSiamLoss
from e2mc.objectives.swav import SwAVLoss, normalize_prototypes_, sinkhorn
from e2mc.objectives.vicreg import VICRegLoss, variance_covariance_terms, variance_hinge

CRITERIA = {"uniformity": Uniformity, "mmcr": MMCR, "vc": VarianceCovariance}

__all__ = [
    "CRITERIA",
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

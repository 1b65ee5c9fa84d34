"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce & LeCun, ICLR 2022).

Follows facebookresearch/vicreg: the invariance term is the MSE between the two views of
the local batch; the variance and covariance terms see the batch gathered from all ranks.
The variance hinge and the covariance penalty are also the two halves of the
"variance-covariance" baseline criterion (:class:`e2mc.objectives.VarianceCovariance`),
so they live here once, in :func:`variance_hinge` and :func:`variance_covariance_terms`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from e2mc.checks import check_matrix
from e2mc.criterion import covariance_penalty
from e2mc.distributed import gather_with_grad
from e2mc.objectives.base import TwoViewLoss


def variance_hinge(x: torch.Tensor, target: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's variance term, ``mean_d relu(target - sqrt(Var[x_d] + eps))``.

    Args:
        x: embeddings, shape (N, D), N >= 2; the variance is the unbiased one over N.
        target: the standard deviation each dimension is pushed up to (gamma).
        eps: added to the variance so the square root stays differentiable at 0.

    Returns a scalar tensor (same units as ``x``).
    """
    check_matrix(x)
    if x.shape[0] < 2:
        raise ValueError(f"the variance hinge needs at least 2 samples, got N={x.shape[0]}")
    std = torch.sqrt(x.var(dim=0) + eps)
    return F.relu(target - std).mean()


def variance_covariance_terms(
    z1: torch.Tensor, z2: torch.Tensor, target: float = 1.0, gather: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The variance and covariance terms of VICReg for two views, in float32.

    Args:
        z1, z2: the two views' embeddings, each (N_local, D).
        target: hinge target of the per-dimension standard deviation.
        gather: under torch.distributed, use the views gathered from all ranks
            (gradients flow back to every rank's slice, see ``gather_with_grad``).

    Returns:
        ``(variance, covariance)``: the hinge averaged over the two views and the
        mean squared off-diagonal covariance (:func:`e2mc.criterion.covariance_penalty`)
        summed over the two views, both scalars with gradient.
    """
    z1, z2 = z1.float(), z2.float()
    if gather:
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
    variance = (variance_hinge(z1, target) + variance_hinge(z2, target)) / 2
    covariance = covariance_penalty(z1) + covariance_penalty(z2)
    return variance, covariance


class VICRegLoss(TwoViewLoss):
    """VICReg on two views' expander outputs.

    Args:
        sim_coeff: weight of the invariance (MSE) term (lambda; 25 in the paper).
        std_coeff: weight of the variance hinge (mu; 25).
        cov_coeff: weight of the covariance penalty (nu; 1).
        gather: under torch.distributed, compute variance and covariance on the global batch.

    ``forward(z1, z2)`` takes two (N, D) expander outputs (D = 8192 for the official
    ResNet-50 VICReg) and returns ``{"loss", "invariance", "variance", "covariance"}``:
    the unweighted terms (detached, for logging) and
    ``loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance``.
    Computed in float32 even under autocast.
    """

    def __init__(self, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0,
                 gather: bool = True) -> None:
        super().__init__(gather)
        self.set_weights(sim_coeff=sim_coeff, std_coeff=std_coeff, cov_coeff=cov_coeff)

    def two_view_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        # The invariance is local to this rank, as in the official code; the rest sees every rank.
        invariance = F.mse_loss(z1, z2)
        variance, covariance = variance_covariance_terms(z1, z2, target=1.0, gather=self.gather)
        loss = self.sim_coeff * invariance + self.std_coeff * variance + self.cov_coeff * covariance
        return {"loss": loss, "invariance": invariance.detach(), "variance": variance.detach(),
                "covariance": covariance.detach()}

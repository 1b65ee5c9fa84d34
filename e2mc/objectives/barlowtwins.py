"""Barlow Twins: redundancy reduction by the cross-correlation of two views (Zbontar et al., ICML 2021).

Follows facebookresearch/barlowtwins (``main.py``): the projector outputs of the two views are
batch-normalised without affine parameters (``BarlowTwinsNet`` does that, as the official model),
their cross-correlation matrix ``C = bn(z1)^T bn(z2) / N`` is taken over the global batch, and the
loss is ``sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2``.
"""
from __future__ import annotations

import torch

from e2mc.objectives.base import TwoViewLoss


def cross_correlation(n1: torch.Tensor, n2: torch.Tensor) -> torch.Tensor:
    """``n1^T n2 / N`` of two (N, D) batch-normalised views: the (D, D) cross-correlation matrix."""
    return n1.t() @ n2 / n1.shape[0]


class BarlowTwinsLoss(TwoViewLoss):
    """Barlow Twins on two views' batch-normalised projector outputs.

    Args:
        lambd: weight of the off-diagonal (redundancy reduction) term; 0.0051 in the official code.
        gather: under torch.distributed, form C over the batch gathered from all ranks (the official
            code all-reduces the per-rank sums, which is the same).

    ``forward(n1, n2)`` takes the two (N, D) views after the affine-free batch norm (D = 8192 for the
    official ResNet-50) and returns ``{"loss", "on_diagonal", "off_diagonal"}``: the unweighted sums
    (detached, for logging) and ``loss = on_diagonal + lambd * off_diagonal``. Computed in float32
    even under autocast.
    """

    def __init__(self, lambd: float = 0.0051, gather: bool = True) -> None:
        super().__init__(gather)
        self.set_weights(lambd=lambd)

    def two_view_loss(self, n1: torch.Tensor, n2: torch.Tensor) -> dict[str, torch.Tensor]:
        c = cross_correlation(*self.all_ranks(n1, n2))
        diagonal = torch.diagonal(c)
        on_diagonal = (1 - diagonal).pow(2).sum()
        off_diagonal = c.pow(2).sum() - diagonal.pow(2).sum()
        loss = on_diagonal + self.lambd * off_diagonal
        return {"loss": loss, "on_diagonal": on_diagonal.detach(), "off_diagonal": off_diagonal.detach()}

"""Alternative criteria added to an SSL loss, the baselines E2MC is compared with.

The paper adds each of them to SwAV's loss, in place of E2MC. Every one is called like
:class:`e2mc.criterion.E2MC`: ``forward(z1, z2)`` on two views' (N, D) embeddings (for
SwAV, the two 224 px assignment crops) returns a dict of named terms plus ``"loss"``,
the coefficients living inside the module; ``total = ssl_loss + criterion(z1, z2)["loss"]``.
Under torch.distributed each term is computed on the batch gathered from all ranks, as
in the authors' code. All are computed in float32 even under autocast.

Defaults are those of the authors' scripts (github.com/deepc94/e2mc,
``main_swav_{unif,mmcr,vc}_ft.py``); the values used for the paper's runs were passed on
the command line and are not recorded there.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from e2mc.checks import check_matrix
from e2mc.objectives.base import TwoViewLoss
from e2mc.objectives.vicreg import variance_covariance_terms


def uniformity(x: torch.Tensor, t: float = 3.0) -> torch.Tensor:
    """Wang & Isola's uniformity, ``log mean_{i<j} exp(-t ||x_i - x_j||^2)``.

    Args:
        x: points, shape (N, D), N >= 2 (L2-normalise them first for the hypersphere version).
        t: kernel width of the Gaussian potential.

    Returns a scalar tensor <= 0; lower means more uniformly spread. Computed as a
    log-sum-exp over the N(N-1)/2 pairs, so it is finite even when every pair is far apart.
    """
    check_matrix(x)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 samples, got N={n}")
    squared_norms = x.pow(2).sum(dim=1)
    squared_distances = (squared_norms[:, None] + squared_norms[None, :] - 2 * x @ x.t()).clamp_min(0)
    rows, cols = torch.triu_indices(n, n, offset=1, device=x.device)
    return torch.logsumexp(-t * squared_distances[rows, cols], dim=0) - math.log(rows.numel())


class Uniformity(TwoViewLoss):
    """Uniformity on the hypersphere (Wang & Isola, ICML 2020), averaged over the two views.

    Args:
        t: kernel width; the authors' default ``--kernel_width`` is 3.
        coeff: weight of the term; the authors' default ``--unif_weight`` is 1.
        gather: compute on the views gathered from all ranks.

    ``forward(z1, z2)``: the views are L2-normalised here (so either projector outputs
    or already-normalised embeddings can be passed); returns ``{"loss", "uniformity"}``
    with ``loss = coeff * (uniformity(u1) + uniformity(u2)) / 2``.
    """

    def __init__(self, t: float = 3.0, coeff: float = 1.0, gather: bool = True) -> None:
        super().__init__(gather)
        if not t > 0:
            raise ValueError(f"the kernel width t must be > 0, got {t}")
        self.t = float(t)
        self.shown = ("t",)
        self.set_weights(coeff=coeff)

    def two_view_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        u1, u2 = self.all_ranks(F.normalize(z1, dim=1), F.normalize(z2, dim=1))
        value = (uniformity(u1, self.t) + uniformity(u2, self.t)) / 2
        return {"loss": self.coeff * value, "uniformity": value.detach()}


class MMCR(TwoViewLoss):
    """Maximum Manifold Capacity Representations (Yerxa et al., NeurIPS 2023) as an added term.

    ``loss = -coeff * ||C||_*``, the nuclear norm (sum of singular values) of the (N, D)
    matrix C whose rows are the per-image centroids (mean over views) of the
    L2-normalised views, over the global batch.

    Scaling, as in the authors' ``main_swav_mmcr_ft.py``: the plain nuclear norm, not
    divided by the batch size or the number of views, times ``--mmcr_weight`` (default 1).
    The authors average over *all* of SwAV's crops (2 x 224 px + 6 x 96 px); pass the
    extra crops as further positional arguments to do the same: ``mmcr(z1, z2, *small_crops)``.
    They also drop non-finite centroid rows before the SVD; here non-finite input is an
    error, since it means the training has already diverged.

    Args:
        coeff: weight of the term.
        gather: compute on the centroids gathered from all ranks.

    Returns ``{"loss", "nuclear_norm"}``.
    """

    def __init__(self, coeff: float = 1.0, gather: bool = True) -> None:
        super().__init__(gather)
        self.set_weights(coeff=coeff)

    def two_view_loss(self, z1: torch.Tensor, z2: torch.Tensor, *more_views: torch.Tensor) -> dict[str, torch.Tensor]:
        # The SVD has no half-precision kernels and its gradient needs float32 accuracy (the base's float32).
        views = torch.stack([F.normalize(z, dim=1) for z in (z1, z2, *more_views)])
        (centroids,) = self.all_ranks(views.mean(dim=0))  # (N, D)
        if not torch.isfinite(centroids).all():
            raise FloatingPointError("MMCR received non-finite embeddings (NaN or inf); lower the "
                                     "learning rate or check the model before the criterion")
        nuclear_norm = torch.linalg.svdvals(centroids).sum()
        return {"loss": -self.coeff * nuclear_norm, "nuclear_norm": nuclear_norm.detach()}


class VarianceCovariance(TwoViewLoss):
    """VICReg's variance hinge and covariance penalty as an added term ("VC").

    ``loss = std_coeff * variance + cov_coeff * covariance``, with the hinge averaged and
    the covariance penalty summed over the two views, as in :class:`VICRegLoss` (the same
    functions compute both).

    Args:
        std_coeff: weight of the variance hinge; the authors' default ``--std_coeff`` is 1.
        cov_coeff: weight of the covariance penalty; the authors' default ``--cov_coeff`` is 0.01.
        normalize: True (the authors' default ``--reg_space hypersphere``): L2-normalise the
            views and hinge each dimension's standard deviation at gamma = 1/sqrt(D), the
            value of uniformly spread unit vectors; False (``projector``): raw embeddings,
            gamma = 1.
        gather: compute on the views gathered from all ranks.

    Returns ``{"loss", "variance", "covariance"}``.
    """

    def __init__(self, std_coeff: float = 1.0, cov_coeff: float = 0.01, normalize: bool = True,
                 gather: bool = True) -> None:
        super().__init__(gather)
        self.set_weights(std_coeff=std_coeff, cov_coeff=cov_coeff)
        self.normalize = bool(normalize)
        self.shown += ("normalize",)

    def two_view_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        target = 1.0
        if self.normalize:
            z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
            target = 1.0 / math.sqrt(z1.shape[1])
        variance, covariance = variance_covariance_terms(z1, z2, target=target, gather=self.gather)
        loss = self.std_coeff * variance + self.cov_coeff * covariance
        return {"loss": loss, "variance": variance.detach(), "covariance": covariance.detach()}

"""The Effective Entropy Maximization Criterion (E2MC).

E2MC is added to any SSL loss. It maps embeddings into a compact space with an
elementwise squashing function ``s`` and rewards high marginal entropy of each
dimension while penalising their pairwise covariance:

    loss = cov_coeff * (c(U1) + c(U2)) - ent_coeff * (mean_d H(U1_d) + mean_d H(U2_d)) / 2,
    U = s(Z) centred per dimension,

where ``H`` is the m-spacings entropy estimate (Learned-Miller & Fisher, 2003) and
``c`` the mean squared off-diagonal covariance. Entropies are in nats; on [0, 1]
their maximum is 0, reached by the uniform distribution.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from e2mc.checks import check_matrix  # noqa: F401  (re-exported: e2mc.criterion.check_matrix)
from e2mc.distributed import gather_with_grad

TRANSFORMS = ("sigmoid", "gaussian_cdf")


def default_window(n: int) -> int:
    """The spacing m = round(sqrt(N)) used by the paper."""
    return max(1, int(round(math.sqrt(n))))


def m_spacings_entropy(x: torch.Tensor, m: int | None = None, eps: float = 1e-7) -> torch.Tensor:
    """m-spacings estimate of the differential entropy of each column of ``x``.

    Args:
        x: samples, shape (N, D); column d holds N draws of the d-th variable.
        m: spacing; ``round(sqrt(N))`` when None. Must satisfy 1 <= m < N.
        eps: added inside the logarithm so that tied samples give a finite value.

    Returns:
        Tensor of shape (D,): ``1/(N-m) * sum_i log((N+1)/m * (x_(i+m) - x_(i)) + eps)``
        in nats, x_(i) the i-th order statistic. Differentiable (through the sort).
    """
    check_matrix(x)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"m-spacings entropy needs at least 2 samples per column, got N={n}")
    if m is None:
        m = default_window(n)
    if not isinstance(m, int) or not 1 <= m < n:
        raise ValueError(f"spacing m must be an integer with 1 <= m < N={n}, got m={m!r}")
    # Sorting rows of the contiguous (D, N) transpose is much faster than sorting along dim 0.
    ordered = torch.sort(x.t().contiguous(), dim=1).values
    spacings = ordered[:, m:] - ordered[:, :-m]  # (D, N - m)
    return torch.log(spacings * ((n + 1) / m) + eps).mean(dim=1)


def covariance_penalty(x: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal covariance, ``sum_{i != j} C_ij^2 / D``.

    ``C = U^T U / (N - 1)`` with U the column-centred ``x`` (N x D). When N < D the
    sum of all squared entries is taken from the N x N Gram matrix instead, since
    ``||U^T U||_F = ||U U^T||_F``; both forms give the same value.

    Returns a scalar tensor.
    """
    check_matrix(x)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"covariance needs at least 2 samples, got N={n}")
    u = x - x.mean(dim=0, keepdim=True)
    gram = u @ u.t() if n < d else u.t() @ u
    total = gram.pow(2).sum() / (n - 1) ** 2
    diagonal = u.pow(2).sum(dim=0) / (n - 1)  # variances C_ii, shape (D,)
    return (total - diagonal.pow(2).sum()) / d


def covariance_penalty_direct(x: torch.Tensor) -> torch.Tensor:
    """The same penalty through the explicit D x D covariance (the reference code's form).

    Kept as an independent formulation for tests and benchmarks; use :func:`covariance_penalty`.
    """
    check_matrix(x)
    n, d = x.shape
    u = x - x.mean(dim=0, keepdim=True)
    cov = u.t() @ u / (n - 1)
    off_diagonal = cov - torch.diag_embed(torch.diagonal(cov))
    return off_diagonal.pow(2).sum() / d


def to_compact(z: torch.Tensor, transform: str) -> torch.Tensor:
    """Map embeddings elementwise into (0, 1).

    ``"sigmoid"``: 1 / (1 + exp(-z)) (used for VICReg);
    ``"gaussian_cdf"``: the standard normal CDF (SwAV, SimSiam), computed with ``torch.special.ndtr``.
    The authors write it ``(1 + erf(z / sqrt 2)) / 2``: the two differ by at most 2^-24 (one float32
    ulp of values in [0.5, 1)) and are equal on about 96 % of inputs in float32 (CPU, PyTorch 2.14).
    We keep ndtr, one fused call, because the committed mini results were made with it; that ulp can
    swap two near-tied samples in the sort, which changes per-sample gradients, not the estimate
    beyond float rounding (docs/fidelity.md).
    """
    if transform == "sigmoid":
        return torch.sigmoid(z)
    if transform == "gaussian_cdf":
        return torch.special.ndtr(z)
    raise ValueError(f"unknown transform {transform!r}; choose one of {', '.join(TRANSFORMS)}")


class E2MC(nn.Module):
    """E2MC as a drop-in term to add to any SSL loss.

    Args:
        transform: ``"sigmoid"`` or ``"gaussian_cdf"`` (see :func:`to_compact`).
        ent_coeff: weight of the mean marginal entropy (lambda_ent).
        cov_coeff: weight of the covariance penalty (lambda_cov).
        m: m-spacings window; ``round(sqrt(N_global))`` when None.
        eps: stabiliser inside the entropy's logarithm.
        gather: under torch.distributed, estimate on the views gathered from all ranks.

    ``forward(z1, z2)`` takes the two views' embeddings, each (N, D), and returns
    ``{"loss", "entropy", "covariance"}``: entropy is the mean over dimensions averaged
    over the two views (nats), covariance the penalty summed over the views, and
    ``loss = cov_coeff * covariance - ent_coeff * entropy``. A term whose coefficient
    is zero is still reported but computed without gradient.

    Example::

        e2mc = E2MC("sigmoid", ent_coeff=10.0, cov_coeff=1.0)
        loss = ssl_loss + e2mc(z1, z2)["loss"]
    """

    def __init__(
        self,
        transform: str = "sigmoid",
        ent_coeff: float = 10.0,
        cov_coeff: float = 1.0,
        m: int | None = None,
        eps: float = 1e-7,
        gather: bool = True,
    ) -> None:
        super().__init__()
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {transform!r}; choose one of {', '.join(TRANSFORMS)}")
        if ent_coeff < 0 or cov_coeff < 0:
            raise ValueError(f"coefficients must be >= 0, got ent_coeff={ent_coeff}, cov_coeff={cov_coeff}")
        self.transform = transform
        self.ent_coeff = float(ent_coeff)
        self.cov_coeff = float(cov_coeff)
        self.m = m
        self.eps = eps
        self.gather = gather

    def extra_repr(self) -> str:
        return (f"transform={self.transform!r}, ent_coeff={self.ent_coeff}, "
                f"cov_coeff={self.cov_coeff}, m={self.m}, eps={self.eps}")

    def _compact(self, z: torch.Tensor) -> torch.Tensor:
        check_matrix(z, "embedding")
        if not torch.isfinite(z).all():
            raise FloatingPointError(
                "E2MC received non-finite embeddings (NaN or inf); lower the learning rate "
                "or check the inputs and the model before the criterion"
            )
        if self.gather:
            z = gather_with_grad(z)
        u = to_compact(z.to(torch.promote_types(z.dtype, torch.float32)), self.transform)
        return u - u.mean(dim=0, keepdim=True)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        if z1.shape != z2.shape:
            raise ValueError(f"the two views must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
        # Sorting, logs and squared covariances lose too much in half precision: float32 at least.
        with torch.autocast(device_type=z1.device.type, enabled=False):
            u1, u2 = self._compact(z1), self._compact(z2)
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.ent_coeff > 0):
                entropy = (m_spacings_entropy(u1, self.m, self.eps).mean()
                           + m_spacings_entropy(u2, self.m, self.eps).mean()) / 2
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.cov_coeff > 0):
                covariance = covariance_penalty(u1) + covariance_penalty(u2)
            loss = self.cov_coeff * covariance - self.ent_coeff * entropy
        return {"loss": loss, "entropy": entropy.detach(), "covariance": covariance.detach()}

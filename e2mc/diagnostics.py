"""Statistics of an embedding batch that say how well its dimensions are spread and decorrelated."""
from __future__ import annotations

import torch

from e2mc.criterion import covariance_penalty, m_spacings_entropy, to_compact
from e2mc.errors import UserError


@torch.no_grad()
def embedding_stats(z: torch.Tensor, transform: str) -> dict[str, float]:
    """For z (N, D): mean m-spacings marginal entropy of ``to_compact(z)`` (nats, <= 0 up to estimator noise),
    covariance penalty of ``to_compact(z)``, and the mean per-dimension standard deviation of z itself."""
    z = _at_least_float32(z)
    stats = transformed_statistics(z, (transform,), per_dimension=False)[transform]
    return {**stats, "embedding_std": z.std(dim=0).mean().item()}


def _at_least_float32(z: torch.Tensor) -> torch.Tensor:
    # float64 inputs keep their precision: in float32 the transforms round tails to exactly 0 or 1.
    return z.detach().to(torch.promote_types(z.dtype, torch.float32))


@torch.no_grad()
def rankme(z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe effective rank of embeddings z (N, D) (Garrido et al., ICML 2023).

    With sigma the singular values of z (not centred, as in the paper) and p_k = sigma_k / sum(sigma) + eps,
    RankMe = exp(-sum_k p_k log p_k): D for D equal singular values, k for rank-k data with equal
    non-zero singular values, between 1 and min(N, D) in general.
    """
    if z.dim() != 2:
        raise ValueError(f"rankme needs a 2-D (N, D) matrix of embeddings, got shape {tuple(z.shape)}")
    sigma = torch.linalg.svdvals(z.detach().double())
    if sigma.sum() <= 0:
        raise ValueError("rankme of an all-zero matrix is undefined; check the embeddings")
    p = sigma / sigma.sum() + eps
    return torch.exp(-(p * p.log()).sum()).item()


@torch.no_grad()
def marginal_entropies(z: torch.Tensor, transform: str) -> torch.Tensor:
    """m-spacings entropy (nats) of each dimension of ``to_compact(z, transform)``; z (N, D) -> (D,)."""
    return m_spacings_entropy(to_compact(_at_least_float32(z), transform))


@torch.no_grad()
def transformed_statistics(z: torch.Tensor, transforms: tuple[str, ...] = ("sigmoid", "gaussian_cdf"),
                           per_dimension: bool = True) -> dict[str, dict[str, object]]:
    """For each transform: ``marginal_entropy`` (mean over dimensions, nats), ``covariance_penalty`` of
    ``to_compact(z)`` (the criterion's own functions) and, with ``per_dimension``, the list of D
    ``per_dimension_entropy`` values."""
    z = _at_least_float32(z)
    out: dict[str, dict[str, object]] = {}
    for transform in transforms:
        u = to_compact(z, transform)
        entropies = m_spacings_entropy(u)
        out[transform] = {"marginal_entropy": entropies.mean().item(),
                          "covariance_penalty": covariance_penalty(u).item()}
        if per_dimension:
            out[transform]["per_dimension_entropy"] = entropies.tolist()
    return out


def dimension_pairs(dim: int, n_pairs: int, seed: int) -> list[tuple[int, int]]:
    """``n_pairs`` distinct unordered pairs (i, j), i < j, of dimensions in [0, dim), drawn by ``seed``.

    The same (dim, n_pairs, seed) always gives the same pairs, so two checkpoints of one network
    are compared on the same coordinates (Fig. 2c/d)."""
    if dim < 2:
        raise ValueError(f"need at least 2 dimensions to form pairs, got {dim}")
    total = dim * (dim - 1) // 2
    if not 1 <= n_pairs <= total:
        raise UserError(f"n_pairs must lie in [1, {total}] for {dim} dimensions, got {n_pairs}")
    generator = torch.Generator().manual_seed(int(seed))
    pairs: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    while len(pairs) < n_pairs:
        i, j = torch.randperm(dim, generator=generator)[:2].tolist()
        pair = (min(i, j), max(i, j))
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    return pairs


@torch.no_grad()
def pair_coordinates(z: torch.Tensor, pairs: list[tuple[int, int]], transform: str) -> list[list[list[float]]]:
    """Transformed 2-D samples: for each pair (i, j), the N points (s(z_i), s(z_j)) as [[x, y], ...]."""
    u = to_compact(_at_least_float32(z), transform)
    return [u[:, list(pair)].tolist() for pair in pairs]

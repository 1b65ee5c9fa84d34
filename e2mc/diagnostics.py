"""Statistics of an embedding batch that say how well its dimensions are spread and decorrelated."""
from __future__ import annotations

import torch

from e2mc.criterion import covariance_penalty, m_spacings_entropy, to_compact

# The compact transform the paper pairs with each method.
METHOD_TRANSFORM = {"vicreg": "sigmoid", "swav": "gaussian_cdf", "simsiam": "gaussian_cdf"}


@torch.no_grad()
def embedding_stats(z: torch.Tensor, transform: str) -> dict[str, float]:
    """For z (N, D): mean m-spacings marginal entropy of ``to_compact(z)`` (nats, <= 0 up to estimator noise),
    covariance penalty of ``to_compact(z)``, and the mean per-dimension standard deviation of z itself."""
    z = z.detach().float()
    u = to_compact(z, transform)
    return {
        "marginal_entropy": m_spacings_entropy(u).mean().item(),
        "covariance_penalty": covariance_penalty(u).item(),
        "embedding_std": z.std(dim=0).mean().item(),
    }

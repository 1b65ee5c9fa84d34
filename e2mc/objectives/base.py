"""What every two-view loss does before its formula: one base class, so the preamble is written once."""
from __future__ import annotations

import torch
from torch import nn

from e2mc.checks import check_two_views
from e2mc.distributed import gather_with_grad


class TwoViewLoss(nn.Module):
    """A loss on two views' embeddings (and, where a subclass accepts them, further views).

    ``forward(z1, z2, *more_views)`` checks that every view is a floating (N, D) matrix of one shape,
    turns autocast off, casts the views to float32 (squared covariances, sorts, logs and SVDs lose too
    much in half precision) and returns ``self.two_view_loss(z1, z2, *more_views)``: a dict of named
    terms plus ``"loss"``. Subclasses write only that method; where a term needs the batch of every
    rank they call :meth:`all_ranks`.

    Args:
        gather: under torch.distributed, :meth:`all_ranks` returns the views gathered from all ranks
            (gradients flow back to every rank's slice); otherwise it returns them as they are.
    """

    shown: tuple[str, ...] = ()  # the settings extra_repr prints

    def __init__(self, gather: bool = True) -> None:
        super().__init__()
        self.gather = gather

    def set_weights(self, **weights: float) -> None:
        """Keep each weight of a term (``cov_coeff=1``) as a float attribute, shown by ``repr``; a
        ValueError names each one that is negative or NaN."""
        bad = [f"{name}={w}" for name, w in weights.items() if not w >= 0]
        if bad:
            raise ValueError(f"{', '.join(bad)}: the weight of a term must be >= 0")
        for name, w in weights.items():
            setattr(self, name, float(w))
        self.shown = (*self.shown, *weights)

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)}" for name in self.shown)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, *more_views: torch.Tensor) -> dict[str, torch.Tensor]:
        check_two_views(z1, z2, *more_views)
        with torch.autocast(device_type=z1.device.type, enabled=False):
            return self.two_view_loss(z1.float(), z2.float(), *(v.float() for v in more_views))

    def two_view_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss on float32 (N, D) views, autocast off: ``{"loss": scalar, other terms detached}``."""
        raise NotImplementedError

    def all_ranks(self, *views: torch.Tensor) -> list[torch.Tensor]:
        """Each (N_local, D) view as the (N_global, D) batch of all ranks when ``gather`` is set."""
        return [gather_with_grad(v) for v in views] if self.gather else list(views)

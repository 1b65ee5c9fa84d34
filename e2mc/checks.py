"""Input checks shared by every loss and network builder, so bad input fails the same way everywhere:
embeddings (:func:`check_matrix`, :func:`check_two_views`) and loaded weights (:func:`check_finite_weights`).

The bottom layer: it imports nothing from the package but its errors.
"""
from __future__ import annotations

import torch
from torch import nn

from e2mc.errors import CheckpointError, UserError


def check_matrix(x: torch.Tensor, name: str = "x") -> None:
    """Raise a TypeError or ValueError naming ``name`` unless x is a floating-point (N, D) tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D (batch N x dimensions D), got shape {tuple(x.shape)}; "
            "flatten the embedding first, e.g. z.flatten(1)"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def check_two_views(z1: torch.Tensor, z2: torch.Tensor, *more_views: torch.Tensor) -> None:
    """Raise a clear error unless ``z1``, ``z2`` (and any ``more_views``) are floating (N, D) matrices
    of one shape."""
    check_matrix(z1, "z1")
    check_matrix(z2, "z2")
    if z1.shape != z2.shape:
        raise ValueError(
            f"the two views must have the same shape (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    for index, view in enumerate(more_views):
        check_matrix(view, f"more_views[{index}]")
        if view.shape != z1.shape:
            raise ValueError(f"every view must have the shape of z1, {tuple(z1.shape)}; "
                             f"more_views[{index}] has {tuple(view.shape)}")


def check_dims(**dims: int) -> None:
    """Raise a UserError naming the first keyword that is not a positive integer (a layer size)."""
    for name, value in dims.items():
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")


def check_finite_weights(network: nn.Module, source: str) -> None:
    """Refuse weights holding NaN or inf: training from them fails at its first step, and evaluating
    them gives chance accuracy that would enter the tables."""
    bad = [name for name, tensor in network.state_dict().items()
           if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        listing = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise CheckpointError(f"{source} holds non-finite weights ({len(bad)} tensors: {listing}); "
                              "it is not a usable model: use an earlier checkpoint")

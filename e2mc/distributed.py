"""Small helpers for torch.distributed that also work in a single process.

Every function here degrades to the single-process answer when torch.distributed
is unavailable or not initialised, so losses can call them unconditionally.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N_local x ...) from all ranks along dim 0, keeping gradients.

    Backward sums the gradient that every rank computes for each slice, so that when each
    rank evaluates the same loss on the gathered batch, DDP's gradient averaging yields
    exactly the gradient of that loss (the convention of VICReg's ``FullGatherLayer``).
    All ranks must pass the same shape.
    """
    if not is_distributed():
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """In-place sum across ranks (no gradient); returns ``x``."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x

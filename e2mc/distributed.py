"""Small helpers for torch.distributed that also work in a single process.

Every function here degrades to the single-process answer when torch.distributed
is unavailable or not initialised, so losses can call them unconditionally. The process group of a
run is joined and left here (:func:`init_distributed`, :func:`end_distributed`), and a stop signal
that reached any rank is seen by all (:class:`StopRequest`).
"""
from __future__ import annotations

import gc
import os
import signal
import sys
from typing import Any

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


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


def init_distributed() -> bool:
    """Join the process group that the launch describes in the environment (torchrun, or SLURM through
    e2mc.cluster); True when this call created it. The group is the launch's, not the configuration's:
    torch picks gloo for CPU tensors and NCCL for CUDA ones as they meet their first collective, so
    joining needs no device (the caller makes this rank's GPU the current one before any collective)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group()
        return True
    return False


def end_distributed() -> None:
    """Leave the process group cleanly: every rank past its last collective, DDP's buffers freed, then
    the group destroyed, so that interpreter shutdown never races the backend's threads (gloo's last
    all-reduce needing the GIL during finalisation aborted processes)."""
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()


class StopRequest:
    """Turns SIGUSR1, SIGUSR2, SIGTERM and SIGINT (Ctrl-C) into a flag the loop checks after every
    step; a second Ctrl-C aborts at once, without saving."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for s in (*STOP_SIGNALS, signal.SIGINT):
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave handlers alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            if self.signal == signal.SIGINT:
                raise KeyboardInterrupt
            print("\n[e2mc] Ctrl-C: saving after this step (press it again to abort without saving)",
                  file=sys.stderr, flush=True)
        self.signal = signum

    def requested(self) -> bool:
        """True on every rank as soon as any rank received a stop signal (a collective: every rank asks).
        The flag is reduced on the CPU (gloo) unless the group has only NCCL: no GPU synchronisation."""
        on_gpu_only = is_distributed() and dist.get_backend() == dist.Backend.NCCL
        flag = torch.tensor([0 if self.signal is None else int(self.signal)],
                            device=torch.device("cuda", torch.cuda.current_device()) if on_gpu_only else "cpu")
        if is_distributed():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signal is None:
            self.signal = int(flag.item())
        return bool(flag.item())


def gather_objects(own: Any) -> list[Any]:
    """Every rank's ``own`` (any picklable object), by rank; ``[own]`` in a single process. A
    collective: every rank calls it."""
    if not is_distributed():
        return [own]
    everyone: list[Any] = [None] * world_size()
    dist.all_gather_object(everyone, own)
    return everyone

"""Shared timing and provenance helpers for the benchmarks."""
from __future__ import annotations

import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, min_seconds: float = 0.5, min_repeats: int = 3,
              max_repeats: int = 50) -> dict:
    """Median wall time of ``fn()`` in milliseconds, after one warm-up call."""
    fn()
    synchronize(device)
    times = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"median_ms": 1e3 * times[len(times) // 2], "min_ms": 1e3 * times[0], "repeats": len(times)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"

"""Run a function in several CPU processes joined by a gloo process group."""
from __future__ import annotations

import gc
import os
import socket
import sys
import tempfile
import traceback
from typing import NoReturn

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def end_worker(exit_code: int = 0) -> NoReturn:
    """End a spawned worker process: tear the process group down, then leave without finalising Python.

    ``destroy_process_group()`` does not join gloo's worker threads, and one of them may still be
    releasing the last collective of DDP (which needs the GIL) while the main thread runs
    ``Py_FinalizeEx``; the process then dies with SIGABRT ("terminate called without an active
    exception") although the work succeeded. So on success: a barrier (gloo completes every earlier
    collective of every rank first), ``gc.collect()`` (DDP's reducer sits in reference cycles; free it
    while the group still exists), ``destroy_process_group()``; and in every case ``os._exit``, which
    skips interpreter finalisation altogether. Results must be saved (files closed) before this call.

    Call it with 1 after printing the traceback of a failure: the process exits with that code and
    ``mp.start_processes`` raises ``ProcessExitedException`` in the parent. A failure during the
    teardown itself also exits with 1.
    """
    if exit_code == 0 and dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
            gc.collect()
            dist.destroy_process_group()
        except BaseException:
            traceback.print_exc()
            exit_code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(exit_code)


def _worker(rank: int, world_size: int, port: int, out_dir: str, fn, args) -> NoReturn:
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        del result  # nothing of fn's (DDP modules, tensors) outlives it but reference cycles
    except BaseException:
        print(f"rank {rank} of {world_size} failed:", file=sys.stderr)
        traceback.print_exc()
        end_worker(1)
    end_worker(0)


def run_distributed(fn, world_size: int = 2, *args):
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` processes; return their results by rank.

    ``fn`` must be a module-level function (it is pickled) and return tensors or plain containers.
    A failing rank makes this raise ``torch.multiprocessing.ProcessExitedException`` (its traceback
    is on stderr).
    """
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_worker, args=(world_size, free_port(), out_dir, fn, args),
                           nprocs=world_size, join=True, start_method="spawn")
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True)
                for r in range(world_size)]

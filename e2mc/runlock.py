"""Who may write in a run folder: one process at a time holds it (:class:`RunLock`), and what a run
folder can hold that no run may resume from or start over (:class:`RunFolderError`).

The folder itself, where a run lives and what it records, is described in :mod:`e2mc.runfolder`.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from e2mc.errors import UserError


class RunFolderError(UserError, RuntimeError):
    """The run folder holds something a run cannot resume from or start over (one line names the fix)."""


class RunFolderBusyError(RunFolderError):
    """Another process is training in this run folder."""


class RunLock:
    """An exclusive lock on a run folder, held while a process trains in it.

    The lock is an ``flock`` on the folder itself, which no one deletes by hand while a run is in it
    (a lock file could be deleted, and a second trainer would then run beside the first); the kernel
    releases it when its process dies, so a killed run leaves nothing locked. While held, ``run.lock``
    says who holds it (pid, host, start time); the file goes when the lock is released. Taking the
    lock clears what a killed holder's atomic writes left (:func:`remove_partial_writes`). On a
    filesystem that cannot lock a folder (some NFS setups), ``metrics.jsonl`` is locked instead."""

    def __init__(self, output_dir: Path) -> None:
        self.folder = Path(output_dir)
        self.path = self.folder / "run.lock"
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EBADF, errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP):
                self._busy()
            fd = os.open(self.folder / "metrics.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                self._busy()
        self._fd = fd
        self.path.write_text(f"pid {os.getpid()} on {socket.gethostname()} since "
                             f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        remove_partial_writes(self.folder)
        return self

    def _busy(self) -> None:
        try:
            holder = self.path.read_text().strip() or "another process"
        except OSError:
            holder = "another process"
        raise RunFolderBusyError(f"{self.folder} is in use by {holder}; wait for that run to end, or "
                                 "choose another train.output_dir") from None

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def remove_partial_writes(output_dir: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed process left (``.<name>.*.tmp``);
    only while holding the folder's :class:`RunLock`, which calls it."""
    removed = [p for p in Path(output_dir).glob(".*.tmp") if p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed

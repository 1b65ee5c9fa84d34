"""The one exception type for bad input: a file, a setting or a command-line value the user can fix.

``python -m e2mc`` prints a :class:`UserError` as one line and exits with status 2; any other exception
is a bug and keeps its traceback. It subclasses ValueError, so ``except ValueError`` callers still see it.
The more specific errors (ConfigError, CheckpointError, ClusterError, ...) derive from it.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

# OSErrors that name a problem of the machine or of a path the user gave, not of the code.
USER_ERRNOS = {errno.ENOSPC: "no space left on the device holding {path}",
               errno.EDQUOT: "disk quota exceeded writing {path}",
               errno.EROFS: "{path} is on a read-only file system",
               errno.EACCES: "permission denied: {path}",
               errno.EPERM: "operation not permitted: {path}",
               errno.ENOTDIR: "{path}: a part of this path is a file, not a folder",
               errno.EISDIR: "{path} is a folder, not a file",
               errno.EEXIST: "{path} already exists (a file where a folder is needed?)",
               errno.ENOENT: "not found: {path}"}


class UserError(ValueError):
    """Bad input the user can fix; the message names the file or setting and how to fix it."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint could not be read, written or matched to a model."""


class KeyMismatchError(CheckpointError):
    """A checkpoint's tensors do not match the model's state dict."""


def describe_os_error(error: OSError, path: str | os.PathLike | None = None) -> str | None:
    """One line for an OSError the user can act on (a full disk, a read-only, missing or misplaced
    path), naming the error's file or else ``path``; None for any other (a bug, shown with its traceback)."""
    if error.errno is None:  # raised by e2mc with a message that names the path and the fix
        return str(error) if isinstance(error, (FileNotFoundError, IsADirectoryError, NotADirectoryError,
                                                PermissionError, FileExistsError)) else None
    if error.errno not in USER_ERRNOS:
        return None
    where = error.filename if error.filename is not None else path
    if where is None:
        return f"{error.strerror or error}"
    return USER_ERRNOS[error.errno].format(path=os.fsdecode(where))


def write_error(path: str | os.PathLike, error: OSError) -> Exception:
    """What to raise when writing ``path`` failed with ``error``: a UserError naming ``path`` when the
    user can act on it (a full disk, a read-only place, a file where a folder should be), else ``error``."""
    message = describe_os_error(error, path)
    return error if message is None else UserError(f"cannot write {path}: {message}; nothing was written there")


def check_folder_path(path: str | os.PathLike, what: str) -> None:
    """Refuse a folder path that a file blocks (the path itself or a folder above it), creating nothing."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "is a file" if candidate == path else f"lies under the file {candidate}"
                raise UserError(f"{what} {path} {where}, not a folder; name a folder")
            return


def check_writable_folder(path: str | os.PathLike, what: str) -> None:
    """Refuse, before any work is done, a folder that cannot be written: a file in its place (or above
    it), or a read-only or full place. Creates nothing: a folder that does not exist yet is probed in
    its nearest existing parent (the command creates it when it writes)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file, not a folder" if existing == path else f"lies under a file ({existing}), not a folder"
        raise UserError(f"{what} {path} {where}; name a folder")
    try:  # os.access says yes to root on a read-only mount's files; a real probe does not
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise UserError(f"{what} {path} cannot be written: {describe_os_error(e, existing) or e}") from None

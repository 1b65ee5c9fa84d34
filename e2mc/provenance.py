"""Where a result came from, and writing result files so that none is ever half-written.

Every file under ``results/`` carries a ``provenance`` block from :func:`provenance`: the command
line, git commit (and whether the tree had uncommitted changes), host, device, library
versions and UTC time.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_commit(cwd: Path = REPO_ROOT) -> dict[str, Any]:
    """The checked-out commit and whether tracked files differ from it; ``None`` outside a checkout."""
    def run(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                  check=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def device_description(device: torch.device | str | None = None) -> str:
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def repo_relative(path: str | os.PathLike) -> str:
    """``path`` relative to the repository when it lies inside it (records must not carry the absolute
    paths of the machine that wrote them); other paths are returned as they are."""
    text = str(path)
    candidate = Path(text)
    if not candidate.is_absolute():
        return text
    try:
        return str(candidate.resolve().relative_to(REPO_ROOT))
    except (ValueError, OSError):
        return text


def command_line(argv: list[str] | None = None) -> str:
    """The command as run, with the repository's own files named relative to it."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith("e2mc/__main__.py"):
        argv = ["python", "-m", "e2mc", *argv[1:]]  # python -m e2mc records its __main__.py path as argv[0]
    return " ".join(repo_relative(word) if word.startswith("/") else word for word in argv)


def provenance(device: torch.device | str | None = None, command: list[str] | None = None) -> dict[str, Any]:
    """A JSON-serialisable record of how and where a result was produced (paths inside the repository
    relative to it)."""
    git = git_commit()
    return {
        "command": command_line(command),
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "host": socket.gethostname(),
        "device": device_description(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": utc_now(),
    }


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None],
                 verify: Callable[[Path], None] | None = None) -> Path:
    """Write ``path`` through a temporary file in the same directory and a rename.

    ``data`` is the bytes to write, or a function that writes them to a binary handle (e.g.
    ``lambda f: torch.save(obj, f)``). ``verify(temporary_path)`` may inspect the complete temporary
    file and raise to abandon the write. Readers see either the old file or the complete new one,
    never a partial write; on any failure ``path`` is untouched and no temporary file is left. The
    new file gets the usual permissions (0666 less the umask) and the rename is made durable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(Path(tmp))
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (see :func:`write_atomic`)."""
    return write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())

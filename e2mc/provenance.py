"""Where a result came from, and writing result files so that none is ever half-written.

Every file under ``results/`` carries a ``provenance`` block from :func:`provenance`: the command
line, git commit (whether the tree had uncommitted changes and, if so, the sha256 of the diff), host,
device, library versions and UTC time. The git state is read once per process (:func:`code_state`),
so every file a process writes names the code it started with, even when a commit lands meanwhile.
:func:`require_clean_tree` refuses, at the start of a command, to write into committed result folders
from a checkout with uncommitted changes.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
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

from e2mc.errors import UserError, describe_os_error, write_error

REPO_ROOT = Path(__file__).resolve().parent.parent
# Set to 1 to write into committed result folders from a checkout with uncommitted changes.
ALLOW_DIRTY_VARIABLE = "E2MC_ALLOW_DIRTY"


class DirtyTreeError(UserError):
    """A command would write into committed result folders from a checkout with uncommitted changes."""


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _git(cwd: Path, *args: str) -> bytes | None:
    """The output of ``git <args>`` run in ``cwd``; None when git or the checkout is missing."""
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None


# The result records (``results/**/*.json``) are what the commands write, not what they run: a tree
# whose only changes are records is the commit's code (re-running a committed entry rewrites its
# records, and must not mark itself, or the entries after it, dirty). Base checkpoints (.pt) count.
CODE_PATHSPEC = (".", ":(exclude,glob)results/**/*.json")


def git_commit(cwd: Path = REPO_ROOT) -> dict[str, Any]:
    """The checked-out commit, whether tracked files other than result records (:data:`CODE_PATHSPEC`)
    differ from it, and the sha256 of that difference (``git diff HEAD --binary`` over the same paths:
    staged and unstaged changes; None when clean); ``None`` for each outside a checkout. ``cwd`` is the
    top of the checkout."""
    commit = _git(cwd, "rev-parse", "HEAD")
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHSPEC)
    dirty = None if status is None else bool(status.strip())
    diff = _git(cwd, "diff", "HEAD", "--binary", "--", *CODE_PATHSPEC) if dirty else None
    return {"commit": None if commit is None else commit.decode().strip(), "dirty": dirty,
            "diff_sha256": None if diff is None else hashlib.sha256(diff).hexdigest()}


@functools.lru_cache(maxsize=None)
def code_state() -> dict[str, Any]:
    """:func:`git_commit` of the checkout this code runs from, read at the first call of the process
    (the command line calls it at start): the code that ran, not HEAD when a file was written."""
    return git_commit(REPO_ROOT)


def _writes_committed_results(target: Path) -> bool:
    """Whether ``target`` (a folder or file, existing or not) lies under a checkout's ``results/``, but
    not in a part git ignores (``results/*-quick/``), or in a folder that holds files tracked by git."""
    target = Path(target).resolve()
    existing = next((p for p in (target, *target.parents) if p.is_dir()), None)
    if existing is None:
        return False
    top = _git(existing, "rev-parse", "--show-toplevel")
    if top is None:
        return False
    try:
        if (target.relative_to(Path(top.decode().strip()).resolve()).parts[:1] == ("results",)
                and _git(existing, "check-ignore", "-q", f"{target}/") is None):  # None: not ignored
            return True
    except ValueError:  # a symbolic link out of the checkout
        pass
    return bool(_git(existing, "ls-files", "--", str(target)))


def require_clean_tree(*targets: str | os.PathLike | None, state: dict[str, Any] | None = None) -> None:
    """Raise :class:`DirtyTreeError` when the code runs from a checkout with uncommitted changes and one
    of ``targets`` is a committed result folder (see :func:`_writes_committed_results`), unless
    ``E2MC_ALLOW_DIRTY=1``: a committed result must name the code that computed it. Commands call this
    at their start, before computing anything. ``state`` defaults to :func:`code_state`."""
    if os.environ.get(ALLOW_DIRTY_VARIABLE) == "1":
        return
    state = code_state() if state is None else state
    if not state["dirty"]:
        return
    for target in targets:
        if target is not None and _writes_committed_results(Path(target)):
            raise DirtyTreeError(
                f"refusing to write into {repo_relative(target)} (committed results) from {REPO_ROOT}, which has "
                "uncommitted changes: commit or stash them, run from a clean checkout (git worktree add "
                f"../study HEAD), or set {ALLOW_DIRTY_VARIABLE}=1 (the files then record git_diff_sha256)")


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


def module_invocation(argv: list[str]) -> list[str]:
    """``argv`` with ``python -m e2mc`` for the path of ``e2mc/__main__.py``, which ``python -m e2mc``
    records as its ``argv[0]``."""
    if argv and argv[0].endswith("e2mc/__main__.py"):
        return ["python", "-m", "e2mc", *argv[1:]]
    return list(argv)


def command_line(argv: list[str] | None = None) -> str:
    """The command as run, with the repository's own files named relative to it."""
    argv = module_invocation(list(sys.argv if argv is None else argv))

    def relative(word: str) -> str:
        key, sep, value = word.partition("=")  # key=value overrides: the value may be a path
        if sep and value.startswith("/") and not key.startswith("/"):
            return f"{key}={repo_relative(value)}"
        return repo_relative(word) if word.startswith("/") else word

    return " ".join(relative(word) for word in argv)


def provenance(device: torch.device | str | None = None, command: list[str] | None = None) -> dict[str, Any]:
    """A JSON-serialisable record of how and where a result was produced (paths inside the repository
    relative to it). ``git_diff_sha256`` names the uncommitted patch the code ran with (None when clean)."""
    git = code_state()
    return {
        "command": command_line(command),
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "git_diff_sha256": git["diff_sha256"],
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from e
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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        # torch.save reports a failed write as "[enforce fail at inline_container.cc...]", the OSError
        # (e.g. ENOSPC) as its context
        cause = e if isinstance(e, OSError) else e.__context__ if isinstance(e, RuntimeError) else None
        if isinstance(cause, OSError) and describe_os_error(cause, path) is not None:
            raise write_error(path, cause) from e
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

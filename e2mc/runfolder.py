"""The run folder: where a training run lives, who may write in it, and what it records.

Everything a run writes lives in one folder, ``train.output_dir``, or when that is not set the one
:func:`output_dir_of` names (by default the launchers' convention, :func:`run_folder`):

* ``checkpoint.pt`` (written and read by :mod:`e2mc.checkpoints`); a run resumes from it only under
  the configuration that trained it (:func:`check_resumable`);
* ``metrics.jsonl``: the records :class:`MetricsLog` appends and :func:`read_metrics` reads back;
* ``epoch-hooks.json``: the last epoch whose epoch-end hooks all returned (:func:`hooks_done`);
* ``config.yaml``, ``summary.json``, and ``run.lock`` while a process holds the folder (:class:`RunLock`).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from e2mc.config import LOCATION_FIELDS, Config, ConfigError, config_from_dict
from e2mc.data.registry import get_dataset
from e2mc.errors import UserError, check_folder_path, write_error
from e2mc.naming import infer_arm
from e2mc.provenance import write_json_atomic

HOOKS_DONE = "epoch-hooks.json"  # {"epoch": the last epoch whose epoch-end hooks all returned}


class RunFolderError(UserError, RuntimeError):
    """The run folder holds something a run cannot resume from or start over (one line names the fix)."""


class RunFolderBusyError(RunFolderError):
    """Another process is training in this run folder."""


def run_folder(root: str | Path, method: str, label: str, seed: int) -> Path:
    """``<root>/<method>/<label>/seed<seed>``: where every launcher puts a run (``label`` is the arm,
    plus the values of any other grid axes)."""
    return Path(root) / method / label / f"seed{seed}"


def output_dir_of(cfg: Config) -> Path:
    """The run folder of ``cfg``: ``train.output_dir``, else :func:`run_folder` under ``runs/<scale>``
    labelled by the configuration's arm. A file in the way of it, or of ``eval.results_dir``, is named
    now, before any data are read."""
    if cfg.train.output_dir:
        output_dir = Path(cfg.train.output_dir)
    else:
        arm = infer_arm(cfg.to_dict())
        output_dir = run_folder(Path("runs") / get_dataset(cfg.data.dataset).scale, cfg.method, arm, cfg.train.seed)
    check_folder_path(output_dir, "train.output_dir")
    if cfg.eval.results_dir:
        check_folder_path(cfg.eval.results_dir, "eval.results_dir")
    return output_dir


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


# Configuration keys a resumed run may change: where things are, and what does not alter training.
RESUMABLE_CHANGES = {f"{section}.{key}" for section, key in LOCATION_FIELDS} | {
    "train.epochs", "train.device", "train.keep_epoch_checkpoints", "train.log_every"}


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("heads", "params", "datasets"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resumable(saved_config: dict, cfg: Config, done_epochs: int, path: Path) -> None:
    """A run resumes only under the configuration that trained it: every key that alters training
    must be equal (evaluation settings, locations and the device may change), and ``train.epochs``
    may only grow (and only with a constant learning rate, whose schedule does not depend on it)."""
    saved = _flatten(config_from_dict(json.loads(json.dumps(saved_config))).to_dict())
    ours = _flatten(cfg.to_dict())
    differing = sorted(k for k in set(saved) | set(ours)
                       if saved.get(k) != ours.get(k) and k not in RESUMABLE_CHANGES and not k.startswith("eval."))
    if saved["train.epochs"] != ours["train.epochs"]:
        if ours["train.epochs"] < done_epochs:
            differing.append("train.epochs (below the epochs already trained)")
        elif cfg.optim.schedule != "constant":
            differing.append("train.epochs (the cosine schedule is laid out over it)")
    if differing:
        listing = ", ".join(f"{k}: {saved.get(k.split(' ')[0])!r} -> {ours.get(k.split(' ')[0])!r}"
                            for k in differing[:6])
        raise ConfigError(f"{path} was trained with another configuration ({listing}); resume with the same "
                          f"settings, or start over in a new train.output_dir (or delete {path.parent})")


def hooks_done(output_dir: Path) -> int | None:
    """The last epoch whose epoch-end hooks all returned (see :data:`HOOKS_DONE`); None if unknown."""
    try:
        return int(json.loads((Path(output_dir) / HOOKS_DONE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_hooks_done(output_dir: Path, epoch: int) -> None:
    """Record that every epoch-end hook of ``epoch`` returned."""
    write_json_atomic(Path(output_dir) / HOOKS_DONE, {"epoch": epoch})


class MetricsLog:
    """Appends JSON lines on rank 0; on resume, cuts the file back to what the checkpoint had seen."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, size: int, checkpoint: Path) -> None:
        """Cut the file back to the ``size`` bytes that ``checkpoint`` recorded. A shorter file was cut
        or replaced after the checkpoint was written: refused, never padded to ``size``."""
        if self.size() < size:
            raise RunFolderError(f"{self.path} holds {self.size()} bytes but {checkpoint} recorded {size}: the "
                                 "metrics were cut or replaced after the checkpoint was written; restore the "
                                 "file, or start over in a new train.output_dir")
        if self.enabled and self.path.exists():
            with open(self.path, "r+b") as f:
                f.truncate(size)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            size = self.size()
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:  # full disk, ...: no half line, and no empty file, left behind
                with contextlib.suppress(OSError):
                    if size:
                        os.truncate(self.path, size)
                    else:
                        self.path.unlink()
                raise write_error(self.path, e) from e


def read_metrics(output_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``, in order; only those of ``kind`` ("step", "epoch",
    "segment") when given."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {output_dir} is not the output_dir of a training run")
    records = []
    for number, line in enumerate(path.read_bytes().decode(errors="replace").splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number} is not a JSON record ({error.msg}): the file is damaged; "
                                 "restore it, or train the run again in a new folder") from None
            if not (isinstance(record, dict) and "kind" in record):
                raise ValueError(f"{path} line {number} is not a metrics record (no \"kind\"): the file is damaged")
            records.append(record)
    return [r for r in records if kind is None or r["kind"] == kind]

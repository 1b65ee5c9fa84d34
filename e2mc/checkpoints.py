"""Reading and writing checkpoints safely, and our own training checkpoints' format.

* :func:`load` is the one entry point for reading any checkpoint. It always uses
  ``torch.load(..., weights_only=True)``: tensors, numbers, strings and containers load, a file
  that holds pickled code is refused and nothing in it runs.
* :func:`save_atomic` never leaves a partial file and refuses to write what :func:`load` would refuse.
* The official releases are read through :func:`load` too; :mod:`e2mc.releases` maps them onto our
  networks.
* :func:`capture_rng_state` / :func:`restore_rng_state` store python, numpy and torch RNG states
  as tensors and numbers, so a training checkpoint holding them still loads with weights_only.
* Our own training checkpoints (``"format": FORMAT``) are recognised, read, slimmed and exported
  here and nowhere else: :func:`is_training_checkpoint`, :func:`load_training`, :func:`slim`,
  :func:`export_slim`. :func:`e2mc.epoch.save_checkpoint` writes them with :func:`save_atomic`.
* :func:`load_model_weights` puts a checkpoint's weights into a network, and
  :func:`load_initial_weights` one of ours or an official release (:mod:`e2mc.releases`), for training
  and evaluation alike; :func:`e2mc.checks.check_finite_weights` then refuses NaN or inf.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import random
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from e2mc import releases
from e2mc.checks import check_finite_weights
from e2mc.errors import CheckpointError, KeyMismatchError, UserError
from e2mc.provenance import repo_relative, write_atomic



class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds pickled Python objects other than tensors and plain containers."""


def load_model_weights(network: nn.Module, state: dict, source: str | Path) -> None:
    """Load ``state["model"]`` (one of our checkpoints) into ``network``; a KeyMismatchError naming
    ``source`` when the tensors do not fit (another model size, a hand-edited file)."""
    try:
        network.load_state_dict(state["model"])
    except RuntimeError as e:  # torch lists missing, unexpected and misshapen keys
        detail = " ".join(str(e).split())
        raise KeyMismatchError(f"{source} does not fit the network its configuration builds: "
                               f"{detail[:300]}") from None


def _official_exclude_bias_and_norm(p: torch.Tensor) -> bool:
    """Stand-in for VICReg's ``exclude_bias_and_norm`` (LARS skips 1-D parameters)."""
    return p.ndim == 1


# The official VICReg full checkpoint pickles its LARS filter function by name inside
# optimizer["param_groups"] (facebookresearch/vicreg issue #6: "__main__.exclude_bias_and_norm").
# Resolving that name to our own equivalent function lets weights_only read the file; nothing
# from the file is executed, the name only selects an object we provide.
_ALLOWED_GLOBALS = [
    _official_exclude_bias_and_norm,
    (_official_exclude_bias_and_norm, "__main__.exclude_bias_and_norm"),
    (_official_exclude_bias_and_norm, "main_vicreg.exclude_bias_and_norm"),
]


def _allowed_global_names() -> set[str]:
    names = set()
    for entry in _ALLOWED_GLOBALS:
        if isinstance(entry, tuple):
            names.add(entry[1])
        else:
            names.add(f"{entry.__module__}.{entry.__qualname__}")
    return names


def require_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path when it is a readable file; else FileNotFoundError naming it (a folder is
    said to be a folder). Cheap: callers check the files a configuration names before loading data."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} is a folder, not a file; name the .pt/.pth file inside it")
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path} (resolved {path.resolve()}); check the path, or download the "
            "release into it first"
        )
    return path


def load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Read a checkpoint written by ``torch.save``, without running any code from it.

    Always ``torch.load(path, map_location, weights_only=True)``. Raises FileNotFoundError for a
    missing path, :class:`UnsafeCheckpointError` for a file holding pickled code (refused for
    safety; nothing in it runs) and :class:`CheckpointError` for a corrupt or foreign file.
    """
    path = require_file(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): a copy or a save that did not finish; copy it again")
    _check_expanded_size(path)
    try:
        with torch.serialization.safe_globals(_ALLOWED_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", message)))
        if names:
            raise UnsafeCheckpointError(
                f"refused to load {path} for safety: it holds pickled Python objects, not only tensors and "
                f"plain containers (it references {', '.join(names)}). Nothing in the file was run. If you "
                "trust its origin, re-save its tensors as a plain dict (e.g. torch.save(model.state_dict(), "
                "...)) and load that."
            ) from None
        detail = message.split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
        raise CheckpointError(
            f"could not read {path} with the safe loader ({' '.join(detail.split()) or 'unpickling failed'}): "
            "the file is truncated or corrupt, or uses pickle features beyond tensors and plain containers. "
            "Nothing in the file was run; download or copy it again, or re-save it as a plain state dict."
        ) from None
    # A text or foreign file fails inside the unpickler with whatever its bytes provoke (KeyError: 101, ...)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError) as error:
        raise CheckpointError(
            f"could not read {path} ({type(error).__name__}: {str(error).strip() or 'no detail'}). The file is "
            "truncated, corrupt or not written by torch.save; "
            "download or copy it again"
        ) from error


def _check_expanded_size(path: Path) -> None:
    """Refuse a checkpoint whose archive expands far beyond its size on disk before reading it.

    ``torch.save`` stores its zip entries uncompressed, so a genuine checkpoint expands to about its own
    size; a compressed entry that would inflate a small file into a huge tensor is refused here, before
    any of it is allocated. Files in the legacy (non-zip) format are left to the safe loader."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"could not read {path}: {error}; the file is truncated or corrupt") from None
    allowed = 2 * path.stat().st_size + (1 << 20)
    if expanded > allowed:
        raise CheckpointError(f"refused to load {path}: its archive expands to {expanded} bytes from "
                              f"{path.stat().st_size} on disk, which torch.save never writes; the file is "
                              "corrupt or crafted. Download or copy it again")


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` so that ``path`` holds either the old or the complete new file.

    Goes through :func:`e2mc.provenance.write_atomic` (temporary file, fsync, rename), and before the
    rename checks that :func:`load` would accept the file (no pickled code); on any failure ``path``
    is untouched. Returns the path written.
    """
    def check_loadable(temporary: Path) -> None:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(temporary))) - _allowed_global_names()
        if unsafe:
            raise UnsafeCheckpointError(
                f"not saving {path}: the object holds Python objects that load() would refuse "
                f"({', '.join(sorted(unsafe))}); store tensors, numbers, strings, lists and dicts only "
                "(e.g. RNG states via capture_rng_state())"
            )

    return write_atomic(path, lambda handle: torch.save(obj, handle), verify=check_loadable)


# ----------------------------------------------------------------------------- our training checkpoints

FORMAT = "e2mc-train-v1"  # the ``format`` entry of every training checkpoint we write
# What a checkpoint needs to be evaluated or continued from (no optimizer, RNG or position): the
# per-epoch ``checkpoint-epochNNN.pt`` files and exported base checkpoints hold only these.
SLIM_ENTRIES = {"method": str, "config": dict, "epoch": int, "model": dict}  # each with its type
SLIM_KEYS = ("format", *SLIM_ENTRIES)


def is_training_checkpoint(state: Any) -> bool:
    """True for a loaded checkpoint written by e2mc training (full or slim)."""
    return isinstance(state, Mapping) and state.get("format") == FORMAT


def training_state(state: Any, source: str | os.PathLike) -> dict[str, Any] | None:
    """``state`` when it is one of our training checkpoints, None when it is something else (e.g. an
    official release); a CheckpointError naming ``source`` when it claims our format but lacks one of
    :data:`SLIM_ENTRIES` or holds one of the wrong type (a hand-edited or foreign file)."""
    if not is_training_checkpoint(state):
        return None
    for key, kind in SLIM_ENTRIES.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            found = "no such entry" if key not in state else f"a {type(state[key]).__name__}"
            raise CheckpointError(f"{source} says it is an {FORMAT} checkpoint but its {key!r} entry is not a "
                                  f"{kind.__name__} ({found}); it is damaged or not written by e2mc: use another "
                                  "checkpoint")
    return state


def load_training(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """:func:`load` a checkpoint that must be one of ours; :class:`CheckpointError` naming it otherwise."""
    state = training_state(load(path, map_location), path)
    if state is None:
        raise CheckpointError(f"{path} is not a training checkpoint of e2mc (no \"format\": {FORMAT!r}); "
                              "name a checkpoint.pt written by e2mc training, or move the file away")
    return state


def load_initial_weights(path: str | os.PathLike, method: releases.ReleaseKeys,
                         network: nn.Module) -> tuple[str, dict[str, dict[str, Any]] | None]:
    """Load ``path``, one of our checkpoints of ``method`` (a :class:`e2mc.methods.Method`) or an
    official release of it, into ``network``; refuse non-finite weights.

    Returns a description for the run's records (the path relative to the repository) and, for a
    release that holds one, its per-parameter optimizer state by our parameter names
    (:func:`e2mc.releases.apply_optimizer_state` installs it), else None.
    """
    state = load(path)
    ours = training_state(state, path) is not None
    if ours:
        if state["method"] != method.name:
            raise UserError(f"{path} holds a {state['method']} network but method={method.name}; "
                            "choose the matching config")
        load_model_weights(network, state, path)
    else:
        report = releases.load_official(state, method, network, source=str(path))
    check_finite_weights(network, str(path))
    shown = repo_relative(path)
    if ours:
        return f"started from {shown} (epoch {state['epoch']})", None
    return dataclasses.replace(report, source=shown).summary(), report.optimizer_state_by_name


def slim(state: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`SLIM_KEYS` of a training checkpoint: the model and what it is."""
    return {key: state[key] for key in SLIM_KEYS}


def export_slim(state: Mapping[str, Any], destination: str | os.PathLike) -> Path:
    """Write :func:`slim` ``(state)`` to ``destination`` atomically; returns the path."""
    return save_atomic(slim(state), destination)


# ----------------------------------------------------------------------------- RNG state

def capture_rng_state() -> dict[str, Any]:
    """Python, numpy (legacy global) and torch RNG states as tensors and plain numbers.

    Returns ``{"python": {"version", "state" (625,) int64, "gauss_next"}, "numpy": {"keys" (624,)
    int64, "position", "has_gauss", "cached_gaussian"}, "torch": uint8 tensor, "cuda": list of
    uint8 tensors (one per visible GPU; empty without CUDA)}``; it survives :func:`save_atomic` /
    :func:`load` (weights_only).
    """
    version, python_state, gauss_next = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    if name != "MT19937":
        raise CheckpointError(f"unsupported numpy global generator {name!r}; expected MT19937")
    return {
        "python": {
            "version": int(version),
            "state": torch.tensor(python_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states captured by :func:`capture_rng_state`.

    CUDA states are restored when CUDA is available (their number must match the visible GPUs)
    and ignored on a CPU-only machine.
    """
    expected = ("python", "numpy", "torch", "cuda")
    if not isinstance(state, Mapping) or any(key not in state for key in expected):
        raise ValueError(f"not an RNG state from capture_rng_state(); it needs the entries {', '.join(expected)}")
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss_next"]))
    numpy_state = state["numpy"]
    np.random.set_state((
        "MT19937",
        numpy_state["keys"].numpy().astype(np.uint32),
        numpy_state["position"],
        numpy_state["has_gauss"],
        numpy_state["cached_gaussian"],
    ))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            raise UserError(
                f"RNG state holds {len(state['cuda'])} CUDA generators but {torch.cuda.device_count()} GPUs are "
                "visible; resume with the same CUDA_VISIBLE_DEVICES"
            )
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])

"""The run folder: where a training run lives, what it records, and which configuration may resume it.

Everything a run writes lives in one folder, ``train.output_dir``, or when that is not set the one
:func:`output_dir_of` names (by default the launchers' convention, :func:`run_folder`):

* ``checkpoint.pt`` (written and read by :mod:`e2mc.checkpoints`); a run resumes from it only under
  the configuration that trained it (:func:`check_resumable`);
* ``metrics.jsonl``: the records :class:`e2mc.meter.MetricsLog` appends and :func:`e2mc.meter.read_metrics`
  reads back;
* ``epoch-hooks.json``: the last epoch whose epoch-end hooks all returned (:func:`hooks_done`);
* ``config.yaml``, ``summary.json``, and ``run.lock`` while a process holds the folder
  (:class:`e2mc.runlock.RunLock`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from e2mc.config import LOCATION_FIELDS, Config, ConfigError, config_from_dict
from e2mc.data.registry import get_dataset
from e2mc.naming import infer_arm
from e2mc.provenance import write_json_atomic

HOOKS_DONE = "epoch-hooks.json"  # {"epoch": the last epoch whose epoch-end hooks all returned}


def run_folder(root: str | Path, method: str, label: str, seed: int) -> Path:
    """``<root>/<method>/<label>/seed<seed>``: where every launcher puts a run (``label`` is the arm,
    plus the values of any other grid axes)."""
    return Path(root) / method / label / f"seed{seed}"


def output_dir_of(cfg: Config) -> Path:
    """The run folder of ``cfg``: ``train.output_dir``, else :func:`run_folder` under ``runs/<scale>``
    labelled by the configuration's arm."""
    if cfg.train.output_dir:
        return Path(cfg.train.output_dir)
    return run_folder(label=infer_arm(cfg.to_dict()), method=cfg.method, seed=cfg.train.seed,
                      root=Path("runs") / get_dataset(cfg.data.dataset).scale)


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


def run_epoch_hooks(hooks: list, epoch: int, network, output_dir: Path) -> None:
    """Call ``hook(epoch, network, output_dir)`` for each epoch-end hook, then record that they all
    returned (see :data:`HOOKS_DONE`): a run killed before that calls them again when it resumes."""
    for hook in hooks:
        hook(epoch, network, output_dir)
    write_json_atomic(Path(output_dir) / HOOKS_DONE, {"epoch": epoch})

"""Opening a checkpoint for evaluation: the network, what its results record, and its evaluation data.

* :func:`load_checkpoint` opens one of our training checkpoints (method, configuration and epoch come
  from the file) or an official release (``method`` given).
* :func:`open_evaluation_data` finds the data a checkpoint is evaluated on (by default those it trained on).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from e2mc import checkpoints, releases
from e2mc.build import build_network, resolve_device
from e2mc.checks import check_finite_weights
from e2mc.config import Config, ConfigError, config_from_dict
from e2mc.criteria import criterion_record
from e2mc.data.registry import RELEASE_DATASET, EvaluationData, get_dataset
from e2mc.errors import UserError
from e2mc.methods import build_model, get_method, method_names
from e2mc.naming import infer_arm
from e2mc.evaluation.sources import input_channels
from e2mc.results import config_hash


@dataclass
class ResultContext:
    """The fields every result of one network shares (see e2mc.results)."""

    method: str
    arm: str
    epoch: int
    config: dict | None = None
    checkpoint: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def criterion(self) -> dict:
        return criterion_record(self.config)

    @property
    def config_hash(self) -> str | None:
        return config_hash(self.config)

    @property
    def trained_on(self) -> str:
        """The dataset the network was (pre-)trained on: its configuration's, ImageNet for a release."""
        return ((self.config or {}).get("data") or {}).get("dataset") or RELEASE_DATASET


@dataclass
class LoadedCheckpoint:
    """A network ready for evaluation (eval mode, on its device) and what its results record."""

    network: nn.Module
    context: ResultContext
    dataset: str                     # the dataset it was trained on (a name in e2mc.data.registry)
    data_root: str | None            # where its training data was (the evaluation default)


def evaluation_root(cfg: Config) -> str | None:
    """Where a run's evaluation data are: its ``data.root``, except that ImageNet training reads
    ``<root>/train`` while evaluation needs ``<root>`` (train/ and val/)."""
    return get_dataset(cfg.data.dataset).evaluation_root(cfg.data.root)


def load_checkpoint(path: str | Path, method: str | None = None, device: str | torch.device = "auto",
                    arm: str | None = None, epoch: int | None = None, run_config: dict | None = None
                    ) -> LoadedCheckpoint:
    """Open a checkpoint for evaluation.

    Our training checkpoints (``"format": "e2mc-train-v1"``) carry method, configuration and epoch;
    ``method``, if given, must agree. Anything else is read as an official release of ``method``
    (required then) on a ResNet-50 (``e2mc.releases.load_official``), evaluated on ImageNet.
    ``arm`` and ``epoch`` override what is inferred: the arm from the configuration
    (:func:`infer_arm`), the epoch from the file, except that a run from scratch is the base model
    of continued training, epoch 0 (its own epoch count goes to ``extra["pretrain_epochs"]``).
    The network is in eval mode, on ``device``, in the memory layout its run trained in
    (``train.channels_last``; channels_last for releases), so evaluating a saved epoch gives what the
    per-epoch hook measured in training. With ``run_config`` (the configuration of the run folder the
    file lies in) the file must be that run's checkpoint of ``epoch``: same method and arm, and that
    epoch recorded in it; a file another run wrote is refused rather than labelled as this run's.
    """
    path = Path(path)
    if epoch is not None and epoch < 0:  # refused now, not after the evaluation when its result is written
        raise UserError(f"epoch must be >= 0 (epochs of continued pre-training), got {epoch}")
    device = resolve_device(device) if isinstance(device, str) else device
    state = checkpoints.load(path)
    extra: dict[str, Any] = {}
    if run_config is not None:
        _check_of_run(path, state, run_config, epoch)
    if checkpoints.training_state(state, path) is not None:
        if method is not None and method != state["method"]:
            raise UserError(f"{path} holds a {state['method']} network, not {method}; drop --method for our "
                             "checkpoints (they say what they hold)")
        config = state["config"]
        try:
            cfg = config_from_dict(config)
        except ConfigError as e:
            raise checkpoints.CheckpointError(f"{path} holds a configuration this version cannot read: {e}") from None
        network = build_network(cfg)
        checkpoints.load_model_weights(network, state, path)
        file_epoch = int(state["epoch"])
        if not cfg.train.init:
            extra["pretrain_epochs"] = file_epoch
            file_epoch = 0
        context = ResultContext(cfg.method, arm or infer_arm(config), file_epoch if epoch is None else epoch,
                                config, str(path), extra)
        loaded = LoadedCheckpoint(network, context, cfg.data.dataset, evaluation_root(cfg))
        channels_last = cfg.train.channels_last  # evaluate in the layout the run trained in
    else:
        if method is None:
            raise UserError(f"{path} is not one of our training checkpoints; give --method (one of "
                             f"{', '.join(method_names())}) to read it as an official release")
        network = build_model(method, "resnet50")
        report = releases.load_official(state, get_method(method), network, source=str(path))
        if report.epoch is not None:
            extra["release_epochs"] = report.epoch
        context = ResultContext(method, arm or "base", 0 if epoch is None else epoch, None, str(path), extra)
        loaded = LoadedCheckpoint(network, context, RELEASE_DATASET, None)
        channels_last = True
    check_finite_weights(loaded.network, str(path))
    loaded.network.to(device).eval()
    if channels_last:
        loaded.network.to(memory_format=torch.channels_last)
    return loaded


# ----------------------------------------------------------------------------- data

def evaluation_data(dataset: str, root: str | Path | None, subset_dir: str | Path | None = None,
                    workers: int = 8) -> EvaluationData:
    return get_dataset(dataset).evaluation_data(root, subset_dir, workers)


def open_evaluation_data(loaded: LoadedCheckpoint, dataset: str | None = None, root: str | Path | None = None,
                         subset_dir: str | Path | None = None, workers: int = 8) -> EvaluationData:
    """The evaluation data for a checkpoint: ``dataset`` and ``root`` default to those it was trained on.
    Raises ValueError when the network's input channels do not fit the dataset's images."""
    dataset = dataset or loaded.dataset
    expected = get_dataset(dataset).channels
    channels = input_channels(loaded.network)
    if channels != expected:
        raise UserError(f"the network takes {channels}-channel images but {dataset} has {expected}; evaluate it "
                         f"on the dataset it was trained on ({loaded.dataset}), or on others through --transfer")
    return evaluation_data(dataset, root if root is not None else loaded.data_root, subset_dir, workers)


def _check_of_run(path: Path, state: Any, run_config: dict, epoch: int | None) -> None:
    """Refuse ``path`` unless it is the checkpoint of ``epoch`` of the run configured by ``run_config``."""
    expected = f"{run_config['method']} {infer_arm(run_config)} at epoch {epoch}"
    if not checkpoints.is_training_checkpoint(state):
        raise ValueError(f"{path} is not a checkpoint written by the run in {path.parent} (that run is "
                         f"{run_config['method']} {infer_arm(run_config)}); move the file out of the run folder")
    found = f"{state['method']} {infer_arm(state['config'])} at epoch {state['epoch']}"
    if found != expected:
        raise ValueError(f"{path} holds {found}, but the run in {path.parent} would have written {expected} there: "
                         "another run's file was copied in; move it out of the run folder")

"""From a configuration to the objects a run or an evaluation needs: device, network, objective,
added criterion and training data stream. (The weights a run starts from are loaded by
:func:`e2mc.checkpoints.load_initial_weights`.)

Training (:mod:`e2mc.train`) and evaluation (:mod:`e2mc.evaluation`) both build networks here, so
neither imports the other.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from e2mc.config import Config
from e2mc.criteria import get_criterion
from e2mc.data.registry import get_dataset
from e2mc.errors import UserError
from e2mc.methods import get_method


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the local rank's GPU when one is visible, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("train.device=cuda but no GPU is visible; use train.device=cpu or auto")
        # One GPU per local rank. SLURM may already show each task only its own GPU(s)
        # (--gpus-per-task, --gpu-bind), so the index is taken among the visible ones.
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def build_network(cfg: Config) -> nn.Module:
    """The method's network as configured in ``cfg.model`` (the one place configs become models)."""
    try:
        return get_method(cfg.method).build_network(cfg.model.backbone, backbone_widths=cfg.model.widths,
                                                    **cfg.model.heads)
    except TypeError as e:
        raise UserError(f"model.heads does not fit {cfg.method}: {e}") from None


def build_objective(cfg: Config) -> nn.Module:
    """The method's own loss, configured by ``cfg.loss.params``."""
    return get_method(cfg.method).build_objective(**cfg.loss.params)


def build_added_criterion(cfg: Config) -> nn.Module | None:
    """E2MC, an alternative criterion, or None for the original loss alone."""
    return get_criterion(cfg.criterion.name).build(cfg.criterion)


def build_stream(cfg: Config, device: torch.device):
    """The training batch stream for the configured dataset (its record in :mod:`e2mc.data.registry`)."""
    return get_dataset(cfg.data.dataset).train_stream(cfg.data, get_method(cfg.method), cfg.train.seed, device)

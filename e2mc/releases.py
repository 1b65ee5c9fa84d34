"""The official releases, mapped onto our networks.

:func:`convert_official` / :func:`load_official` map the released checkpoints of facebookresearch/vicreg
(``resnet50_fullckpt.pth``, ``resnet50.pth``), facebookresearch/swav (``swav_800ep_pretrain.pth.tar``),
facebookresearch/simsiam (``checkpoint_0099.pth.tar``) and facebookresearch/barlowtwins onto the networks
of :mod:`e2mc.models`, by the method's own key map (:meth:`e2mc.methods.Method.official_key`);
:func:`apply_optimizer_state` installs a release's optimizer state. The caller reads the file through
:func:`e2mc.checkpoints.load`, the one safe reader::

    report = load_official(checkpoints.load(path), get_method("vicreg"), model)
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from e2mc.errors import CheckpointError, KeyMismatchError, UserError


class ReleaseKeys(Protocol):
    """What mapping a release needs of its method (every :class:`e2mc.methods.Method` has it)."""

    name: str

    def official_key(self, key: str) -> str: ...


def convert_official(state_dict: Mapping[str, torch.Tensor], method: ReleaseKeys) -> dict[str, torch.Tensor]:
    """Rename an official release's model state dict into the keys of :func:`e2mc.models.build_model`.

    ``state_dict`` is the flat mapping of tensor names to tensors (for the full VICReg/SimSiam
    checkpoints that is ``checkpoint["model"]`` / ``checkpoint["state_dict"]``; :func:`load_official`
    unwraps them). The ``module.`` prefix of DDP is dropped; then the method's
    :meth:`e2mc.methods.Method.official_key` renames, e.g. VICReg: ``backbone.*``, ``projector.*``
    unchanged, bare ResNet keys (``resnet50.pth``) -> ``backbone.*``; SimSiam: ``encoder.fc.*`` ->
    ``projector.*``, other ``encoder.*`` -> ``backbone.*``.
    Tensors are not copied. Keys that fit no rule are returned unchanged (and then reported as
    unexpected by :func:`load_official`).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), Mapping):
            raise ValueError(
                f"this is a full checkpoint (it has a {wrapper!r} entry); pass checkpoint[{wrapper!r}] "
                "or call load_official(checkpoint, ...)"
            )
    converted: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"entry {key!r} is a {type(value).__name__}, not a tensor; pass a model state dict")
        ours = method.official_key(key[len("module."):] if key.startswith("module.") else key)
        if ours in converted:
            raise UserError(f"official keys {sources[ours]!r} and {key!r} both map to {ours!r}")
        converted[ours] = value
        sources[ours] = key
    return converted


def _listing(keys: list[str], first: int = 5) -> str:
    shown = ", ".join(keys[:first])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > first else ''})"


@dataclass
class OfficialLoadReport:
    """What :func:`load_official` did.

    ``loaded``: our state-dict keys that received a tensor (every key of the model unless the
    release holds only the backbone); ``renamed``: official key -> our key; ``left_at_init``: our
    keys the release lacks and that may keep their initialisation (the heads, for a backbone-only
    release; BatchNorm ``num_batches_tracked`` counters); ``epoch``: the
    release's epoch counter if stored; ``optimizer_state``: the release's ``optimizer.state_dict()``
    as stored (VICReg's LARS ``mu`` buffers, SimSiam's SGD ``momentum_buffer``s), or None;
    ``optimizer_state_by_name``: the same per-parameter states keyed by our parameter names (pass
    to :func:`apply_optimizer_state`); ``extras``: the checkpoint's other top-level entries.
    """

    method: str
    source: str
    loaded: list[str]
    renamed: dict[str, str]
    left_at_init: list[str] = field(default_factory=list)
    epoch: int | None = None
    optimizer_state: dict | None = None
    optimizer_state_by_name: dict[str, dict[str, Any]] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{self.method} release {self.source}: {len(self.loaded)} tensors loaded"]
        if self.epoch is not None:
            lines.append(f"  trained for {self.epoch} epochs")
        if self.left_at_init:
            lines.append(f"  not in the release, left at initialisation: {_listing(self.left_at_init)}")
        if self.optimizer_state_by_name is not None:
            lines.append(f"  optimizer state for {len(self.optimizer_state_by_name)} parameters")
        return "\n".join(lines)


def _split_checkpoint(checkpoint: Any, source: str) -> tuple[Mapping[str, torch.Tensor], dict[str, Any]]:
    """(model state dict, other top-level entries) of a full or a flat checkpoint."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source} holds a {type(checkpoint).__name__}, not a checkpoint dict or a state "
                              "dict of named tensors; save model.state_dict() (or {'model': ...}) instead")
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint.get(wrapper), Mapping):
            return checkpoint[wrapper], {k: v for k, v in checkpoint.items() if k != wrapper}
    return checkpoint, {}


def _optimizer_state_by_name(optimizer_state: Any, parameter_keys: list[str]) -> dict[str, dict[str, Any]]:
    """Key the release's per-parameter optimizer states by our parameter names.

    ``optimizer.state_dict()`` numbers parameters 0, 1, ... across its groups in the order they
    were given; all three official scripts give ``model.parameters()``, whose order is the order
    of the parameter entries in the model state dict (``parameter_keys``, already renamed).
    """
    if not (isinstance(optimizer_state, Mapping) and "state" in optimizer_state and "param_groups" in optimizer_state):
        raise CheckpointError("the release's 'optimizer' entry is not an optimizer.state_dict()")
    indices = [index for group in optimizer_state["param_groups"] for index in group["params"]]
    if len(indices) != len(parameter_keys):
        raise CheckpointError(
            f"the release's optimizer holds {len(indices)} parameters but its model has {len(parameter_keys)}; "
            "the optimizer state does not belong to these weights"
        )
    states = optimizer_state["state"]
    return {name: dict(states[index]) for name, index in zip(parameter_keys, indices) if index in states}


def load_official(checkpoint: Any, method: ReleaseKeys, model: nn.Module,
                  source: str = "<in-memory checkpoint>") -> OfficialLoadReport:
    """Load an official release of ``method`` (e.g. ``get_method("vicreg")``) into ``model`` (built by
    :func:`e2mc.methods.build_model` with the release's sizes, e.g. ``build_model("vicreg", "resnet50")``)
    and report what landed; ``source`` names the file in messages.

    ``checkpoint`` is the loaded file (:func:`e2mc.checkpoints.load`): a full checkpoint
    (``{"model": ..., "optimizer": ..., "epoch": ...}``, ``{"state_dict": ...}``) or a flat
    state dict. Every tensor of the model must come from the release and every tensor of the
    release must fit the model, except that a backbone-only release leaves the heads as they are
    (and a missing BatchNorm ``num_batches_tracked`` counter is tolerated); otherwise
    :class:`KeyMismatchError` names the missing, unexpected and mis-shaped keys.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    official_state, extras = _split_checkpoint(checkpoint, source)
    converted = convert_official(official_state, method)
    renamed = {official: ours for official, ours in zip(official_state.keys(), converted.keys())}

    own = model.state_dict()
    missing = [key for key in own if key not in converted]
    unexpected = [key for key in converted if key not in own]
    backbone_only = all(key.startswith("backbone.") for key in converted)
    # Heads of a backbone-only release, and BatchNorm step counters (unused with momentum BN,
    # absent from very old files), may stay as initialised; anything else must come from the file.
    left_at_init = [
        key for key in missing
        if (backbone_only and not key.startswith("backbone.")) or key.endswith(".num_batches_tracked")
    ]
    tolerated = set(left_at_init)
    missing = [key for key in missing if key not in tolerated]
    misshaped = [
        f"{key} {tuple(converted[key].shape)} vs model {tuple(own[key].shape)}"
        for key in converted
        if key in own and converted[key].shape != own[key].shape
    ]
    if missing or unexpected or misshaped:
        problems = []
        if missing:
            problems.append(f"missing from the release: {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected in the release: {_listing(unexpected)}")
        if misshaped:
            problems.append(f"shape mismatch: {_listing(misshaped, 3)}")
        raise KeyMismatchError(
            f"{source} does not match the {method.name} model; " + "; ".join(problems)
            + f". Build the model with the release's architecture and head sizes (build_model({method.name!r}, "
            "'resnet50') uses the official ones) and check that the file is a "
            f"{method.name} release."
        )
    model.load_state_dict(converted, strict=not left_at_init)

    report = OfficialLoadReport(method.name, source, loaded=list(converted), renamed=renamed, left_at_init=left_at_init)
    report.epoch = extras.pop("epoch", None)
    optimizer_state = extras.pop("optimizer", None)
    if optimizer_state is not None:
        parameter_names = {name for name, _ in model.named_parameters()}
        parameter_keys = [key for key in converted if key in parameter_names]
        report.optimizer_state = optimizer_state
        report.optimizer_state_by_name = _optimizer_state_by_name(optimizer_state, parameter_keys)
    report.extras = extras
    return report


def apply_optimizer_state(
    optimizer: torch.optim.Optimizer, model: nn.Module, state_by_name: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Install per-parameter optimizer states (e.g. ``report.optimizer_state_by_name``).

    For every parameter of ``model`` that ``optimizer`` holds and ``state_by_name`` names, sets
    ``optimizer.state[param]`` to a copy of that state with tensors moved to the parameter's
    device. The state keys must be the ones this optimizer uses (VICReg's LARS: ``"mu"``; SGD:
    ``"momentum_buffer"``). Returns the names installed; raises if a named parameter is not
    held by the optimizer.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    parameters = dict(model.named_parameters())
    unknown = [name for name in state_by_name if name not in parameters or id(parameters[name]) not in held]
    if unknown:
        raise KeyError(
            f"optimizer state given for parameters the optimizer does not hold: {_listing(unknown)}; "
            "build the optimizer over model.parameters() of the model the report was loaded into"
        )
    for name, state in state_by_name.items():
        parameter = parameters[name]
        optimizer.state[parameter] = {
            key: value.to(parameter.device) if isinstance(value, torch.Tensor) else value
            for key, value in state.items()
        }
    return list(state_by_name)

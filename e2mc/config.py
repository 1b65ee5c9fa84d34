"""Run configuration: a YAML file plus ``key=value`` overrides, checked against a schema.

The schema is the dataclasses below; every field is documented where it is declared. An unknown or
mistyped key, or a value of the wrong type, is an error that names the key and the valid choices.

    cfg = load_config("configs/mini/vicreg.yaml", ["criterion.name=e2mc", "train.epochs=3"])
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METHODS = ("vicreg", "swav", "simsiam")
CRITERIA = ("none", "e2mc", "uniformity", "mmcr", "vc")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says how to fix it."""


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"    # "fashion_mnist" (mini scale) or "imagenet" (an ImageFolder train/ root)
    root: str | None = None           # dataset location; for fashion_mnist None searches the usual places
    batch_size: int = 256             # global batch, summed over all processes
    workers: int = 8                  # DataLoader worker processes (imagenet only)
    limit: int | None = None          # train on the first `limit` images only (smoke runs and tests)


@dataclass
class ModelConfig:
    backbone: str = "convnet"         # "resnet50", "resnet18" or "convnet" (28x28 grey)
    widths: list | None = None        # convnet only: the four block widths (default 32, 64, 128, 256)
    heads: dict = field(default_factory=dict)  # head sizes, passed to e2mc.models.build_model


@dataclass
class LossConfig:
    params: dict = field(default_factory=dict)  # keyword arguments of the method's own loss module


@dataclass
class CriterionConfig:
    name: str = "none"                # none (original loss only), e2mc, uniformity, mmcr or vc
    transform: str = "sigmoid"        # e2mc: sigmoid or gaussian_cdf
    ent_coeff: float = 10.0           # e2mc: lambda_ent (0 = covariance-only ablation)
    cov_coeff: float = 1.0            # e2mc: lambda_cov (0 = entropy-only ablation)
    params: dict = field(default_factory=dict)  # keyword arguments of an alternative criterion


@dataclass
class OptimConfig:
    name: str = "lars"                # lars (VICReg), sgd_larc (SwAV) or sgd (SimSiam)
    base_lr: float = 0.2              # learning rate, times batch_size / 256 when scale_lr is true
    scale_lr: bool = True             # linear scaling rule of VICReg and SimSiam; SwAV uses base_lr as is
    momentum: float = 0.9
    weight_decay: float = 1e-6
    eta: float = 1e-3                 # LARS eta / LARC trust coefficient
    schedule: str = "constant"        # constant (continued pre-training) or cosine (pre-training from scratch)
    warmup_epochs: int = 0            # cosine only


@dataclass
class TrainConfig:
    epochs: int = 10                  # epochs of continued pre-training
    seed: int = 0
    init: str | None = None           # checkpoint to start from: an official release or one of ours
    output_dir: str = "runs/default"  # checkpoint.pt, metrics.jsonl, config.yaml, summary.json
    device: str = "auto"              # auto, cpu, cuda
    amp: bool = True                  # bf16 autocast on GPU (ignored on CPU)
    channels_last: bool = True        # NHWC layout: faster convolutions (about 1.5x on CPU for the mini ConvNet)
    log_every: int = 20               # steps between metric lines
    keep_epoch_checkpoints: bool = False  # also keep checkpoint-epochNNN.pt for evaluation sweeps


@dataclass
class EvalConfig:
    every_epoch: bool = False         # linear probe after every epoch (the data of Fig. 6)
    label_fractions: list = field(default_factory=lambda: [0.01])
    seeds: list = field(default_factory=lambda: [0])
    results_dir: str | None = None    # where the per-epoch evaluation JSON files go


@dataclass
class Config:
    method: str = "vicreg"            # vicreg, swav or simsiam
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """sha256 (first 16 hex digits) of the canonical JSON of the configuration, less the fields
        that say only where things are (:data:`LOCATION_FIELDS`): the same experiment run in another
        folder, or on a machine whose data lives elsewhere, has the same hash."""
        config = self.to_dict()
        for section, key in LOCATION_FIELDS:
            config[section].pop(key)
        blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Where a run writes and reads, not what it computes; left out of Config.hash().
LOCATION_FIELDS = (("train", "output_dir"), ("data", "root"), ("data", "workers"), ("eval", "results_dir"))


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{hint} Valid keys: {', '.join(valid)}."


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    hints = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for t in hints:
        if t is type(None) and value is None:
            return None
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is float and isinstance(value, str):  # YAML 1.1 reads 1e-2 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (str, bool, list, dict) and isinstance(value, t):
            return value
    names = " or ".join("null" if t is type(None) else t.__name__ for t in hints)
    raise ConfigError(f"{where} must be {names}, got {value!r} ({type(value).__name__})")


def _build(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the configuration'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown configuration key {prefix + key!r}.{_suggest(key, list(fields))}")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, prefix + key + ".")
        else:
            kwargs[key] = _check_type(value, hints[key], prefix + key)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``3``, ``0.1``, ``true``, ``[0, 1]``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.epochs=3")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return tree


def config_from_dict(tree: dict) -> Config:
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML configuration (or start from the defaults when ``path`` is None) and apply overrides."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"configuration file {str(path)!r} not found; see configs/ for the shipped ones")
        tree = yaml.safe_load(path.read_text()) or {}
    return config_from_dict(apply_overrides(tree, list(overrides or [])))


def validate(cfg: Config) -> None:
    """Check choices and ranges that the types alone do not catch."""
    def choice(value, options, key):
        if value not in options:
            raise ConfigError(f"{key} must be one of {', '.join(options)}, got {value!r}")

    choice(cfg.method, METHODS, "method")
    choice(cfg.criterion.name, CRITERIA, "criterion.name")
    choice(cfg.criterion.transform, ("sigmoid", "gaussian_cdf"), "criterion.transform")
    choice(cfg.data.dataset, ("fashion_mnist", "imagenet"), "data.dataset")
    choice(cfg.optim.name, ("lars", "sgd_larc", "sgd"), "optim.name")
    choice(cfg.optim.schedule, ("constant", "cosine"), "optim.schedule")
    choice(cfg.train.device, ("auto", "cpu", "cuda"), "train.device")
    if cfg.data.batch_size < 2:
        raise ConfigError(f"data.batch_size must be at least 2, got {cfg.data.batch_size}")
    if cfg.train.epochs < 0:
        raise ConfigError(f"train.epochs must be >= 0, got {cfg.train.epochs}")
    if cfg.criterion.ent_coeff < 0 or cfg.criterion.cov_coeff < 0:
        raise ConfigError("criterion.ent_coeff and criterion.cov_coeff must be >= 0")
    for f in cfg.eval.label_fractions:
        if not (isinstance(f, (int, float)) and 0 < f <= 1):
            raise ConfigError(f"eval.label_fractions must hold numbers in (0, 1], got {f!r}")


def save_config(cfg: Config, path: str | Path) -> None:
    from e2mc.provenance import write_atomic

    write_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())

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
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from e2mc.criteria import TRANSFORMS, criterion_names
from e2mc.data.registry import dataset_names
from e2mc.errors import UserError
# The eval section is declared, and checked, in e2mc.eval_settings; its names are re-exported here.
from e2mc.eval_settings import (LABEL_FRACTIONS, PROTOCOLS, EvalConfig, FinetuneConfig, ProbeConfig,  # noqa: F401
                                TransferConfig, check_eval)
from e2mc.methods import method_names

MAX_CONFIG_BYTES = 1 << 20  # a configuration is small; a larger one is a mistake (or a YAML alias bomb)
MAX_YAML_NODES = 100_000    # values in a YAML document once its aliases are expanded (a config has ~100)


class ConfigError(UserError):
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
    eps: float = 1e-7                 # e2mc: added inside the entropy's log; the authors: 1e-7 for VICReg,
                                      # float32 eps 1.1920929e-07 for SwAV and SimSiam (docs/fidelity.md)
    params: dict = field(default_factory=dict)  # keyword arguments of an alternative criterion


@dataclass
class OptimConfig:
    name: str = "lars"                # lars (VICReg), sgd_larc (SwAV) or sgd (SimSiam)
    base_lr: float = 0.2              # learning rate, times batch_size / 256 when scale_lr is true
    scale_lr: bool = True             # linear scaling rule of VICReg and SimSiam; SwAV uses base_lr as is
    momentum: float = 0.9
    weight_decay: float = 1e-6
    eta: float = 1e-3                 # LARS eta / LARC trust coefficient
    bias_base_lr: float | None = None  # base_lr of the 1-D parameters (biases, norms), scaled alike; null:
                                       # base_lr (Barlow Twins trains them at 0.0048, its weights at 0.2)
    schedule: str = "constant"        # constant (continued pre-training) or cosine (pre-training from scratch)
    warmup_epochs: int = 0            # cosine only


@dataclass
class TrainConfig:
    epochs: int = 10                  # epochs of continued pre-training
    seed: int = 0
    init: str | None = None           # checkpoint to start from: an official release or one of ours
    output_dir: str | None = None     # checkpoint.pt, metrics.jsonl, ...; null: runs/<scale>/<method>/<arm>/seed<seed>
    device: str = "auto"              # auto, cpu, cuda
    amp: bool = True                  # bf16 autocast on GPU (ignored on CPU)
    channels_last: bool = True        # NHWC layout: faster convolutions (about 1.5x on CPU for the mini ConvNet)
    log_every: int = 20               # steps between metric lines
    keep_epoch_checkpoints: bool = False  # also keep checkpoint-epochNNN.pt for evaluation sweeps
    restore_release_optimizer: bool | None = None  # continue with a release's optimizer state; null: as
                                                   # the authors (VICReg yes, SimSiam no; SwAV ships none)


@dataclass
class Config:
    method: str = "vicreg"            # a method of the registry (e2mc.methods): vicreg, swav, simsiam, ...
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> bytes:
        """The configuration as the YAML of a run folder's ``config.yaml`` (:func:`load_config` reads it back)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False).encode()

    def hash(self) -> str:
        """sha256 (first 16 hex digits) of the canonical JSON of the configuration, less the fields
        that say only where things are (:data:`LOCATION_FIELDS`): the same experiment run in another
        folder, or on a machine whose data lives elsewhere, has the same hash."""
        config = self.to_dict()
        for section, key in LOCATION_FIELDS:
            config[section].pop(key)
        defaults = Config().to_dict()
        for section, key in ADDED_AFTER_FIRST_RESULTS:
            if config[section][key] == defaults[section][key]:
                config[section].pop(key)
        blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Where a run writes and reads, not what it computes; left out of Config.hash().
LOCATION_FIELDS = (("train", "output_dir"), ("data", "root"), ("data", "workers"), ("eval", "results_dir"))
# Fields added after results were first committed: left out of Config.hash() at their default value, so
# that the hash of every configuration that existed before them (and the result files named by it) stays.
ADDED_AFTER_FIRST_RESULTS = (("train", "restore_release_optimizer"), ("eval", "protocols"), ("eval", "probe"),
                             ("eval", "finetune"), ("eval", "transfer"), ("optim", "bias_base_lr"),
                             ("criterion", "eps"), ("eval", "batch_size"))


class _CountingLoader(yaml.SafeLoader):
    """PyYAML's safe loader that counts, while composing, how many values each node stands for once its
    aliases are expanded, and stops past :data:`MAX_YAML_NODES`: an alias bomb (``&a [x, x]``,
    ``&b [*a, *a]``, ...) is refused after reading its few lines, without ever expanding it."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.expanded: dict[int, int] = {}  # id(node) -> values it stands for, aliases expanded

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)  # the node the alias names, counted when complete
            if id(node) not in self.expanded:
                raise yaml.YAMLError("an alias refers to a node that contains it (a recursive structure)")
            return node
        node = super().compose_node(parent, index)
        if isinstance(node, yaml.ScalarNode):
            children = []
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = [n for pair in node.value for n in pair]
        size = 1 + sum(self.expanded[id(child)] for child in children)
        if size > MAX_YAML_NODES:
            raise yaml.YAMLError(f"it expands to more than {MAX_YAML_NODES} values through its aliases "
                                 "(a YAML alias bomb?)")
        self.expanded[id(node)] = size
        return node


def read_yaml(text: str, where: str) -> Any:
    """Plain YAML (no ``!!python`` tags, at most :data:`MAX_YAML_NODES` values with aliases expanded);
    a ConfigError that names ``where`` otherwise."""
    loader = _CountingLoader(text)
    loader.name = where  # positions in messages name it, not "<unicode string>"
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:  # PyYAML's message would name "<unicode string>", not the file
        raise ConfigError(f"{where} is not valid YAML (only plain YAML is read, no !!python tags): "
                          f"{' '.join(str(e).split())}") from None
    finally:
        loader.dispose()


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
        value = read_yaml(raw, f"the value of override {item!r}")
        _set_dotted(tree, key.strip(), value)
    return tree


def config_from_dict(tree: dict) -> Config:
    try:
        size = len(json.dumps(tree, default=str))
    except (TypeError, ValueError, RecursionError) as e:
        raise ConfigError(f"the configuration cannot be read as plain data: {e}") from None
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"the configuration expands to {size} bytes (a YAML alias bomb?); a configuration "
                          f"holds at most {MAX_CONFIG_BYTES} bytes of plain values")
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML configuration (or start from the defaults when ``path`` is None) and apply overrides."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"configuration file {str(path)!r} is a folder; name a .yaml file (e.g. one in "
                              "configs/)")
        if not path.is_file():
            raise ConfigError(f"configuration file {str(path)!r} not found; see configs/ for the shipped ones")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read configuration file {path}: {e}") from None
        tree = read_yaml(text, str(path))
        if tree is None:
            tree = {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path} must be a mapping of sections (method:, data:, train:, ...), got a "
                              f"{type(tree).__name__}: {str(tree)[:60]!r}")
    return config_from_dict(apply_overrides(tree, list(overrides or [])))


def validate(cfg: Config) -> None:
    """Check choices and ranges that the types alone do not catch, before anything is written."""
    def choice(value, options, key):
        if value not in options:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, options))}, got {value!r}")

    def number(value, key, low=None, strict=False, integer=False):
        if value is None:
            return
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        if low is not None and (value <= low if strict else value < low):
            raise ConfigError(f"{key} must be {'>' if strict else '>='} {low:g}, got {value!r}")

    choice(cfg.method, method_names(), "method")
    choice(cfg.criterion.name, criterion_names(), "criterion.name")
    choice(cfg.criterion.transform, TRANSFORMS, "criterion.transform")
    choice(cfg.data.dataset, dataset_names(), "data.dataset")
    choice(cfg.optim.name, ("lars", "sgd_larc", "sgd"), "optim.name")
    choice(cfg.optim.schedule, ("constant", "cosine"), "optim.schedule")
    choice(cfg.train.device, ("auto", "cpu", "cuda"), "train.device")
    number(cfg.data.batch_size, "data.batch_size", 2)
    number(cfg.data.workers, "data.workers", 0)
    number(cfg.data.limit, "data.limit", 1)
    number(cfg.train.epochs, "train.epochs", 0)
    number(cfg.train.log_every, "train.log_every", 1)
    number(cfg.criterion.ent_coeff, "criterion.ent_coeff", 0)
    number(cfg.criterion.cov_coeff, "criterion.cov_coeff", 0)
    number(cfg.criterion.eps, "criterion.eps", 0, strict=True)
    number(cfg.optim.base_lr, "optim.base_lr", 0, strict=True)
    number(cfg.optim.bias_base_lr, "optim.bias_base_lr", 0, strict=True)
    number(cfg.optim.momentum, "optim.momentum", 0)
    if cfg.optim.momentum >= 1:
        raise ConfigError(f"optim.momentum must be < 1 (e.g. 0.9), got {cfg.optim.momentum!r}")
    if not 0 <= cfg.train.seed < 2 ** 63:
        raise ConfigError(f"train.seed must lie in [0, 2**63) (a 64-bit generator seed), got {cfg.train.seed}")
    number(cfg.optim.weight_decay, "optim.weight_decay", 0)
    number(cfg.optim.eta, "optim.eta", 0, strict=True)
    number(cfg.optim.warmup_epochs, "optim.warmup_epochs", 0)
    if cfg.optim.schedule == "cosine" and cfg.train.epochs > 0 and cfg.optim.warmup_epochs > cfg.train.epochs:
        raise ConfigError(f"optim.warmup_epochs={cfg.optim.warmup_epochs} is longer than the training "
                          f"(train.epochs={cfg.train.epochs}): the learning rate would never reach base_lr; "
                          "lower it (e.g. optim.warmup_epochs=0 for a short run)")
    if cfg.data.limit is not None and cfg.data.limit < cfg.data.batch_size:
        raise ConfigError(f"data.limit={cfg.data.limit} is less than one batch (data.batch_size="
                          f"{cfg.data.batch_size}); raise it or lower the batch size")
    if cfg.criterion.params and cfg.criterion.name in ("none", "e2mc"):
        raise ConfigError(f"criterion.params is for the alternative criteria; with criterion.name="
                          f"{cfg.criterion.name} it would be ignored: remove it")
    try:
        check_eval(cfg.eval)
    except UserError as e:  # the same one line, as a configuration's error
        raise ConfigError(str(e)) from None

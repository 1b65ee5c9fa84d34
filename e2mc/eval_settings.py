"""The evaluation settings: the ``eval`` section of a configuration, one typed object checked in one place.

Each setting is declared once, with :func:`setting`: its type, default, help text and the rule its value
obeys. From these declarations

* YAML configurations and ``eval.*`` overrides are read (:mod:`e2mc.config`, whose ``Config.eval`` is an
  :class:`EvalConfig`);
* the options of ``python -m e2mc evaluate`` and ``sweep`` are generated (:mod:`e2mc.evaluation.cli`:
  ``eval.probe.epochs`` is ``--probe-epochs``);
* :func:`check_eval` refuses a bad value with one line (a :class:`e2mc.errors.UserError`), whichever way it
  came in; the protocols' own settings (``ProbeSettings``, ``FinetuneSettings``) check the fields they share
  with these sections through :func:`check_setting`, the same rules.

Adding a setting is one edit here. The section is part of ``Config.hash()``: a new field must also be
listed in ``e2mc.config.ADDED_AFTER_FIRST_RESULTS`` so that configurations that leave it at its default
keep their hash (and their committed results).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from e2mc.errors import UserError

# The label fractions every evaluation reports unless told otherwise (the paper's 1%, 10%, 100%).
LABEL_FRACTIONS = (0.01, 0.1, 1.0)
PROTOCOLS = ("linear_probe", "finetune", "transfer")
MAX_SEED = 2 ** 63  # a 64-bit generator seed


@dataclass(frozen=True)
class Rule:
    """What a value must be. Numbers: ``low`` / ``high`` bounds (``*_open``: the bound itself is refused),
    ``integer``; any value: ``choices``. Lists apply these to each item and may require ``nonempty`` and
    ``unique`` (each item is one result file: a repeat would be computed twice and kept once)."""

    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    integer: bool = False
    choices: tuple = ()
    nonempty: bool = False
    unique: bool = False

    def bounds(self) -> str:
        """The allowed range in words: ">= 1", "> 0" or "[0, 1)"."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        high = "2**63" if self.high == MAX_SEED else f"{self.high:g}"
        return f"{'(' if self.low_open else '['}{self.low:g}, {high}{')' if self.high_open else ']'}"


def setting(default: Any, help: str, *, item: type | None = None, cli: bool = True, flag: str | None = None,
            **rule: Any) -> Any:
    """A field of the evaluation settings: ``default``, ``help`` (the option's help text), ``item`` (the
    type of a list's items), ``cli`` (False: no command-line option), ``flag`` (the option, default
    ``--`` + the dotted path with dashes) and the keyword arguments of its :class:`Rule`."""
    metadata = {"help": help, "item": item, "cli": cli, "flag": flag, "rule": Rule(**rule)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


POSITIVE = {"low": 1, "integer": True}
NON_NEGATIVE = {"low": 0}


@dataclass
class ProbeConfig:
    """The linear probe. Unset (null) settings take the protocol's defaults (e2mc.evaluation.linear)."""

    on: str | None = setting(None, "features: fast probe on cached standardised features (the mini default); "
                                   "images: the authors' protocol, augmented images through the frozen backbone "
                                   "(the ImageNet default)", choices=("features", "images"))
    epochs: int | None = setting(None, "passes over the labelled set", **POSITIVE)
    batch_size: int | None = setting(None, "images per probe step", **POSITIVE)
    lr: float | None = setting(None, "initial learning rate", low=0, low_open=True)
    weight_decay: float | None = setting(None, "weight decay of SGD", **NON_NEGATIVE)
    weight_decays: list | None = setting(None, "choose the probe's weight decay from this grid on a held-out part "
                                               "of the labelled set", item=float, **NON_NEGATIVE)
    val_fraction: float | None = setting(None, "hold out this fraction of the labelled set to choose the probe's "
                                               "epoch (top1_val_selected)", low=0, high=1, high_open=True)


@dataclass
class FinetuneConfig:
    """Semi-supervised fine-tuning (SwAV's eval_semisup protocol); null settings take its defaults."""

    epochs: int | None = setting(None, "epochs of fine-tuning", **POSITIVE)
    batch_size: int | None = setting(None, "images per fine-tuning step", **POSITIVE)
    backbone_lr: float | None = setting(None, "initial learning rate of the backbone", **NON_NEGATIVE)
    head_lr: float | None = setting(None, "initial learning rate of the linear head", **NON_NEGATIVE)
    schedule: str | None = setting(None, "learning-rate schedule", choices=("step", "cosine"))


@dataclass
class TransferConfig:
    """Transfer: linear evaluation on other datasets, each read from a local folder."""

    datasets: dict = setting({}, "transfer dataset and its local folder, NAME=ROOT (repeatable), e.g. "
                                 "cifar10=/data/cifar", flag="--transfer")
    protocol: str | None = setting(None, "reglog: the authors' head on the last feature map (84 epochs, steps "
                                         "24/48/72; the default on images); pooled: the linear probe on pooled "
                                         "features", choices=("reglog", "pooled"))


@dataclass
class EvalConfig:
    every_epoch: bool = setting(False, "evaluate after every epoch of training (the data of Fig. 6)", cli=False)
    label_fractions: list = setting(list(LABEL_FRACTIONS), "fractions of the labels the probes train on",
                                    item=float, low=0, low_open=True, high=1, nonempty=True, unique=True)
    seeds: list = setting([0], "seeds of the label subsets and the probes", item=int, low=0, high=MAX_SEED,
                          high_open=True, integer=True, nonempty=True, unique=True)
    results_dir: str | None = setting(None, "where the evaluation JSON files go (default <output_dir>/eval)",
                                      cli=False)
    protocols: list = setting(["linear_probe"], "linear_probe (frozen backbone), finetune (whole network, SwAV "
                                                "protocol), transfer", item=str, choices=PROTOCOLS, nonempty=True)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    batch_size: int = setting(512, "images per forward pass when encoding", **POSITIVE)


def setting_fields(cls: type = EvalConfig, prefix: str = "") -> list[tuple[str, dataclasses.Field, type]]:
    """(dotted path below ``eval``, field, value type) of every setting, sections expanded, in declaration
    order. The value type is the annotation without None: ``int`` for ``int | None``."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            found += setting_fields(hint, f"{prefix}{f.name}.")
        else:
            found.append((f"{prefix}{f.name}", f, next(t for t in typing.get_args(hint) or (hint,)
                                                      if t is not type(None))))
    return found


FIELDS = {path: f for path, f, _ in setting_fields()}


def default_value(f: dataclasses.Field) -> Any:
    """A setting's default (a fresh list or dict for those)."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _check_one(key: str, value: Any, rule: Rule, many: bool) -> None:
    if rule.choices:
        if value not in rule.choices:
            raise UserError(f"{key} must {'hold' if many else 'be'} one of {', '.join(map(str, rule.choices))}, "
                            f"got {value!r}")
        return
    if rule.low is None:
        return
    number = isinstance(value, int if rule.integer else (int, float)) and not isinstance(value, bool)
    if number and math.isfinite(value):
        below = value <= rule.low if rule.low_open else value < rule.low
        above = rule.high is not None and (value >= rule.high if rule.high_open else value > rule.high)
        if not (below or above):
            return
    elif not many:
        raise UserError(f"{key} must be {'an integer' if rule.integer else 'a finite number'}, got {value!r}")
    where = rule.bounds() if rule.high is None else f"in {rule.bounds()}"
    if many:
        raise UserError(f"{key} must hold {'integers' if rule.integer else 'numbers'} {where}, got {value!r}")
    raise UserError(f"{key} must {'be' if rule.high is None else 'lie'} {where}, got {value!r}")


def check_setting(path: str, value: Any) -> None:
    """Refuse ``value`` for the setting ``eval.<path>`` (e.g. ``"probe.epochs"``) unless it obeys the
    setting's rule, with a UserError of one line that names the setting and what it takes. None (unset)
    passes: the protocol's default applies."""
    f, key = FIELDS[path], f"eval.{path}"
    rule = f.metadata["rule"]
    if value is None:
        return
    if isinstance(value, dict):
        for name, root in value.items():
            if not isinstance(root, str) or not root:
                raise UserError(f"{key}.{name} must be the dataset's local folder, got {root!r}")
        return
    if f.metadata["item"] is None:
        _check_one(key, value, rule, many=False)
        return
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if rule.nonempty and not values:
        raise UserError(f"{key} must not be empty, e.g. {key}={default_value(f)}")
    for v in values:
        _check_one(key, v, rule, many=True)
    repeated = sorted({v for v in values if values.count(v) > 1}) if rule.unique else []
    if repeated:
        raise UserError(f"{key} repeats {', '.join(map(str, repeated))}; list each once")


def check_shared(section: str, settings: Any) -> None:
    """Check the fields that a protocol's own settings object (e.g. ProbeSettings) shares with the
    section ``eval.<section>``, by the rules of that section."""
    for path in FIELDS:
        head, _, name = path.partition(".")
        if head == section and hasattr(settings, name):
            check_setting(path, getattr(settings, name))


def check_transfer(protocols: Any, datasets: Any) -> None:
    """The transfer protocol needs a dataset to transfer to."""
    if "transfer" in protocols and not datasets:
        raise UserError("the transfer protocol needs at least one dataset: eval.transfer.datasets={cifar10: "
                        "/data/cifar} in a configuration, --transfer cifar10=/data/cifar on the command line")


def check_eval(section: EvalConfig) -> None:
    """The one check of the evaluation settings: every field by its rule, then the rules that join two."""
    for path in FIELDS:
        value = section
        for name in path.split("."):
            value = getattr(value, name)
        check_setting(path, value)
    check_transfer(section.protocols, section.transfer.datasets)


def label_fraction_option(text: str, among: tuple[float, ...] | None = None) -> float:
    """An argparse ``type`` for a command-line label fraction: a value of ``eval.label_fractions``
    (checked by :func:`check_setting`) and, with ``among``, one of those fractions."""
    try:
        fraction = float(text)
        check_setting("label_fractions", [fraction])
    except ValueError as e:  # argparse shows its own message for a ValueError, ours for this one
        raise argparse.ArgumentTypeError(str(e) if isinstance(e, UserError) else f"not a number: {text!r}") from None
    if among is not None and fraction not in among:
        raise argparse.ArgumentTypeError(f"{text} is not one of the grid's label fractions "
                                         f"{' '.join(f'{f:g}' for f in among)}")
    return fraction

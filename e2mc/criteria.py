"""The criteria that can be added to an SSL loss, E2MC among them, and the registry of them.

Each entry says what it consumes (the two views E2MC acts on, or every crop), how it is built from
the configuration's ``criterion`` section, which of that section's fields its result files record,
what its experiment arm is called, and which compact transform the training diagnostics measure.
The training loop, the arm names and the result files ask this registry; none names a criterion.

    criterion = get_criterion(cfg.criterion.name)
    module = criterion.build(cfg.criterion)            # None for "none", the original loss alone
    terms = module(*criterion.inputs(views))           # views: e2mc.methods.CriterionViews
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar

import torch
from torch import nn

from e2mc.criterion import E2MC, TRANSFORMS
from e2mc.errors import UserError
from e2mc.methods import CriterionViews, get_method
from e2mc.objectives import MMCR, Uniformity, VarianceCovariance
from e2mc.registry import Registry


class AddedCriterion:
    """A criterion added to a method's own loss. Subclasses set ``name``, ``label`` and ``build``."""

    name: str
    label: str                    # in figures and tables
    takes_all_crops: bool = False  # True: every crop's embedding (MMCR); False: the two views

    def build(self, section) -> nn.Module | None:
        """The module, from a ``CriterionConfig`` (``name``, ``transform``, ``ent_coeff``, ``cov_coeff``, ``params``)."""
        raise NotImplementedError

    def inputs(self, views: CriterionViews) -> list[torch.Tensor]:
        return views.all() if self.takes_all_crops else [views.first, views.second]

    def record(self, section: dict) -> dict[str, Any]:
        """The ``criterion`` block of a result file: the fields this criterion uses, the rest null."""
        return {"name": self.name, "transform": None, "ent_coeff": None, "cov_coeff": None,
                "params": dict(section.get("params") or {})}

    def arm(self, section: dict, method: str) -> str:
        """The experiment arm a run with this criterion belongs to (see :func:`e2mc.naming.infer_arm`)."""
        return self.name

    def measured_transform(self, section: dict, method: str) -> str:
        """The compact transform under which training logs marginal entropy and covariance."""
        return get_method(method).transform


class OriginalLossOnly(AddedCriterion):
    name, label = "none", "original loss only"

    def build(self, section):
        if section.params:
            raise UserError("criterion.params is ignored with criterion.name=none; remove it, or name the "
                             "criterion it belongs to")
        return None

    def record(self, section):
        return {**super().record(section), "params": {}}

    def arm(self, section, method):
        return "original"


class E2MCCriterion(AddedCriterion):
    """E2MC: ``criterion.transform``, ``criterion.ent_coeff`` (lambda_ent), ``criterion.cov_coeff`` (lambda_cov),
    ``criterion.eps`` (inside the entropy's logarithm)."""

    name, label = "e2mc", "E2MC"

    def build(self, section):
        if section.params:
            raise UserError("criterion.params is for the alternative criteria; E2MC takes "
                            "criterion.transform, criterion.ent_coeff, criterion.cov_coeff and criterion.eps")
        return E2MC(section.transform, ent_coeff=section.ent_coeff, cov_coeff=section.cov_coeff, eps=section.eps)

    def record(self, section):
        return {"name": self.name, "transform": section["transform"], "ent_coeff": float(section["ent_coeff"]),
                "cov_coeff": float(section["cov_coeff"]), "params": {}}

    def arm(self, section, method):
        """:attr:`E2MCArm.name` of :meth:`E2MCArm.of` the section; both coefficients 0 is the original loss."""
        arm = E2MCArm.of(section, method)
        return "original" if arm is None else arm.name

    def measured_transform(self, section, method):
        return section["transform"]


@dataclasses.dataclass(frozen=True)
class E2MCArm:
    """An E2MC arm as a value: which terms it keeps, and each setting that differs from the paper's for
    the method (None: the paper's). Its :attr:`name` is what configurations map to and result files
    record (``e2mc``, ``e2mc_sigmoid``, ``e2mc_cov5``, ``entropy_only_gaussian_cdf_ent2``); :meth:`parse`
    reads a recorded name back, so the name is written and read in this one place."""

    kind: str = "e2mc"                # "e2mc", "entropy_only" (lambda_cov 0) or "covariance_only" (lambda_ent 0)
    transform: str | None = None
    ent_coeff: float | None = None
    cov_coeff: float | None = None

    KINDS: ClassVar[tuple[str, ...]] = ("e2mc", "entropy_only", "covariance_only")

    @property
    def name(self) -> str:
        return "_".join([self.kind, *([self.transform] if self.transform else []),
                         *([f"ent{self.ent_coeff:g}"] if self.ent_coeff is not None else []),
                         *([f"cov{self.cov_coeff:g}"] if self.cov_coeff is not None else [])])

    @classmethod
    def of(cls, section, method: str) -> E2MCArm | None:
        """The arm of an E2MC ``criterion`` section (a dict) continued on ``method``; None when both
        coefficients are 0 (the original loss alone)."""
        ent, cov = section["ent_coeff"], section["cov_coeff"]
        if ent == 0 and cov == 0:
            return None
        spec = get_method(method)
        paper_ent, paper_cov = spec.paper_coefficients
        return cls("covariance_only" if ent == 0 else "entropy_only" if cov == 0 else "e2mc",
                   section["transform"] if section["transform"] != spec.transform else None,
                   None if ent in (0, paper_ent) else float(ent), None if cov in (0, paper_cov) else float(cov))

    @classmethod
    def parse(cls, name: str) -> E2MCArm | None:
        """The arm a result file names (``"e2mc_sigmoid_cov5"`` -> ``E2MCArm("e2mc", "sigmoid", None, 5.0)``);
        None for an arm that is not an E2MC variant."""
        match = _E2MC_ARM_NAME.fullmatch(name)
        if match is None:
            return None
        kind, transform, ent, cov = match.groups()
        try:
            return cls(kind, transform, None if ent is None else float(ent), None if cov is None else float(cov))
        except ValueError:  # "_ent" followed by something that is not a number
            return None


_E2MC_ARM_NAME = re.compile(rf"({'|'.join(E2MCArm.KINDS)})(?:_({'|'.join(TRANSFORMS)}))?(?:_ent([^_]+))?"
                            r"(?:_cov([^_]+))?")


class Alternative(AddedCriterion):
    """A baseline criterion of the paper (added to SwAV there), configured by ``criterion.params``."""

    def __init__(self, name: str, label: str, module: type[nn.Module], takes_all_crops: bool = False) -> None:
        self.name, self.label, self.module, self.takes_all_crops = name, label, module, takes_all_crops

    def build(self, section):
        try:
            return self.module(**section.params)
        except TypeError as e:
            raise UserError(f"criterion.params does not fit {self.module.__name__}: {e}") from None


class VarianceCovarianceCriterion(Alternative):
    def arm(self, section, method):
        # VC on raw embeddings (gamma 1) is its own arm beside the normalised default.
        return "vc_raw" if (section.get("params") or {}).get("normalize") is False else "vc"


_CRITERIA: Registry[AddedCriterion] = Registry("criterion", (
    OriginalLossOnly(),
    E2MCCriterion(),
    Alternative("uniformity", "uniformity", Uniformity),
    # MMCR's centroids average every crop, as in the authors' SwAV + MMCR code.
    Alternative("mmcr", "MMCR", MMCR, takes_all_crops=True),
    VarianceCovarianceCriterion("vc", "variance-covariance", VarianceCovariance),
))


def criterion_names() -> tuple[str, ...]:
    """The values of ``criterion.name``: "none" (the original loss alone), "e2mc", then the alternatives."""
    return _CRITERIA.names()


def get_criterion(name: str) -> AddedCriterion:
    """The criterion ``name``; a UserError naming the choices otherwise."""
    return _CRITERIA.get(name)


def criterion_record(config: dict | None) -> dict[str, Any]:
    """The ``criterion`` block of a result from a training configuration (``Config.to_dict()``); an
    official release (no configuration) gives ``{"name": "none", ...}`` with nulls."""
    section = (config or {}).get("criterion") or {"name": "none"}
    return get_criterion(section["name"]).record(section)


__all__ = ["AddedCriterion", "E2MCArm", "TRANSFORMS", "criterion_names", "criterion_record", "get_criterion"]

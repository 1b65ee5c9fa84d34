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

from typing import Any

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
        """"e2mc", or "entropy_only" / "covariance_only" when one coefficient is 0, followed by what differs
        from the paper's setting for the method: the transform (``e2mc_sigmoid``), then a coefficient
        (``e2mc_cov5``, ``entropy_only_gaussian_cdf_ent2``); both 0 is the original loss."""
        ent, cov = section["ent_coeff"], section["cov_coeff"]
        if ent == 0 and cov == 0:
            return "original"
        name = "covariance_only" if ent == 0 else "entropy_only" if cov == 0 else "e2mc"
        spec = get_method(method)
        if section["transform"] != spec.transform:
            name += f"_{section['transform']}"
        paper_ent, paper_cov = spec.paper_coefficients
        if ent not in (0, paper_ent):
            name += f"_ent{ent:g}"
        if cov not in (0, paper_cov):
            name += f"_cov{cov:g}"
        return name

    def measured_transform(self, section, method):
        return section["transform"]


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


__all__ = ["AddedCriterion", "TRANSFORMS", "criterion_names", "criterion_record", "get_criterion"]

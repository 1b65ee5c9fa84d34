"""The experiment arms: named ways of continuing a method's training, and the name of a configuration.

An arm is a set of configuration overrides applied to a method's config. The SLURM scripts, the
submitit launcher and the mini reproduction take arms by these names, and every result file records
the arm that :func:`infer_arm` reads back from the run's configuration.
"""
from __future__ import annotations

import re

from e2mc.diagnostics import METHOD_TRANSFORM

# The paper's (lambda_ent, lambda_cov) per method, as in the authors' code and configs/*/<method>.yaml.
PAPER_COEFFICIENTS: dict[str, tuple[float, float]] = {"vicreg": (10.0, 1.0), "swav": (10.0, 1.0),
                                                       "simsiam": (1.0, 25.0)}

# Overrides on top of a method's config, whose criterion section holds that method's E2MC transform
# and coefficients.
ARMS: dict[str, tuple[str, ...]] = {
    "original": ("criterion.name=none",),
    "e2mc": ("criterion.name=e2mc",),
    "entropy_only": ("criterion.name=e2mc", "criterion.cov_coeff=0"),
    "covariance_only": ("criterion.name=e2mc", "criterion.ent_coeff=0"),
    "e2mc_sigmoid": ("criterion.name=e2mc", "criterion.transform=sigmoid"),
    "e2mc_gaussian_cdf": ("criterion.name=e2mc", "criterion.transform=gaussian_cdf"),
    "uniformity": ("criterion.name=uniformity",),
    "mmcr": ("criterion.name=mmcr",),
    "vc": ("criterion.name=vc",),                                    # normalised embeddings, gamma 1/sqrt(D)
    "vc_raw": ("criterion.name=vc", "criterion.params={normalize: false}"),  # raw embeddings, gamma 1
}


def arm_overrides(arm: str) -> list[str]:
    """The configuration overrides of ``arm``; raises ValueError naming the arms for an unknown one."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose one of {', '.join(ARMS)}")
    return list(ARMS[arm])


def infer_arm(config: dict | None) -> str:
    """The experiment arm of a training configuration.

    No configuration (an official release) or a run from scratch (no ``train.init``: the mini
    stand-in for a release) -> "base"; original loss only -> "original"; an alternative criterion
    -> its name (uniformity, mmcr, vc, vc_raw). E2MC -> "e2mc", or "entropy_only" / "covariance_only"
    when one coefficient is 0, followed by what differs from the paper's setting for the method
    (:data:`METHOD_TRANSFORM`, :data:`PAPER_COEFFICIENTS`): the transform (``e2mc_sigmoid``), then a
    coefficient (``e2mc_cov5``, ``entropy_only_gaussian_cdf_ent2``). Two configurations that differ
    in the criterion thus never share an arm name, so a coefficient sweep tabulates as its own rows.
    """
    if not config or not config["train"].get("init"):
        return "base"
    criterion = config["criterion"]
    if criterion["name"] == "none":
        return "original"
    if criterion["name"] == "vc" and (criterion.get("params") or {}).get("normalize") is False:
        return "vc_raw"
    if criterion["name"] != "e2mc":
        return criterion["name"]
    ent, cov = criterion["ent_coeff"], criterion["cov_coeff"]
    if ent == 0 and cov == 0:
        return "original"
    name = "covariance_only" if ent == 0 else "entropy_only" if cov == 0 else "e2mc"
    method = config["method"]
    if criterion["transform"] != METHOD_TRANSFORM[method]:
        name += f"_{criterion['transform']}"
    paper_ent, paper_cov = PAPER_COEFFICIENTS[method]
    if ent not in (0, paper_ent):
        name += f"_ent{ent:g}"
    if cov not in (0, paper_cov):
        name += f"_cov{cov:g}"
    return name


_E2MC_ARM = re.compile(r"(e2mc|entropy_only|covariance_only)(?:_(sigmoid|gaussian_cdf))?(?:_ent([^_]+))?(?:_cov([^_]+))?")


def split_e2mc_arm(arm: str) -> tuple[str, str | None, float | None, float | None] | None:
    """``(kind, transform, ent_coeff, cov_coeff)`` of an E2MC arm named by :func:`infer_arm`, each
    None where the arm keeps the paper's setting (``"e2mc_sigmoid_cov5"`` -> ``("e2mc", "sigmoid",
    None, 5.0)``); None for an arm that is not an E2MC variant."""
    match = _E2MC_ARM.fullmatch(arm)
    if match is None:
        return None
    kind, transform, ent, cov = match.groups()
    try:
        return kind, transform, None if ent is None else float(ent), None if cov is None else float(cov)
    except ValueError:  # "_ent" followed by something that is not a number
        return None

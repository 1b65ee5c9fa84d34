"""The experiment arms: named ways of continuing a method's training, and the name of a configuration.

An arm is a set of configuration overrides applied to a method's config. The SLURM scripts, the
submitit launcher and the mini reproduction take arms by these names, and every result file records
the arm that :func:`infer_arm` reads back from the run's configuration.
"""
from __future__ import annotations

from e2mc.diagnostics import METHOD_TRANSFORM

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
    stand-in for a release) -> "base"; original loss only -> "original"; E2MC -> "e2mc", or
    "entropy_only" / "covariance_only" when one coefficient is 0, or "e2mc_<transform>" when the
    transform is not the method's default; an alternative criterion -> its name (uniformity, mmcr, vc).
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
    if criterion["ent_coeff"] == 0 and criterion["cov_coeff"] == 0:
        return "original"
    if criterion["ent_coeff"] == 0:
        return "covariance_only"
    if criterion["cov_coeff"] == 0:
        return "entropy_only"
    if criterion["transform"] != METHOD_TRANSFORM[config["method"]]:
        return f"e2mc_{criterion['transform']}"
    return "e2mc"

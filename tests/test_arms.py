"""Every named arm's overrides configure a run that infer_arm names back."""
from pathlib import Path

import pytest

from e2mc.criteria import E2MCArm
from e2mc.naming import ARMS, arm_overrides, infer_arm, method_arm
from e2mc.config import load_config
from e2mc.methods import get_method

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_infer_arm_names_each_arm(arm):
    # the other-transform arms are only distinct on a method whose own transform differs
    method = "vicreg" if arm == "e2mc_gaussian_cdf" else "swav"
    cfg = load_config(ROOT / f"configs/mini/{method}.yaml", arm_overrides(arm))
    assert infer_arm(cfg.to_dict()) == arm


def test_runs_from_scratch_are_the_base_and_unknown_arms_are_named():
    cfg = load_config(ROOT / "configs/mini/pretrain/vicreg.yaml")
    assert infer_arm(cfg.to_dict()) == "base" and infer_arm(None) == "base"
    with pytest.raises(ValueError, match="unknown arm 'e2mcc'; choose one of original, e2mc"):
        arm_overrides("e2mcc")


@pytest.mark.parametrize("scale", ["mini", "imagenet"])
@pytest.mark.parametrize("method", ["vicreg", "swav", "simsiam"])
def test_paper_settings_are_those_of_the_configs(scale, method):
    criterion = load_config(ROOT / f"configs/{scale}/{method}.yaml").criterion
    assert (criterion.ent_coeff, criterion.cov_coeff) == get_method(method).paper_coefficients
    assert criterion.transform == get_method(method).transform


@pytest.mark.parametrize("method, overrides, arm, split", [
    ("simsiam", ["criterion.cov_coeff=5"], "e2mc_cov5", ("e2mc", None, None, 5.0)),
    ("simsiam", ["criterion.cov_coeff=25"], "e2mc", ("e2mc", None, None, None)),
    ("vicreg", ["criterion.ent_coeff=2", "criterion.cov_coeff=0.5"], "e2mc_ent2_cov0.5", ("e2mc", None, 2.0, 0.5)),
    ("swav", ["criterion.cov_coeff=0", "criterion.transform=sigmoid"], "entropy_only_sigmoid",
     ("entropy_only", "sigmoid", None, None)),
    ("vicreg", ["criterion.ent_coeff=0", "criterion.cov_coeff=3", "criterion.transform=gaussian_cdf"],
     "covariance_only_gaussian_cdf_cov3", ("covariance_only", "gaussian_cdf", None, 3.0)),
])
def test_criteria_other_than_the_papers_get_their_own_arm_and_split_back(method, overrides, arm, split):
    cfg = load_config(ROOT / f"configs/mini/{method}.yaml", ["criterion.name=e2mc", *overrides])
    assert infer_arm(cfg.to_dict()) == arm
    assert E2MCArm.parse(arm) == E2MCArm(*split)
    assert E2MCArm.parse(arm).name == arm  # the name is read back to the same value


def test_only_e2mc_arms_split():
    assert [E2MCArm.parse(a) for a in ("original", "mmcr", "vc_raw", "e2mc_entx", "e2mc_cov")] == [None] * 5


def test_the_other_transform_arm_is_the_named_transform_ablation():
    assert [method_arm("e2mc_other_transform", m) for m in ("vicreg", "swav", "simsiam")] == \
        ["e2mc_gaussian_cdf", "e2mc_sigmoid", "e2mc_sigmoid"]
    assert {method_arm("e2mc_other_transform", m) for m in ("vicreg", "swav")} <= set(ARMS)

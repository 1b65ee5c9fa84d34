"""Every named arm's overrides configure a run that infer_arm names back."""
from pathlib import Path

import pytest

from e2mc.arms import ARMS, arm_overrides, infer_arm
from e2mc.config import load_config

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

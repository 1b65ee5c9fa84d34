"""The shared heads (e2mc.heads), the two-view loss base (e2mc.objectives.base) and the shared checks
(e2mc.checks) changed how the networks and losses are written, not what they are: the reference
values below were recorded from the code before that change (commit 95fb833), where each method built
its own nn.Sequential and each loss wrote its own preamble."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from e2mc import checks, objectives
from e2mc.build import build_network
from e2mc.checkpoints import load
from e2mc.config import config_from_dict
from e2mc.criterion import E2MC
from e2mc.heads import projection_mlp
from e2mc.methods import get_method, method_names
from e2mc.objectives.base import TwoViewLoss

ROOT = Path(__file__).resolve().parent.parent

SMALL_HEADS = {"vicreg": dict(expander=(32, 32, 16)), "barlowtwins": dict(projector=(32, 32, 16)),
               "swav": dict(hidden_dim=32, output_dim=16, n_prototypes=10),
               "simsiam": dict(dim=16, pred_dim=8, hidden_dim=32)}

# Head keys and shapes (in state_dict order) before the change; the ConvNet backbone adds 24 keys.
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix, width, affine=True):
    names = _BN if affine else _BN[2:]
    return [(f"{prefix}.{n}", (width,) if n != "num_batches_tracked" else ()) for n in names]


HEAD_KEYS = {
    "vicreg": [("projector.0.weight", (32, 8)), ("projector.0.bias", (32,)), *_bn("projector.1", 32),
               ("projector.3.weight", (32, 32)), ("projector.3.bias", (32,)), *_bn("projector.4", 32),
               ("projector.6.weight", (16, 32))],
    "swav": [("projection_head.0.weight", (32, 8)), ("projection_head.0.bias", (32,)),
             *_bn("projection_head.1", 32), ("projection_head.3.weight", (16, 32)),
             ("projection_head.3.bias", (16,)), ("prototypes.weight", (10, 16))],
    "simsiam": [("projector.0.weight", (32, 8)), *_bn("projector.1", 32), ("projector.3.weight", (32, 32)),
                *_bn("projector.4", 32), ("projector.6.weight", (16, 32)), ("projector.6.bias", (16,)),
                *_bn("projector.7", 16, affine=False), ("predictor.0.weight", (8, 16)), *_bn("predictor.1", 8),
                ("predictor.3.weight", (16, 8)), ("predictor.3.bias", (16,))],
    "barlowtwins": [("projector.0.weight", (32, 8)), *_bn("projector.1", 32), ("projector.3.weight", (32, 32)),
                    *_bn("projector.4", 32), ("projector.6.weight", (16, 32)), *_bn("bn", 16, affine=False)],
}
# fingerprint() of the whole state_dict under torch.manual_seed(0), before the change.
FINGERPRINTS = {"vicreg": 7248.956971503909, "swav": 3814.497709389065, "simsiam": 8863.591284511305,
                "barlowtwins": 7885.396251045942}


def fingerprint(state_dict) -> float:
    """One number that moves when any value, or the order of the tensors, changes."""
    total = 0.0
    for index, tensor in enumerate(state_dict.values()):
        flat = tensor.double().flatten()
        if flat.numel():
            total += (index + 1) * float((flat * torch.linspace(1, 2, flat.numel(), dtype=torch.double)).sum())
    return total


def small_network(method: str) -> nn.Module:
    torch.manual_seed(0)
    return get_method(method).build_network("convnet", backbone_widths=(4, 4, 4, 8), **SMALL_HEADS[method])


@pytest.mark.parametrize("method", sorted(FINGERPRINTS))
def test_networks_keep_their_keys_order_and_seeded_weights(method):
    state = small_network(method).state_dict()
    heads = [(k, tuple(v.shape)) for k, v in state.items() if not k.startswith("backbone.")]
    assert heads == HEAD_KEYS[method]
    assert sum(k.startswith("backbone.") for k in state) == 24
    assert fingerprint(state) == pytest.approx(FINGERPRINTS[method], rel=1e-12)


def test_simsiam_keeps_the_frozen_projector_bias():
    frozen = [n for n, p in small_network("simsiam").named_parameters() if not p.requires_grad]
    assert frozen == ["projector.6.bias"]


def test_every_registered_method_is_covered():
    assert set(method_names()) <= set(FINGERPRINTS) | {"simclr"}  # a test may register a SimCLR-like method


def test_projection_mlp_layout():
    mlp = projection_mlp([8, 16, 4], hidden_bias=False, last_bias=True, last_bn=True)
    assert [type(m).__name__ for m in mlp] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert mlp[0].bias is None and mlp[3].bias is not None and not mlp[4].affine
    assert mlp(torch.randn(5, 8)).shape == (5, 4)
    with pytest.raises(ValueError, match="sizes\\[1\\] must be a positive integer"):
        projection_mlp([8, 0, 4])


@pytest.mark.parametrize("path", sorted(ROOT.glob("results/*/checkpoints/*.pt")), ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_checkpoints_load_strictly(path):
    state = load(path)
    network = build_network(config_from_dict(state["config"]))
    network.load_state_dict(state["model"], strict=True)


# Loss terms on fixed inputs before the change (float32 values; the inputs are drawn below).
REFERENCE_TERMS = {
    "vicreg": {"loss": 43.22768783569336, "invariance": 1.5957820415496826, "variance": 0.1021481603384018,
               "covariance": 0.7794334292411804},
    "barlowtwins": {"loss": 4.672647953033447, "on_diagonal": 4.657559871673584, "off_diagonal": 2.958467483520508},
    "uniformity": {"loss": -4.0926666259765625, "uniformity": -4.0926666259765625},
    "mmcr": {"loss": -6.017219543457031, "nuclear_norm": 6.017219543457031},
    "mmcr_four_views": {"loss": -4.10921573638916, "nuclear_norm": 4.10921573638916},
    "vc": {"loss": 0.0253638606518507, "variance": 0.025213496759533882, "covariance": 0.015036466531455517},
    "vc_projector": {"loss": 0.1099424958229065, "variance": 0.1021481603384018, "covariance": 0.7794334292411804},
    "simsiam": {"loss": -0.006468163337558508},
    "e2mc": {"loss": 0.5518283247947693, "entropy": -0.05458735302090645, "covariance": 0.00595480389893055},
}
# sum |d loss / d view| per input view, before the change (None: no gradient, SimSiam's stop-gradient).
REFERENCE_GRADS = {
    "vicreg": [47.49109736829996, 48.08251266181469], "barlowtwins": [8.387153864139691, 7.677363998722285],
    "uniformity": [2.4569125305861235, 2.4730788385495543], "mmcr": [2.5518695451319218, 2.743901257868856],
    "mmcr_four_views": [1.871383914956823, 1.6444668299518526, 1.4886874156072736, 1.7992488811723888],
    "vc": [0.1139820636890363, 0.10247642794774947], "vc_projector": [0.28182849382938, 0.2850236136910098],
    "simsiam": [0.5438171792775393, 0.43405967514263466, None, None],
    "e2mc": [7.506079452577978, 6.786703931167722],
}
LOSSES = {
    "vicreg": (objectives.VICRegLoss, {}, 2), "barlowtwins": (objectives.BarlowTwinsLoss, {}, 2),
    "uniformity": (objectives.Uniformity, {}, 2), "mmcr": (objectives.MMCR, {}, 2),
    "mmcr_four_views": (objectives.MMCR, {}, 4), "vc": (objectives.VarianceCovariance, {}, 2),
    "vc_projector": (objectives.VarianceCovariance, {"normalize": False}, 2),
    "simsiam": (objectives.SimSiamLoss, {}, 4), "e2mc": (E2MC, {"transform": "gaussian_cdf"}, 2),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_equal_their_values_before_the_base_class(name):
    loss_class, params, n_inputs = LOSSES[name]
    generator = torch.Generator().manual_seed(1)
    views = [torch.randn(12, 6, generator=generator) for _ in range(4)][:n_inputs]
    views = [v.requires_grad_(True) for v in views]
    terms = loss_class(**params)(*views)
    terms["loss"].backward()
    assert {k: float(v.detach()) for k, v in terms.items()} == pytest.approx(REFERENCE_TERMS[name], rel=1e-6)
    for view, expected in zip(views, REFERENCE_GRADS[name], strict=True):
        if expected is None:
            assert view.grad is None
        else:
            assert float(view.grad.double().abs().sum()) == pytest.approx(expected, rel=1e-5)


def test_two_view_losses_share_the_base_and_its_checks():
    for loss_class in (objectives.VICRegLoss, objectives.BarlowTwinsLoss, objectives.Uniformity,
                       objectives.MMCR, objectives.VarianceCovariance):
        assert issubclass(loss_class, TwoViewLoss)
        with pytest.raises(ValueError, match="the two views must have the same shape"):
            loss_class()(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match="more_views\\[0\\] has"):
        objectives.MMCR()(torch.randn(4, 3), torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(TypeError, match="z2 must be a floating-point tensor"):
        checks.check_two_views(torch.randn(4, 3), torch.zeros(4, 3, dtype=torch.long))


def test_two_view_losses_compute_in_float32_under_autocast():
    z1, z2 = torch.randn(8, 4), torch.randn(8, 4)
    reference = objectives.VICRegLoss()(z1, z2)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = objectives.VICRegLoss()(z1.bfloat16(), z2.bfloat16())["loss"]
    assert value.dtype == torch.float32
    assert float(value) == float(objectives.VICRegLoss()(z1.bfloat16().float(), z2.bfloat16().float())["loss"])
    assert float(value) == pytest.approx(float(reference), rel=0.05)

"""Where our numerics follow the authors' code (docs/fidelity.md; issue 20, items 14 to 16)."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from e2mc.config import load_config
from e2mc.criteria import get_criterion
from e2mc.criterion import m_spacings_entropy, to_compact
from e2mc.methods import get_method
from e2mc.heads import EmbeddingHead

ROOT = Path(__file__).resolve().parent.parent
FLOAT32_EPS = torch.finfo(torch.float32).eps  # 2**-23


@pytest.mark.parametrize("method, eps", [("vicreg", 1e-7), ("barlowtwins", 1e-7),
                                         ("swav", FLOAT32_EPS), ("simsiam", FLOAT32_EPS)])
def test_imagenet_configs_use_each_methods_eps(method, eps):
    """The authors: --epsilon 1e-7 for VICReg, torch.finfo(torch.float32).eps for SwAV and SimSiam."""
    cfg = load_config(ROOT / "configs" / "imagenet" / f"{method}.yaml")
    assert cfg.criterion.eps == eps
    assert get_criterion("e2mc").build(cfg.criterion).eps == eps


# Config.hash() of configs/mini/<method>.yaml before criterion.eps existed (main, 2026-12-06).
MINI_HASHES = {"vicreg": "7491f1bb8bc532b1", "swav": "be92716dbfe1b190", "simsiam": "97f22feda9fcc417",
               "barlowtwins": "7cdccbe8d30cd239"}


@pytest.mark.parametrize("method", sorted(MINI_HASHES))
def test_mini_configs_keep_1e_7_and_their_hash(method):
    """The committed mini results were made with 1e-7; the new key leaves their hash as it was."""
    cfg = load_config(ROOT / "configs" / "mini" / f"{method}.yaml")
    assert cfg.criterion.eps == 1e-7
    assert cfg.hash() == MINI_HASHES[method]
    cfg.criterion.eps = FLOAT32_EPS
    assert cfg.hash() != MINI_HASHES[method]  # eps is hashed once it leaves its default


@pytest.mark.parametrize("eps", [1e-7, FLOAT32_EPS])
def test_entropy_gradient_at_a_tie_is_c_over_eps(eps):
    """N = 4, m = 1, one column (0, 0.5, 0.5, 1): spacings 0.5, 0, 0.5, each scaled by (N+1)/m = 5.
    H = (log(2.5 + eps) + log(eps) + log(2.5 + eps)) / 3, so each tied sample's gradient is
    +-(5/eps - 5/(2.5 + eps)) / 3: inversely proportional to eps, 19 % apart for the two eps."""
    x = torch.tensor([[0.0], [0.5], [0.5], [1.0]], dtype=torch.float64, requires_grad=True)
    m_spacings_entropy(x, m=1, eps=eps).sum().backward()
    tied = x.grad[1:3, 0].abs()
    expected = (5 / eps - 5 / (2.5 + eps)) / 3
    torch.testing.assert_close(tied, torch.full_like(tied, expected), rtol=1e-9, atol=0)
    assert expected * eps == pytest.approx(5 / 3, rel=1e-6)  # so 1e-7 gives 1.19 times the float32 eps value


def test_gaussian_cdf_is_ndtr_within_one_float32_ulp_of_the_erf_formula():
    """We use torch.special.ndtr; the authors 0.5 * (1 + erf(z / sqrt 2)). In float32 they differ by at
    most 2**-24 (one ulp of values in [0.5, 1)), and not everywhere; both are within a few ulp of the
    float64 value of 0.5 * erfc(-z / sqrt 2) (Python's math) where the value is not tiny."""
    z = torch.linspace(-8, 8, 40001, dtype=torch.float32)
    ours = to_compact(z, "gaussian_cdf")
    authors = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    difference = (ours.double() - authors.double()).abs()
    assert difference.max().item() <= 2.0**-24
    assert 0 < (ours != authors).float().mean().item() < 0.2  # they do differ, in a few inputs
    reference = torch.tensor([0.5 * math.erfc(-v / math.sqrt(2)) for v in z.double().tolist()], dtype=torch.float64)
    assert (ours.double() - reference).abs().max().item() <= 2.0**-23


def _small_network(method: str) -> nn.Module:
    heads = {"vicreg": {"expander": [32, 32, 16]}, "barlowtwins": {"projector": [32, 32, 16]},
             "swav": {"hidden_dim": 32, "output_dim": 16, "n_prototypes": 10},
             "simsiam": {"dim": 16, "pred_dim": 8, "hidden_dim": 32}}[method]
    torch.manual_seed(0)
    return get_method(method).build_network("convnet", backbone_widths=(4, 4, 8, 8), **heads)


def _embedding_head(network: nn.Module) -> EmbeddingHead:
    return next(m for m in network.modules() if isinstance(m, EmbeddingHead))


@pytest.mark.parametrize("method", ["vicreg", "swav", "simsiam", "barlowtwins"])
def test_under_bf16_autocast_the_embedding_reaches_e2mc_in_float32(method):
    """Issue 20 item 16: under autocast the head's last layer(s) run in float32 on the bf16 activations
    before them, so E2MC's input is float32 and equals that float32 computation bit for bit."""
    network = _small_network(method).train()
    spec = get_method(method)
    head = _embedding_head(network)
    views = [torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    seen = []
    last_kept = head[len(head) - head.float32_tail - 1]  # the last module still under autocast
    hook = last_kept.register_forward_hook(lambda module, inputs, output: seen.append(output.detach().clone()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = spec.forward(network, views)
        _, criterion_views = spec.loss(outputs, 8, spec.build_objective(), network)
    hook.remove()
    assert seen[0].dtype == torch.bfloat16  # the layers before ran in bf16
    assert criterion_views.first.dtype == criterion_views.second.dtype == torch.float32
    # the float32 tail on the same bf16 activations, computed here without autocast (train-mode BN uses
    # the batch's statistics, so the running statistics the forward pass updated do not matter)
    tail = nn.Sequential(*list(head)[-head.float32_tail:]).train()
    expected = tail(seen[0].float())
    got = criterion_views.first
    if method == "swav":  # one pass over both crops: the rows of crop 0, then crop 1
        got = torch.cat([criterion_views.first, criterion_views.second])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_embedding_head_is_nn_sequential_without_autocast():
    """Runs without AMP (every mini config) compute exactly what they did with nn.Sequential."""
    torch.manual_seed(0)
    layers = [nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4)]
    head, plain = EmbeddingHead(*layers), nn.Sequential(*layers)
    x = torch.randn(5, 6)
    head.eval(), plain.eval()
    assert torch.equal(head(x), plain(x))
    assert list(head.state_dict()) == list(plain.state_dict())

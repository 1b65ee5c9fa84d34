"""Backbones and method networks: shapes, head structure, forward semantics, multi-crop grouping."""
import copy

import pytest
import torch
from torch import nn

from e2mc.methods import build_model
from e2mc.methods.simsiam import SimSiamNet
from e2mc.methods.swav import SwAVNet
from e2mc.methods.vicreg import VICRegNet
from e2mc.models import ConvNet, build_backbone


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- backbones

def test_resnet_backbones_have_torchvision_trunk_sizes():
    # Published torchvision counts (25,557,032 and 11,689,512) minus the 1000-way fc.
    resnet50, dim50 = build_backbone("resnet50")
    resnet18, dim18 = build_backbone("resnet18")
    assert (dim50, dim18) == (2048, 512)
    assert count(resnet50) == 25_557_032 - (2048 * 1000 + 1000)
    assert count(resnet18) == 11_689_512 - (512 * 1000 + 1000)
    resnet18.eval()
    with torch.no_grad():
        assert resnet18(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_convnet_maps_fashion_mnist_images_to_features():
    net, dim = build_backbone("convnet")
    assert dim == 256 and isinstance(net, ConvNet)
    assert net(torch.randn(5, 1, 28, 28)).shape == (5, 256)
    # Four conv layers without bias, four BatchNorms.
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256]
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 4


def test_in_channels_override():
    net, _ = build_backbone("resnet18", in_channels=1)
    assert net.conv1.weight.shape == (64, 1, 7, 7)
    net, _ = build_backbone("convnet", in_channels=3)
    assert net(torch.randn(2, 3, 28, 28)).shape == (2, 256)


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match="resnet50, resnet18, convnet"):
        build_backbone("vit")


@pytest.mark.parametrize("name", ["convnet", "resnet18"])
def test_channels_last_gives_the_same_features(name):
    torch.manual_seed(0)
    net, _ = build_backbone(name, in_channels=1 if name == "convnet" else 3)
    net.eval()
    x = torch.randn(3, 1 if name == "convnet" else 3, 32, 32)
    with torch.no_grad():
        reference = net(x)
        fast = copy.deepcopy(net).to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- heads at the paper's sizes

def test_default_head_sizes_are_the_official_ones():
    with torch.device("meta"):
        vicreg = build_model("vicreg", "resnet50")
        swav = build_model("swav", "resnet50")
        simsiam = build_model("simsiam", "resnet50")
    shapes = lambda model, prefix: {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(prefix)}
    assert shapes(vicreg, "projector") == {
        "projector.0.weight": (8192, 2048), "projector.0.bias": (8192,),
        "projector.1.weight": (8192,), "projector.1.bias": (8192,), "projector.1.running_mean": (8192,),
        "projector.1.running_var": (8192,), "projector.1.num_batches_tracked": (),
        "projector.3.weight": (8192, 8192), "projector.3.bias": (8192,),
        "projector.4.weight": (8192,), "projector.4.bias": (8192,), "projector.4.running_mean": (8192,),
        "projector.4.running_var": (8192,), "projector.4.num_batches_tracked": (),
        "projector.6.weight": (8192, 8192),
    }
    assert shapes(swav, "projection_head") == {
        "projection_head.0.weight": (2048, 2048), "projection_head.0.bias": (2048,),
        "projection_head.1.weight": (2048,), "projection_head.1.bias": (2048,),
        "projection_head.1.running_mean": (2048,), "projection_head.1.running_var": (2048,),
        "projection_head.1.num_batches_tracked": (),
        "projection_head.3.weight": (128, 2048), "projection_head.3.bias": (128,),
    }
    assert shapes(swav, "prototypes") == {"prototypes.weight": (3000, 128)}
    assert shapes(simsiam, "projector.6") == {"projector.6.weight": (2048, 2048), "projector.6.bias": (2048,)}
    assert shapes(simsiam, "projector.7") == {
        "projector.7.running_mean": (2048,), "projector.7.running_var": (2048,), "projector.7.num_batches_tracked": (),
    }
    assert shapes(simsiam, "predictor") == {
        "predictor.0.weight": (512, 2048),
        "predictor.1.weight": (512,), "predictor.1.bias": (512,), "predictor.1.running_mean": (512,),
        "predictor.1.running_var": (512,), "predictor.1.num_batches_tracked": (),
        "predictor.3.weight": (2048, 512), "predictor.3.bias": (2048,),
    }
    assert (vicreg.embedding_dim, swav.embedding_dim, simsiam.embedding_dim) == (8192, 128, 2048)


# ---------------------------------------------------------------- forward semantics

def small_backbone():
    return ConvNet(1, widths=(4, 8, 8, 16)), 16


def test_vicreg_embedding_is_the_expander_of_the_features():
    torch.manual_seed(0)
    model = VICRegNet(*small_backbone(), expander=(32, 24, 40)).eval()
    # Perturb BN statistics so that eval-mode BN is not the identity.
    for bn in (model.projector[1], model.projector[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        out = model(x)
        h = out["features"]
        for linear, bn in ((model.projector[0], model.projector[1]), (model.projector[3], model.projector[4])):
            h = (h @ linear.weight.T + linear.bias - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
            h = torch.clamp(h * bn.weight + bn.bias, min=0)
        expected = h @ model.projector[6].weight.T
    assert model.projector[6].bias is None
    assert out["features"].shape == (6, 16) and out["embedding"].shape == (6, 40)
    torch.testing.assert_close(out["embedding"], expected, rtol=1e-5, atol=1e-5)


def test_swav_outputs_are_normalised_projections_scored_by_prototypes():
    torch.manual_seed(0)
    model = SwAVNet(*small_backbone(), hidden_dim=32, output_dim=12, n_prototypes=7).eval()
    out = model(torch.randn(5, 1, 28, 28))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "features": (5, 16), "embedding": (5, 12), "normalized": (5, 12), "scores": (5, 7)}
    torch.testing.assert_close(out["embedding"], model.projection_head(out["features"]))
    torch.testing.assert_close(out["normalized"].norm(dim=1), torch.ones(5))
    torch.testing.assert_close(out["normalized"] * out["embedding"].norm(dim=1, keepdim=True), out["embedding"])
    torch.testing.assert_close(out["scores"], out["normalized"] @ model.prototypes.weight.T)
    assert model.prototypes.bias is None


class RecordingBackbone(nn.Module):
    """Wraps a backbone and records the input shape of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.inner(x)


def test_swav_multicrop_runs_each_run_of_equal_resolution_as_one_batch():
    torch.manual_seed(0)
    inner, dim = small_backbone()
    model = SwAVNet(RecordingBackbone(inner), dim, hidden_dim=32, output_dim=12, n_prototypes=7).train()
    reference = copy.deepcopy(inner).train()  # same weights and BN state, called by hand
    large = [torch.randn(4, 1, 28, 28) for _ in range(2)]
    small = [torch.randn(4, 1, 12, 12) for _ in range(3)]
    out = model(large + small)
    assert model.backbone.calls == [(8, 1, 28, 28), (12, 1, 12, 12)]
    expected = torch.cat([reference(torch.cat(large)), reference(torch.cat(small))])
    torch.testing.assert_close(out["features"], expected)
    assert out["scores"].shape == (20, 7)
    # Equal resolutions that are not adjacent are separate groups (as official SwAV's unique_consecutive).
    model.backbone.calls.clear()
    model([large[0], small[0], large[1]])
    assert model.backbone.calls == [(4, 1, 28, 28), (4, 1, 12, 12), (4, 1, 28, 28)]


def test_swav_rejects_bad_crops():
    model = SwAVNet(*small_backbone(), hidden_dim=8, output_dim=4, n_prototypes=3)
    with pytest.raises(ValueError, match="at least one crop"):
        model([])
    with pytest.raises(ValueError, match=r"crop 1 must be an \(N, C, H, W\) tensor"):
        model([torch.randn(2, 1, 28, 28), torch.randn(1, 28, 28)])


def test_swav_normalize_prototypes_gives_unit_rows_with_same_directions():
    model = SwAVNet(*small_backbone(), hidden_dim=8, output_dim=4, n_prototypes=6)
    before = model.prototypes.weight.detach().clone()
    model.normalize_prototypes()
    after = model.prototypes.weight.detach()
    torch.testing.assert_close(after.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(after * before.norm(dim=1, keepdim=True), before)


def test_simsiam_projector_ends_in_affine_free_bn_and_predictor_follows():
    torch.manual_seed(0)
    model = SimSiamNet(*small_backbone(), dim=24, pred_dim=6).train()
    out = model(torch.randn(64, 1, 28, 28))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "features": (64, 16), "embedding": (64, 24), "prediction": (64, 24)}
    # Official structure: hidden width = feature width, bias-free hidden linears, affine-free output BN.
    assert [type(m).__name__ for m in model.projector] == [
        "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert model.projector[0].weight.shape == (16, 16) and model.projector[0].bias is None
    assert model.projector[7].weight is None and not model.projector[7].affine
    assert not model.projector[6].bias.requires_grad
    assert model.predictor[0].bias is None and model.predictor[3].weight.shape == (24, 6)
    # In training mode the affine-free BN standardises every output dimension.
    z = out["embedding"].detach()
    torch.testing.assert_close(z.mean(0), torch.zeros(24), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(24), atol=1e-3, rtol=0)
    torch.testing.assert_close(out["prediction"], model.predictor(out["embedding"]))


@pytest.mark.parametrize("method", ["vicreg", "swav", "simsiam"])
def test_embedding_gradient_reaches_the_backbone(method):
    sizes = {"vicreg": {"expander": (16, 16)}, "swav": {"hidden_dim": 16, "output_dim": 8, "n_prototypes": 5},
             "simsiam": {"dim": 16, "pred_dim": 4}}[method]
    model = build_model(method, "convnet", **sizes)
    out = model(torch.randn(4, 1, 28, 28))
    out["embedding"].pow(2).sum().backward()
    first_conv = model.backbone.blocks[0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def test_build_model_errors_name_the_fix():
    with pytest.raises(ValueError, match="vicreg, swav, simsiam"):
        build_model("byol", "convnet")
    with pytest.raises(TypeError, match="accepted: expander"):
        build_model("vicreg", "convnet", dim=128)
    with pytest.raises(ValueError, match="positive integer"):
        build_model("swav", "convnet", n_prototypes=0)
    with pytest.raises(ValueError, match="at least one size"):
        build_model("vicreg", "convnet", expander=())

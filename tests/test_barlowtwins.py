"""Barlow Twins, the fourth method, added through the registry: its loss against an independent
formulation, its official release layouts, and a one-epoch mini run with E2MC."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from e2mc import checkpoints
from e2mc.build import build_network
from e2mc.releases import convert_official, load_official
from e2mc.config import load_config
from e2mc.methods import build_model, get_method, method_names
from e2mc.naming import infer_arm
from e2mc.objectives import BarlowTwinsLoss
from e2mc.meter import read_metrics
from e2mc.train import train

sys.path.insert(0, str(Path(__file__).parent))
from fake_data import write_fake_fashion_mnist  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def barlow_twins_reference(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """The loss written another way: batch norm by F.batch_norm, C by einsum, terms by masks, in float64."""
    z1, z2 = z1.double(), z2.double()
    n1 = F.batch_norm(z1, None, None, training=True, eps=1e-5)
    n2 = F.batch_norm(z2, None, None, training=True, eps=1e-5)
    c = torch.einsum("ni,nj->ij", n1, n2) / z1.shape[0]
    eye = torch.eye(c.shape[0], dtype=torch.bool)
    return ((c[eye] - 1) ** 2).sum() + lambd * (c[~eye] ** 2).sum()


@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_loss_equals_the_cross_correlation_written_with_einsum(lambd):
    generator = torch.Generator().manual_seed(0)
    z1 = torch.randn(64, 16, generator=generator) * 3 + 1
    z2 = z1 + 0.5 * torch.randn(64, 16, generator=generator)
    net_bn = nn.BatchNorm1d(16, affine=False).train()  # the network's own normalisation
    out = BarlowTwinsLoss(lambd)(net_bn(z1), net_bn(z2))
    torch.testing.assert_close(out["loss"].double(), barlow_twins_reference(z1, z2, lambd), rtol=1e-5, atol=1e-4)


def test_identical_decorrelated_views_have_zero_loss():
    # Orthogonal columns with zero mean and unit variance: C = I exactly.
    q, _ = torch.linalg.qr(torch.randn(64, 8, dtype=torch.float64))
    centred = q - q.mean(0)
    n = centred / centred.std(0, unbiased=False)
    q2, _ = torch.linalg.qr(n)
    n = q2 * (64 ** 0.5)
    assert BarlowTwinsLoss()(n.float(), n.float())["loss"].item() == pytest.approx(0.0, abs=1e-3)


def test_registered_as_a_method_the_paper_did_not_try():
    method = get_method("barlowtwins")
    assert "barlowtwins" in method_names() and not method.in_paper
    assert method.transform == "sigmoid" and method.paper_coefficients == (10.0, 1.0)
    assert len(method.imagenet_views) == 2 and method.imagenet_views[1].solarize_p == 0.2
    cfg = load_config(ROOT / "configs/mini/barlowtwins.yaml")
    assert infer_arm(cfg.to_dict()) == "e2mc"
    assert infer_arm(load_config(ROOT / "configs/mini/barlowtwins.yaml", ["criterion.name=none"]).to_dict()) \
        == "original"
    load_config(ROOT / "configs/imagenet/barlowtwins.yaml")
    load_config(ROOT / "configs/mini/pretrain/barlowtwins.yaml")


class OfficialBarlowTwins(nn.Module):
    """facebookresearch/barlowtwins main.py's model: torchvision ResNet-50 without fc, a bias-free
    projector and an affine-free batch norm."""

    def __init__(self, sizes=(2048, 64, 64)):
        super().__init__()
        self.backbone = torchvision.models.resnet50(zero_init_residual=True)
        self.backbone.fc = nn.Identity()
        layers = []
        for i in range(len(sizes) - 2):
            layers += [nn.Linear(sizes[i], sizes[i + 1], bias=False), nn.BatchNorm1d(sizes[i + 1]), nn.ReLU(True)]
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        self.projector = nn.Sequential(*layers)
        self.bn = nn.BatchNorm1d(sizes[-1], affine=False)


def test_backbone_only_release_loads_strictly(tmp_path):
    official = OfficialBarlowTwins()
    torch.nn.init.normal_(official.backbone.conv1.weight)
    state = official.backbone.state_dict()  # what resnet50.pth holds: torchvision keys, no fc
    assert not any(k.startswith("fc.") for k in state)
    torch.save(state, tmp_path / "resnet50.pth")
    model = build_model("barlowtwins", "resnet50", projector=(64, 64))
    report = load_official(checkpoints.load(tmp_path / "resnet50.pth"), get_method("barlowtwins"), model)
    for key, tensor in state.items():
        assert torch.equal(model.backbone.state_dict()[key], tensor), key
    assert set(report.left_at_init) == {f"projector.{k}" for k in model.projector.state_dict()} | \
        {f"bn.{k}" for k in model.bn.state_dict()}


def test_full_checkpoint_lands_every_tensor_and_computes_the_same_embedding(tmp_path):
    official = OfficialBarlowTwins()
    wrapped = nn.Module()
    wrapped.module = official  # DistributedDataParallel's module. prefix
    state = wrapped.state_dict()
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1, momentum=0.9)  # any optimizer over all parameters
    torch.save({"epoch": 1000, "model": state, "optimizer": optimizer.state_dict()}, tmp_path / "checkpoint.pth")
    model = build_model("barlowtwins", "resnet50", projector=(64, 64))
    report = load_official(checkpoints.load(tmp_path / "checkpoint.pth"), get_method("barlowtwins"), model)
    assert report.left_at_init == [] and report.epoch == 1000
    for key, tensor in state.items():
        assert torch.equal(model.state_dict()[key.removeprefix("module.")], tensor), key
    model.eval(), official.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["embedding"], official.projector(official.backbone(x)))


def test_full_size_layout_matches_our_default_model():
    with torch.device("meta"):
        official = OfficialBarlowTwins((2048, 8192, 8192, 8192))
        model = build_model("barlowtwins", "resnet50")
    converted = convert_official(official.state_dict(), get_method("barlowtwins"))
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_one_epoch_mini_run_with_e2mc(tmp_path):
    root = write_fake_fashion_mnist(tmp_path / "fmnist", n_train=256, n_test=64)
    base = load_config(ROOT / "configs/mini/pretrain/barlowtwins.yaml",
                       [f"data.root={root}", "data.batch_size=64", "model.heads={projector: [64, 64]}",
                        "train.epochs=1", f"train.output_dir={tmp_path / 'base'}", "optim.warmup_epochs=0"])
    assert train(base)["status"] == "finished"
    cfg = load_config(ROOT / "configs/mini/barlowtwins.yaml",
                      [f"data.root={root}", "data.batch_size=64", "model.heads={projector: [64, 64]}",
                       "train.epochs=1", f"train.init={tmp_path / 'base' / 'checkpoint.pt'}",
                       f"train.output_dir={tmp_path / 'e2mc'}", "train.log_every=1", "optim.bias_base_lr=0.0012"])
    summary = train(cfg)
    assert summary["status"] == "finished" and summary["epoch"] == 1
    steps = read_metrics(tmp_path / "e2mc", "step")
    assert len(steps) == 4  # 256 images / 64
    for record in steps:
        # the added criterion saw the projector output; the total is the sum of both losses
        assert record["loss"] == pytest.approx(record["ssl_loss"] + record["add_loss"], rel=1e-5)
        assert record["add_entropy"] < 0.1 and record["ssl_on_diagonal"] >= 0
    state = checkpoints.load(tmp_path / "e2mc" / "checkpoint.pt")
    assert state["method"] == "barlowtwins" and state["epoch"] == 1
    # the official two learning rates, both scaled by batch / 256: weights 0.05 * 64 / 256, biases and BN
    groups = state["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([0.0125, 0.0003])
    dims = [p.ndim for p in build_network(cfg).parameters()]
    assert [len(g["params"]) for g in groups] == [sum(d > 1 for d in dims), dims.count(1)]

"""The authors' transfer protocol (RegLog on the last feature map, step schedule) beside the pooled probe."""
import copy
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from e2mc import results
from e2mc.config import ConfigError, load_config
from e2mc.errors import UserError
from e2mc.evaluation import EvaluationPlan, ProbeSettings, TensorImages, evaluate_network, plan_from_config
from e2mc.evaluation.image_probe import RegLog, feature_map, spatial_trunk, train_linear_on_images
from e2mc.evaluation.linear import AUTHORS_TRANSFER_PROBE, cosine_lr, epoch_lr
from e2mc.evaluation.runner import ResultContext
from e2mc.methods import build_model
from e2mc.models import build_backbone
from test_evaluate import ROOT, cifar10  # noqa: F401  (its tiny CIFAR-10 fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def randomise_batchnorm(module: nn.Module, generator: torch.Generator) -> None:
    """Running statistics and affine parameters away from their identity defaults, so that eval-mode
    BatchNorm layers (and the zero-initialised last BN of each residual block) act."""
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            shape = layer.running_mean.shape
            layer.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
            layer.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
            layer.weight.data.copy_(1 + 0.1 * torch.randn(shape, generator=generator))
            layer.bias.data.copy_(0.1 * torch.randn(shape, generator=generator))


# ----------------------------------------------------------------------------- the feature map

def test_resnet18_feature_map_is_torchvisions_layer4_output(generator):
    backbone, feature_dim = build_backbone("resnet18")
    randomise_batchnorm(backbone, generator)
    backbone.eval()
    captured = {}
    backbone.layer4.register_forward_hook(lambda module, inputs, output: captured.update(layer4=output))
    x = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        pooled = backbone(x)  # torchvision's own forward, run layer by layer; the hook keeps layer4's output
    network = build_model("vicreg", "resnet18", expander=(16, 16))
    network.backbone = backbone  # the method network's trunk: what the evaluation reads
    fmap = feature_map(network, x)
    assert fmap.shape == (2, feature_dim, 2, 2)  # 64 px / 32
    torch.testing.assert_close(fmap, captured["layer4"], rtol=0, atol=0)
    torch.testing.assert_close(torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1), pooled)  # avgpool is all that follows


def test_convnet_feature_map_is_its_blocks_output_and_other_backbones_are_refused(generator):
    network = build_model("vicreg", "convnet", expander=(32, 32))
    randomise_batchnorm(network.backbone, generator)
    network.eval()
    x = torch.randn(3, 1, 28, 28, generator=generator)
    fmap = feature_map(network, x)
    assert fmap.shape == (3, 256, 3, 3)  # 28 -> 14 -> 7 -> 3
    with torch.no_grad():
        torch.testing.assert_close(fmap.mean(dim=(2, 3)), network(x)["features"])
    assert spatial_trunk(network) is network.backbone.blocks
    with pytest.raises(ValueError, match="no spatial feature map known for a Sequential backbone"):
        spatial_trunk(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()))


# ----------------------------------------------------------------------------- the RegLog head

def test_reglog_head_on_a_7x7_map_has_the_reference_shape_and_parameters(generator):
    channels, classes = 2048, 10
    head = RegLog(channels, 7, classes, generator)
    assert head.kernel_size == (6, 6) and head.pooled_size == (2, 2)
    assert head.linear.in_features == 8192  # the reference's s = 8192 for ResNet-50
    n_parameters = sum(p.numel() for p in head.parameters())
    assert n_parameters == channels * 2 * 2 * classes + classes + 2 * channels  # linear + BN weight and bias
    assert abs(head.linear.weight.std().item() - 0.01) < 0.0005 and head.linear.bias.abs().max() == 0
    x = torch.randn(4, channels, 7, 7, generator=generator)
    assert head(x).shape == (4, classes)  # train mode: batch statistics, running ones updated

    def reference(training):  # the reference's layers, composed by hand
        pooled = F.avg_pool2d(x, 6, stride=1)
        normalised = F.batch_norm(pooled, head.bn.running_mean.clone(), head.bn.running_var.clone(),
                                  head.bn.weight, head.bn.bias, training=training)
        return F.linear(torch.flatten(normalised, 1), head.linear.weight, head.linear.bias)

    torch.testing.assert_close(head(x), reference(True))
    head.eval()
    torch.testing.assert_close(head(x), reference(False))  # eval mode: the running statistics
    assert not torch.allclose(reference(False), reference(True))


def test_reglog_kernel_is_clamped_to_small_maps(generator):
    head = RegLog(16, (3, 5), 4, generator)
    assert head.kernel_size == (3, 5) and head.pooled_size == (1, 1) and head.linear.in_features == 16
    assert RegLog(16, 8, 4, generator).pooled_size == (3, 3)  # maps of at least 6: the reference kernel


# ----------------------------------------------------------------------------- the step schedule

def test_authors_settings_and_step_schedule_follow_multisteplr():
    s = AUTHORS_TRANSFER_PROBE
    assert (s.epochs, s.batch_size, s.lr, s.momentum, s.nesterov, s.weight_decay) == (84, 256, 0.01, 0.9, False, 1e-4)
    assert (s.schedule, s.milestones, s.gamma) == ("step", (24, 48, 72), 0.1)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=s.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(s.milestones), gamma=s.gamma)
    for epoch in range(s.epochs):
        assert epoch_lr(s, epoch) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12), epoch
        expected = 0.01 if epoch < 24 else 0.001 if epoch < 48 else 1e-4 if epoch < 72 else 1e-5
        assert epoch_lr(s, epoch) == pytest.approx(expected, rel=1e-12), epoch
        optimizer.step()
        scheduler.step()
    default = ProbeSettings()  # unchanged: cosine
    assert [epoch_lr(default, e) for e in range(100)] == [cosine_lr(0.1, e, 100) for e in range(100)]
    assert s.to_dict()["milestones"] == [24, 48, 72] and default.to_dict()["schedule"] == "cosine"


@pytest.mark.parametrize("kwargs, message", [({"schedule": "linear"}, "schedule must be 'cosine' or 'step'"),
                                             ({"milestones": (48, 24)}, "strictly increasing"),
                                             ({"milestones": (0, 5)}, "strictly increasing epochs >= 1"),
                                             ({"gamma": 0.0}, "gamma must be a finite number > 0")])
def test_step_schedule_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProbeSettings(**kwargs)


# ----------------------------------------------------------------------------- the trainer against a reference loop

class Normalise(nn.Module):
    """A deterministic 'augmentation' (the evaluation transform), so the reference loop sees the same inputs."""

    def forward(self, images, generator=None):
        return (images.float().unsqueeze(1) / 255 - 0.5) / 0.25


def test_reglog_trainer_equals_the_reference_loop(generator):
    """train_linear_on_images(head="reglog") against SwAV's eval_linear loop written out: the full RegLog
    (pooling included) on the feature map every step, BN in train mode, MultiStepLR stepped per epoch,
    the test split measured with the head in eval mode; the backbone stays untouched."""
    network = build_model("vicreg", "convnet", expander=(16, 16))
    randomise_batchnorm(network.backbone, generator)
    network.eval()
    images = torch.randint(0, 256, (40, 64, 64), generator=generator, dtype=torch.uint8)  # map 8 x 8
    labels = torch.arange(40) % 4
    source = TensorImages(images, labels, normalize=Normalise(), augment=Normalise())
    train_idx, test_idx = torch.arange(0, 28), torch.arange(28, 40)
    settings = ProbeSettings(epochs=4, batch_size=8, lr=0.05, weight_decay=1e-3, standardize=False, schedule="step",
                             milestones=(1, 3), gamma=0.5)
    before = copy.deepcopy(network.state_dict())
    result = train_linear_on_images(network, source, train_idx, source, test_idx, 4, settings, seed=7,
                                    extraction_batch_size=5, head="reglog")

    trunk = network.backbone.blocks
    rng = torch.Generator().manual_seed(7)
    head = RegLog(256, 8, 4, rng)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=False)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1, 3], gamma=0.5)
    top1, losses = [], []
    for _ in range(settings.epochs):
        head.train()
        order = train_idx[torch.randperm(len(train_idx), generator=rng)]
        total = 0.0
        for start in range(0, len(order), 8):
            batch = order[start:start + 8]
            with torch.no_grad():
                fmap = trunk(Normalise()(images[batch]))
            loss = F.cross_entropy(head(fmap), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / len(order))
        scheduler.step()
        head.eval()
        with torch.no_grad():
            predicted = head(trunk(Normalise()(images[test_idx]))).argmax(1)
        top1.append(100.0 * (predicted == labels[test_idx]).float().mean().item())
    assert result.top1 == pytest.approx(top1)
    assert result.train_loss == pytest.approx(losses, rel=1e-5)
    assert not network.training and all(torch.equal(before[k], v) for k, v in network.state_dict().items())


# ----------------------------------------------------------------------------- the protocols in the runner

def test_transfer_protocol_is_chosen_by_plan_and_config():
    transfer = (("cifar10", "/data"),)
    assert EvaluationPlan(("transfer",), transfer=transfer).transfer_protocol_name() == "pooled"
    assert EvaluationPlan(("transfer",), transfer=transfer, probe_on="images").transfer_protocol_name() == "reglog"
    plan = EvaluationPlan(("transfer",), transfer=transfer, probe_on="features", transfer_protocol="reglog",
                          probe_overrides={"epochs": 3})
    assert plan.transfer_protocol_name() == "reglog"
    assert plan.transfer_settings() == ProbeSettings(**{**AUTHORS_TRANSFER_PROBE.__dict__, "epochs": 3})
    with pytest.raises(ValueError, match="eval.transfer.protocol must be one of reglog, pooled"):
        EvaluationPlan(("transfer",), transfer=transfer, transfer_protocol="swav")
    config = ROOT / "configs/mini/vicreg.yaml"
    cfg = load_config(config, ["eval.transfer.protocol=reglog"])
    assert plan_from_config(cfg.eval, "fashion_mnist").transfer_protocol == "reglog"
    assert plan_from_config(load_config(config).eval, "imagenet").transfer_protocol_name() == "reglog"
    assert load_config(config).hash() == "7491f1bb8bc532b1"  # an unset protocol leaves the hash as it was
    with pytest.raises(ConfigError, match="eval.transfer.protocol must be one of reglog, pooled"):
        load_config(config, ["eval.transfer.protocol=global"])


@pytest.mark.parametrize("backbone", ["convnet", "resnet18"])
def test_reglog_transfer_end_to_end(cifar10, tmp_path, backbone):
    """Tiny CIFAR-10 (10 classes, 15 training and 2 test images each) through evaluate_network with the
    authors' protocol: a result that says reglog, the step schedule recorded, and the backbone unchanged.
    The ResNet sees 224 px images (7 x 7 map, the reference kernel 6); the ConvNet 28 px (3 x 3, clamped)."""
    root, _ = cifar10
    heads = {"expander": (16, 16)}
    network = build_model("vicreg", backbone, **heads)
    network.eval()
    before = copy.deepcopy(network.state_dict())
    context = ResultContext("vicreg", "base", 0)
    epochs = 2 if backbone == "convnet" else 1
    plan = EvaluationPlan(("transfer",), (1.0,), (0,), transfer=(("cifar10", root),), transfer_protocol="reglog",
                          probe_overrides={"epochs": epochs, "batch_size": 16, "val_fraction": 0.2},
                          extraction_batch_size=32)
    (path,) = evaluate_network(network, context, None, plan, tmp_path, workers=0, log=None)
    record = results.read_result(path)
    extra, metrics = record["extra"], record["metrics"]
    assert (record["kind"], record["dataset"]) == ("transfer", "cifar10")
    assert (extra["protocol_name"], extra["probe_on"]) == ("reglog", "images")
    assert extra["settings"]["schedule"] == "step" and extra["settings"]["milestones"] == [24, 48, 72]
    assert (extra["settings"]["lr"], extra["settings"]["epochs"]) == (0.01, epochs)
    assert len(extra["top1_per_epoch"]) == epochs and len(extra["val_top1_per_epoch"]) == epochs
    assert (extra["n_train"], extra["n_test"], extra["num_classes"], extra["n_val"]) == (150, 20, 10, 30)
    assert {"top1_best", "top1_last", "top1_val_selected"} <= set(metrics)
    assert all(math.isfinite(v) for v in extra["train_loss_per_epoch"])
    assert not network.training and all(torch.equal(before[k], v) for k, v in network.state_dict().items())


def test_pooled_transfer_records_its_protocol(cifar10, tmp_path):
    root, _ = cifar10
    network = build_model("vicreg", "convnet", expander=(16, 16)).eval()
    # the cached-features probe (the mini default) transfers with the pooled protocol
    plan = EvaluationPlan(("transfer",), (1.0,), (0,), transfer=(("cifar10", root),), probe_overrides={"epochs": 2},
                          probe_on="features")
    (path,) = evaluate_network(network, ResultContext("vicreg", "base", 0), None, plan, tmp_path, workers=0, log=None)
    extra = results.read_result(path)["extra"]
    assert (extra["protocol_name"], extra["probe_on"]) == ("pooled", "features")
    assert path.name.startswith("transfer_vicreg_base_cifar10-pooled_")  # the protocol is part of the name
    assert extra["settings"]["schedule"] == "cosine"


def test_digits_is_a_bundled_stratified_transfer_set():
    from sklearn.datasets import load_digits

    from e2mc.evaluation import transfer_dataset

    train, test = transfer_dataset("digits", "bundled", "train"), transfer_dataset("digits", "bundled", "test")
    assert len(train) + len(test) == 1797 and len(test) == 540
    counts = torch.bincount(torch.tensor(test.targets), minlength=10)
    per_class = torch.bincount(torch.tensor(load_digits().target), minlength=10)
    assert ((counts - 0.3 * per_class).abs() <= 1).all()  # 30 % of each class: stratified
    assert train.targets == transfer_dataset("digits", "elsewhere", "train").targets  # fixed split
    image, label = test[0]
    original = load_digits()
    index = next(i for i in range(1797) if (original.images[i] * (255 / 16)).round().astype("uint8").tobytes()
                 == image.tobytes() and original.target[i] == label)
    assert image.size == (8, 8) and original.target[index] == label


def test_digits_without_scikit_learn_names_the_extra_that_brings_it(monkeypatch):
    from e2mc.evaluation import transfer_dataset

    for name in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: the import fails, as uninstalled
    with pytest.raises(UserError, match=r"pip install 'e2mc\[repro\]'"):
        transfer_dataset("digits", "bundled", "train")

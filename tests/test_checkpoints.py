"""Safe loading, atomic saving, official releases mapped onto our models, RNG state round trips.

The official releases are not downloaded: their module structures are re-created here from
facebookresearch/vicreg (main_vicreg.py, resnet.py), facebookresearch/swav (src/resnet50.py) and
facebookresearch/simsiam (simsiam/builder.py on torchvision's ResNet-50), written independently of
e2mc.models and torchvision, and their state dicts are filled with random values.
"""
import os
import pickle
import random
import sys

import numpy as np
import pytest
import torch
from torch import nn

from e2mc.checkpoints import (
    CheckpointError,
    KeyMismatchError,
    UnsafeCheckpointError,
    capture_rng_state,
    load,
    restore_rng_state,
    save_atomic,
)
from e2mc.releases import apply_optimizer_state, convert_official, load_official
from e2mc.methods import build_model, get_method


# ============================================================ official module structures

class OfficialBottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + shortcut)


class OfficialResNet50(nn.Module):
    """ResNet-50 as in the official repos.

    VICReg and SwAV: a parameter-free ``ConstantPad2d(1)`` then the 7x7 conv with padding 2;
    torchvision (SimSiam's encoder): no padding layer, padding 3. ``fc`` only for SimSiam.
    """

    def __init__(self, padding_layer: bool, fc: nn.Module | None = None):
        super().__init__()
        if padding_layer:
            self.padding = nn.ConstantPad2d(1, 0.0)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=2 if padding_layer else 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for stage, (planes, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], 1):
            layers = []
            for index in range(blocks):
                block_stride = stride if index == 0 else 1
                downsample = None
                if index == 0:  # every first block changes the width, so it has a projection shortcut
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes * 4, 1, stride=block_stride, bias=False), nn.BatchNorm2d(planes * 4))
                layers.append(OfficialBottleneck(inplanes, planes, block_stride, downsample))
                inplanes = planes * 4
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        if fc is not None:
            self.fc = fc

    def trunk(self, x):
        if hasattr(self, "padding"):
            x = self.padding(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
        return self.avgpool(x).flatten(1)


def official_vicreg_projector(mlp: str) -> nn.Sequential:
    widths = [int(w) for w in f"2048-{mlp}".split("-")]
    layers = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    layers.append(nn.Linear(widths[-2], widths[-1], bias=False))
    return nn.Sequential(*layers)


class OfficialVICReg(nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.backbone = OfficialResNet50(padding_layer=True)
        self.projector = official_vicreg_projector(mlp)

    def forward(self, x):
        features = self.backbone.trunk(x)
        return features, self.projector(features)


class OfficialSwAV(OfficialResNet50):
    """SwAV's ResNet owns its projection head and prototypes."""

    def __init__(self):
        super().__init__(padding_layer=True)
        self.projection_head = nn.Sequential(nn.Linear(2048, 2048), nn.BatchNorm1d(2048), nn.ReLU(), nn.Linear(2048, 128))
        self.prototypes = nn.Linear(128, 3000, bias=False)

    def forward(self, x):
        features = self.trunk(x)
        normalized = nn.functional.normalize(self.projection_head(features), dim=1)
        return features, normalized, self.prototypes(normalized)


class OfficialSimSiam(nn.Module):
    def __init__(self, dim=2048, pred_dim=512):
        super().__init__()
        output_layer = nn.Linear(2048, dim)  # torchvision's fc with num_classes=dim, kept inside the projector
        self.encoder = OfficialResNet50(padding_layer=False, fc=nn.Sequential(
            nn.Linear(2048, 2048, bias=False), nn.BatchNorm1d(2048), nn.ReLU(),
            nn.Linear(2048, 2048, bias=False), nn.BatchNorm1d(2048), nn.ReLU(),
            output_layer, nn.BatchNorm1d(dim, affine=False)))
        self.encoder.fc[6].bias.requires_grad = False
        self.predictor = nn.Sequential(nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim), nn.ReLU(),
                                       nn.Linear(pred_dim, dim))

    def forward(self, x):
        z = self.encoder.fc(self.encoder.trunk(x))
        return z, self.predictor(z)


class DataParallelLike(nn.Module):
    """Gives the ``module.`` key prefix of DistributedDataParallel."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Give every tensor distinct random values of a sensible scale (so forwards stay finite)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in module.state_dict().items():
            if key.endswith("num_batches_tracked"):
                tensor.fill_(int(torch.randint(1, 10**6, (), generator=generator)))
            elif key.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif tensor.dim() > 1:  # conv and linear weights, scaled by fan-in
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / tensor[0].numel() ** 0.5)
            elif key.endswith("weight"):  # BN scale
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.5)
            else:  # biases and running means
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return module


def assert_every_tensor_landed(official_state, model, expected_key):
    ours = model.state_dict()
    assert len(ours) == len(official_state)
    for key, tensor in official_state.items():
        assert torch.equal(ours[expected_key(key)], tensor), key


# ============================================================ load / save_atomic

class Payload:
    """Unpickling this runs open(marker, 'w'), which creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_refuses_pickled_code_and_runs_nothing(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "malicious.pth"
    torch.save({"weight": torch.ones(3), "payload": Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused to load .* for safety") as error:
        load(path)
    assert "Nothing in the file was run" in str(error.value)
    assert not marker.exists()
    # Control: the payload is live, an unrestricted unpickler would have run it.
    control_marker = tmp_path / "control_ran"
    control = tmp_path / "control.pth"
    torch.save({"payload": Payload(control_marker)}, control)
    torch.load(control, weights_only=False)["payload"].close()
    assert control_marker.exists()


def test_load_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*absent.pth"):
        load(tmp_path / "absent.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip archive")
    with pytest.raises(CheckpointError, match="could not read"):
        load(corrupt)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"garbage, not a torch.save file")
    with pytest.raises(CheckpointError, match="could not read .*truncated or corrupt") as error:
        load(garbage)
    assert not isinstance(error.value, UnsafeCheckpointError)


def test_save_atomic_then_load_round_trips_plain_objects(tmp_path):
    state = {"model": {"w": torch.randn(3, 2), "steps": torch.tensor(7)}, "epoch": 3, "name": "run",
             "history": [1.5, None, (2, "x")]}
    path = save_atomic(state, tmp_path / "sub" / "ckpt.pth")
    loaded = load(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["model"]["steps"].item() == 7
    assert (loaded["epoch"], loaded["name"], loaded["history"]) == (3, "run", [1.5, None, (2, "x")])
    assert sorted(os.listdir(tmp_path / "sub")) == ["ckpt.pth"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_save_atomic_failure_midway_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_atomic({"w": torch.arange(5.0)}, path)
    old_bytes = path.read_bytes()
    real_save = torch.save

    def save_half_then_fail(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04partial")  # some bytes reach the temporary file
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"w": torch.zeros(5)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == old_bytes
    assert torch.equal(load(path)["w"], torch.arange(5.0))
    assert os.listdir(tmp_path) == ["ckpt.pth"]  # the temporary file is gone


def test_save_atomic_refuses_what_load_would_refuse(tmp_path):
    path = tmp_path / "ckpt.pth"
    save_atomic({"epoch": 1}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"not saving .*would refuse \(io.open\)"):
        save_atomic({"epoch": 2, "payload": Payload(tmp_path / "never")}, path)
    assert load(path) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["ckpt.pth"]


# ============================================================ RNG state

def draws():
    return (
        [random.random() for _ in range(3)], random.gauss(0, 1),
        np.random.rand(3).tolist(), float(np.random.normal()),
        torch.rand(3).tolist(), torch.randn(2).tolist(),
    )


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.normal()  # leave a cached Gaussian in both generators
    state = capture_rng_state()
    assert state["python"]["gauss_next"] is not None and state["numpy"]["has_gauss"] == 1
    expected = draws()
    assert draws() != expected  # the generators move on
    save_atomic({"rng": state}, tmp_path / "rng.pth")
    restore_rng_state(load(tmp_path / "rng.pth")["rng"])
    assert draws() == expected


def test_restore_rng_state_rejects_foreign_input():
    with pytest.raises(ValueError, match="capture_rng_state"):
        restore_rng_state({"torch": torch.get_rng_state()})


# ============================================================ official releases

@pytest.fixture(scope="module")
def official_resnet_modules():
    torch.manual_seed(0)
    return {
        "vicreg": randomize_(DataParallelLike(OfficialVICReg("512-512-512")), seed=1),
        "swav": randomize_(DataParallelLike(OfficialSwAV()), seed=2),
        "simsiam": randomize_(DataParallelLike(OfficialSimSiam()), seed=3),
    }


def exclude_bias_and_norm(p):
    return p.ndim == 1


def test_vicreg_full_checkpoint_lands_with_its_lars_state(tmp_path, monkeypatch, official_resnet_modules):
    official = official_resnet_modules["vicreg"]
    state = official.state_dict()
    assert next(iter(state)) == "module.backbone.conv1.weight"
    # VICReg's LARS keeps a "mu" buffer per parameter and pickles its filter function by name
    # from the script run as __main__ (facebookresearch/vicreg issue #6).
    monkeypatch.setattr(exclude_bias_and_norm, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "exclude_bias_and_norm", exclude_bias_and_norm, raising=False)
    names = [name for name, _ in official.named_parameters()]
    generator = torch.Generator().manual_seed(4)
    optimizer = {
        "state": {i: {"mu": torch.randn(p.shape, generator=generator)} for i, (_, p) in enumerate(official.named_parameters())},
        "param_groups": [{"lr": 0.0, "weight_decay": 1e-6, "momentum": 0.9, "eta": 0.001,
                          "weight_decay_filter": exclude_bias_and_norm, "lars_adaptation_filter": exclude_bias_and_norm,
                          "params": list(range(len(names)))}],
    }
    path = tmp_path / "resnet50_fullckpt.pth"
    torch.save({"epoch": 1000, "model": state, "optimizer": optimizer}, path)
    with pytest.raises(pickle.UnpicklingError):  # control: plain weights_only cannot read this file
        torch.load(path, weights_only=True)

    model = build_model("vicreg", "resnet50", expander=(512, 512, 512))
    report = load_official(load(path), get_method("vicreg"), model)
    assert_every_tensor_landed(state, model, lambda key: key.removeprefix("module."))
    assert sorted(report.loaded) == sorted(model.state_dict()) and report.left_at_init == []
    assert report.renamed["module.projector.6.weight"] == "projector.6.weight"
    assert report.epoch == 1000 and report.extras == {}
    group = report.optimizer_state["param_groups"][0]
    assert group["weight_decay"] == 1e-6 and group["weight_decay_filter"](torch.zeros(3))
    assert not group["lars_adaptation_filter"](torch.zeros(3, 3))
    assert len(report.optimizer_state_by_name) == len(names)
    for index, name in enumerate(names):
        assert torch.equal(report.optimizer_state_by_name[name.removeprefix("module.")]["mu"],
                           optimizer["state"][index]["mu"]), name
    # The mapped states install onto our parameters by name.
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    installed = apply_optimizer_state(sgd, model, report.optimizer_state_by_name)
    assert len(installed) == len(names)
    assert torch.equal(sgd.state[model.projector[0].weight]["mu"], optimizer["state"][names.index("module.projector.0.weight")]["mu"])

    # Our ResNet-50 trunk computes what VICReg's (padding layer + padding 2) computes.
    model.eval(), official.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features, embedding = official.module(x)
        out = model(x)
    torch.testing.assert_close(out["features"], features, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["embedding"], embedding, rtol=1e-4, atol=1e-4)


def test_vicreg_backbone_only_release_leaves_the_expander_alone(tmp_path, official_resnet_modules):
    backbone_state = official_resnet_modules["vicreg"].module.backbone.state_dict()
    assert next(iter(backbone_state)) == "conv1.weight"
    torch.save(backbone_state, tmp_path / "resnet50.pth")
    model = build_model("vicreg", "resnet50", expander=(64,))
    expander_before = {k: v.clone() for k, v in model.projector.state_dict().items()}
    report = load_official(load(tmp_path / "resnet50.pth"), get_method("vicreg"), model)
    for key, tensor in backbone_state.items():
        assert torch.equal(model.backbone.state_dict()[key], tensor), key
    assert sorted(report.left_at_init) == sorted(f"projector.{k}" for k in expander_before)
    assert all(torch.equal(model.projector.state_dict()[k], v) for k, v in expander_before.items())
    assert report.optimizer_state is None and "left at initialisation" in report.summary()


def test_swav_release_lands_and_computes_the_same_outputs(tmp_path, official_resnet_modules):
    official = official_resnet_modules["swav"]
    state = official.state_dict()
    assert {"module.prototypes.weight", "module.projection_head.3.bias", "module.bn1.num_batches_tracked"} <= set(state)
    torch.save(state, tmp_path / "swav_800ep_pretrain.pth.tar")  # released as a flat, DDP-prefixed state dict
    model = build_model("swav", "resnet50")
    report = load_official(load(tmp_path / "swav_800ep_pretrain.pth.tar"), get_method("swav"), model)

    def expected_key(key):
        key = key.removeprefix("module.")
        return key if key.startswith(("projection_head", "prototypes")) else "backbone." + key

    assert_every_tensor_landed(state, model, expected_key)
    assert len(report.loaded) == len(state) and report.epoch is None and report.optimizer_state is None
    # Files without BatchNorm step counters still load; the counters are reported as left alone.
    without_counters = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    report = load_official(without_counters, get_method("swav"), model)
    assert sorted(report.left_at_init) == sorted(
        expected_key(k) for k in state if k.endswith("num_batches_tracked"))
    model.eval(), official.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features, normalized, scores = official.module(x)
        out = model(x)
    torch.testing.assert_close(out["features"], features, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["normalized"], normalized, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["scores"], scores, rtol=1e-4, atol=1e-4)


def test_simsiam_checkpoint_lands_and_its_sgd_momentum_continues(tmp_path, official_resnet_modules):
    official = official_resnet_modules["simsiam"]
    state = official.state_dict()
    # One official SGD step at lr 0 creates the momentum buffers and leaves the weights as they are.
    sgd_official = torch.optim.SGD(official.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(5)
    for p in official.parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=generator)
    sgd_official.step()
    sgd_official.param_groups[0]["lr"] = 0.05
    official.zero_grad(set_to_none=True)
    checkpoint = {"epoch": 100, "arch": "resnet50", "state_dict": official.state_dict(),
                  "optimizer": sgd_official.state_dict()}
    torch.save(checkpoint, tmp_path / "checkpoint_0099.pth.tar")

    model = build_model("simsiam", "resnet50")
    report = load_official(load(tmp_path / "checkpoint_0099.pth.tar"), get_method("simsiam"), model)

    def expected_key(key):
        key = key.removeprefix("module.")
        if key.startswith("encoder.fc."):
            return key.replace("encoder.fc.", "projector.", 1)
        return key.replace("encoder.", "backbone.", 1)

    assert_every_tensor_landed(state, model, expected_key)
    assert report.epoch == 100 and report.extras == {"arch": "resnet50"}
    assert not model.projector[6].bias.requires_grad

    model.eval(), official.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z, p = official.module(x)
        out = model(x)
    torch.testing.assert_close(out["embedding"], z, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["prediction"], p, rtol=1e-4, atol=1e-4)

    # The momentum buffers carry on: one SGD step on our model equals the official update rule.
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    apply_optimizer_state(sgd, model, report.optimizer_state_by_name)
    official_params = dict(official.module.named_parameters())
    momentum = {expected_key("module." + n): sgd_official.state[p]["momentum_buffer"]
                for n, p in official_params.items() if p in sgd_official.state}
    assert set(momentum) == set(report.optimizer_state_by_name)
    parameters = dict(model.named_parameters())
    checked = ("backbone.conv1.weight", "projector.0.weight", "predictor.3.bias")
    before = {name: parameters[name].detach().clone() for name in checked}
    grads = {name: torch.randn(parameters[name].shape, generator=generator) for name in checked}
    for name in checked:
        parameters[name].grad = grads[name]
    sgd.step()
    for name in checked:
        expected = before[name] - 0.05 * (0.9 * momentum[name] + grads[name])
        torch.testing.assert_close(parameters[name].detach(), expected)


def test_full_size_vicreg_layout_matches_our_default_model():
    with torch.device("meta"):
        official = DataParallelLike(OfficialVICReg("8192-8192-8192"))
        model = build_model("vicreg", "resnet50")
    converted = convert_official(official.state_dict(), get_method("vicreg"))
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_key_mismatch_names_missing_and_unexpected_keys(official_resnet_modules):
    state = dict(official_resnet_modules["swav"].state_dict())
    del state["module.layer4.2.bn3.weight"]
    state["module.prototypes.prototypes0.weight"] = torch.zeros(3000, 128)
    with torch.device("meta"):
        model = build_model("swav", "resnet50")
    with pytest.raises(KeyMismatchError) as error:
        load_official(state, get_method("swav"), model)
    message = str(error.value)
    assert "missing from the release: 1 (backbone.layer4.2.bn3.weight)" in message
    assert "unexpected in the release: 1 (prototypes.prototypes0.weight)" in message


def test_shape_mismatch_names_the_tensor(official_resnet_modules):
    with torch.device("meta"):
        model = build_model("swav", "resnet50", n_prototypes=100)
    with pytest.raises(KeyMismatchError, match=r"prototypes.weight \(3000, 128\) vs model \(100, 128\)"):
        load_official(official_resnet_modules["swav"].state_dict(), get_method("swav"), model)


def test_wrapped_checkpoints_non_tensors_and_unknown_methods_are_refused():
    with pytest.raises(ValueError, match=r"pass checkpoint\['model'\]"):
        convert_official({"model": {"w": torch.zeros(1)}, "epoch": 1}, get_method("vicreg"))
    with pytest.raises(ValueError, match="vicreg, swav, simsiam"):
        get_method("moco")  # the method, and so its key map, is looked up before any release is read
    with pytest.raises(TypeError, match="not a tensor"):
        convert_official({"module.conv1.weight": [1, 2]}, get_method("swav"))

"""The ImageNet path end to end at toy size, through the command line and the real configs/imagenet/ files.

For VICReg, SwAV and SimSiam: a release file in the method's official layout (built by the official
module structures of test_checkpoints, random weights) is continued for 2 epochs of 2 steps on an
ImageFolder of generated JPEGs (multi-crop for SwAV), stopped by SIGTERM in the middle and resumed to
the same weights, bit for bit, as an uninterrupted run; the result is then evaluated with the default
ImageNet linear probe (the authors' protocol on images), fine-tuning and transfer to a tiny DTD copy.
Only sizes and locations are overridden; the ResNet-50 and the 224 px / 96 px crops are the real ones.
"""
import dataclasses
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from e2mc import checkpoints, results
from e2mc.batches import LoaderViews
from e2mc.config import TransferConfig
from e2mc.data import imagenet_probe_transform, imagenet_train_dataset
from e2mc.methods import get_method
from e2mc.evaluation import DatasetImages, linear
from e2mc.evaluation.linear import PAPER_IMAGE_PROBE
from fake_data import write_fake_dtd
from run_records import comparable_records, segment_starts
from test_checkpoints import (DataParallelLike, OfficialSimSiam, OfficialSwAV, OfficialVICReg,
                              exclude_bias_and_norm, randomize_)
from test_train import assert_same_weights, final_weights, wait_for_step_line

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("n01440764", "n01443537", "n01484850")  # ImageNet's first three class folders
TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 1
TEXTURES = ("banded", "dotted")

# Sizes the official-layout builders of test_checkpoints can build: VICReg's expander is free,
# SwAV's heads are the release's (2048 - 128, 3000 prototypes), SimSiam's projector keeps its
# 2048 hidden width (dim and pred_dim are free).
HEADS = {"vicreg": "{expander: [64, 64]}", "swav": "{hidden_dim: 2048, output_dim: 128, n_prototypes: 3000}",
         "simsiam": "{dim: 32, pred_dim: 8}"}
RELEASE_NAMES = {"vicreg": "resnet50_fullckpt.pth", "swav": "swav_800ep_pretrain.pth.tar",
                 "simsiam": "checkpoint_0099.pth.tar"}


def write_jpegs(folder, prefix, count, rng):
    folder.mkdir(parents=True)
    for k in range(count):
        height, width = rng.integers(32, 65, size=2)
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{prefix}_{k}.JPEG", quality=90)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """An ImageNet-shaped folder: train/<wnid>/<wnid>_<n>.JPEG and val/<wnid>/..., small JPEGs."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for wnid in CLASSES:
        write_jpegs(root / "train" / wnid, wnid, TRAIN_PER_CLASS, rng)
        write_jpegs(root / "val" / wnid, f"ILSVRC2012_val_{wnid}", VAL_PER_CLASS, rng)
    return root


@pytest.fixture(scope="module")
def dtd_root(tmp_path_factory):
    """DTD as released: dtd/dtd/images/<texture>/<file>.jpg and labels/{train,val,test}1.txt."""
    return write_fake_dtd(tmp_path_factory.mktemp("dtd"), TEXTURES, seed=1)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_views_resumed_mid_epoch_sees_the_batches_of_an_uninterrupted_epoch(image_root, workers):
    """The augmentation of a step depends on (seed, epoch, step, rank) only: not on the global RNG as
    the steps before left it, nor on where the DataLoader (and its workers) started."""
    stream = LoaderViews(imagenet_train_dataset(image_root / "train", get_method("swav")), batch_size=4, seed=3,
                         workers=workers)
    torch.manual_seed(0)
    epoch = list(stream.epoch(1))
    assert len(epoch) == stream.steps_per_epoch == 2
    assert [tuple(v.shape) for v in epoch[0]] == [(4, 3, 224, 224)] * 2 + [(4, 3, 96, 96)] * 6
    torch.manual_seed(1)  # a resumed run restores the RNG of the interruption; any state must do
    (resumed,) = stream.epoch(1, start_step=1)
    for a, b in zip(epoch[1], resumed, strict=True):
        assert torch.equal(a, b)
    reference = list(LoaderViews(imagenet_train_dataset(image_root / "train", get_method("swav")), 4, seed=3, workers=0).epoch(1))
    for a, b in zip(sum(epoch, []), sum(reference, []), strict=True):
        assert torch.equal(a, b)  # the number of workers changes nothing
    assert not torch.equal(epoch[0][0], epoch[0][1])  # two views of one image differ


def test_probe_training_batches_depend_on_the_generator_only(image_root):
    """The augmented images of the image probe and fine-tuning come from the evaluation's seed, whatever
    ran before in the process and however many DataLoader workers read them."""
    import torchvision

    folder = torchvision.datasets.ImageFolder(str(image_root / "train"), transform=imagenet_probe_transform())
    indices = torch.arange(len(folder))

    def batches(workers, seed, global_seed):
        torch.manual_seed(global_seed)
        source = DatasetImages(folder, folder, workers=workers)
        return list(source.batches(indices, 4, torch.device("cpu"), train=True,
                                   generator=torch.Generator().manual_seed(seed)))

    reference = batches(0, seed=0, global_seed=0)
    assert [len(labels) for _, labels in reference] == [4, 4, 1]
    for other in (batches(0, seed=0, global_seed=1), batches(2, seed=0, global_seed=2)):
        for (a, la), (b, lb) in zip(reference, other, strict=True):
            assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(reference[0][0], batches(0, seed=1, global_seed=0)[0][0])


def write_release(method, folder, monkeypatch):
    """A release file of ``method`` in the official layout, under its official name."""
    path = Path(folder) / RELEASE_NAMES[method]
    torch.manual_seed(0)
    if method == "vicreg":
        official = randomize_(DataParallelLike(OfficialVICReg("64-64")), seed=1)
        # VICReg's LARS keeps a "mu" buffer per parameter and pickles its filter by name from __main__.
        monkeypatch.setattr(exclude_bias_and_norm, "__module__", "__main__")
        monkeypatch.setattr(sys.modules["__main__"], "exclude_bias_and_norm", exclude_bias_and_norm, raising=False)
        generator = torch.Generator().manual_seed(4)
        parameters = list(official.parameters())
        optimizer = {
            "state": {i: {"mu": torch.randn(p.shape, generator=generator) * 1e-3} for i, p in enumerate(parameters)},
            "param_groups": [{"lr": 0.0, "weight_decay": 1e-6, "momentum": 0.9, "eta": 0.001,
                              "weight_decay_filter": exclude_bias_and_norm,
                              "lars_adaptation_filter": exclude_bias_and_norm,
                              "params": list(range(len(parameters)))}],
        }
        torch.save({"epoch": 1000, "model": official.state_dict(), "optimizer": optimizer}, path)
    elif method == "swav":
        official = randomize_(DataParallelLike(OfficialSwAV()), seed=2)
        torch.save(official.state_dict(), path)  # a flat, DDP-prefixed state dict, no optimizer state
    else:
        official = randomize_(DataParallelLike(OfficialSimSiam(dim=32, pred_dim=8)), seed=3)
        # One official SGD step at lr 0 creates the momentum buffers and leaves the weights as they are.
        sgd = torch.optim.SGD(official.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-4)
        generator = torch.Generator().manual_seed(5)
        for p in official.parameters():
            if p.requires_grad:
                p.grad = torch.randn(p.shape, generator=generator) * 1e-3
        sgd.step()
        sgd.param_groups[0]["lr"] = 0.05
        official.zero_grad(set_to_none=True)
        torch.save({"epoch": 100, "arch": "resnet50", "state_dict": official.state_dict(),
                    "optimizer": sgd.state_dict()}, path)
    return path


def continue_command(method, image_root, release, output_dir, results_dir):
    overrides = [f"data.root={image_root / 'train'}", "data.batch_size=4", "data.limit=8", "data.workers=0",
                 f"model.heads={HEADS[method]}", "train.epochs=2", f"train.init={release}",
                 f"train.output_dir={output_dir}", f"eval.results_dir={results_dir}"]
    if method == "swav":
        overrides.append("loss.params.queue_length=8")  # filled by epoch 0: epoch 1 trains with the queue
    return [sys.executable, "-m", "e2mc", "continue", "--config", str(ROOT / f"configs/imagenet/{method}.yaml"),
            *overrides]


def evaluate_command(checkpoint, image_root, dtd_root, results_dir):
    return [sys.executable, "-m", "e2mc", "evaluate", "--checkpoint", str(checkpoint), "--data-root", str(image_root),
            "--results-dir", str(results_dir), "--label-fractions", "1.0", "--seeds", "0", "--workers", "0",
            "--batch-size", "8", "--protocols", "linear_probe", "finetune", "transfer",
            "--transfer", f"dtd={dtd_root}",
            "eval.probe.epochs=1", "eval.probe.batch_size=4", "eval.finetune.epochs=1", "eval.finetune.batch_size=4"]


def run_ok(command, env):
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("method", ["vicreg", "swav", "simsiam"])
def test_imagenet_config_continues_resumes_exactly_and_evaluates(tmp_path, image_root, dtd_root, method,
                                                                 monkeypatch):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    release = write_release(method, tmp_path, monkeypatch)
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"

    # 1. continued pre-training from the release, uninterrupted
    out = run_ok(continue_command(method, image_root, release, reference, tmp_path / "eval_ref"), env)
    assert f"{method} release" in out and RELEASE_NAMES[method] in out  # read as an official release
    assert "left at initialisation" not in out  # every tensor of the network came from the release
    if method == "vicreg":
        assert "optimizer state for" in out  # with its LARS momentum
    state = checkpoints.load(reference / "checkpoint.pt")
    assert (state["epoch"], state["step"], state["global_step"]) == (2, 0, 4)
    assert state["config"]["data"]["dataset"] == "imagenet" and state["config"]["model"]["backbone"] == "resnet50"
    assert sorted(p.name for p in reference.glob("checkpoint-epoch*.pt")) == [
        "checkpoint-epoch000.pt", "checkpoint-epoch001.pt", "checkpoint-epoch002.pt"]
    steps = [r for r in comparable_records(reference) if r["kind"] == "step"]
    assert [(r["epoch"], r["step"]) for r in steps] == [(0, 1), (1, 1)]
    if method == "swav":
        assert [r["ssl_queue_used"] for r in steps] == [0.0, 1.0]
    # The weights moved away from the release.
    assert not torch.equal(final_weights(reference)["backbone.conv1.weight"],
                           checkpoints.load(reference / "checkpoint-epoch000.pt")["model"]["backbone.conv1.weight"])

    # 2. the same command, stopped by SIGTERM in the middle, then run again: it resumes
    command = continue_command(method, image_root, release, stopped, tmp_path / "eval_stopped")
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_step_line(stopped / "metrics.jsonl", epoch=0, process=process, timeout=600)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGTERM, out
    assert "stopped by SIGTERM" in out
    interrupted = checkpoints.load(stopped / "checkpoint.pt")
    # epoch 0 done; the signal came during its end-of-epoch work (stop before epoch 1) or during the
    # first step of epoch 1 (stop after it): both are safe points, and the resume must be exact from either
    stopped_at = (interrupted["epoch"], interrupted["step"])
    assert stopped_at in {(1, 0), (1, 1)}
    assert json.loads((stopped / "summary.json").read_text())["status"] == "interrupted"
    out = run_ok(command, env)
    assert "resumed from" in out
    assert_same_weights(final_weights(stopped), final_weights(reference))
    assert comparable_records(stopped) == comparable_records(reference)
    assert segment_starts(stopped) == [(0, 0), stopped_at]
    if method == "swav":  # the queue came back with the resume
        torch.testing.assert_close(checkpoints.load(stopped / "checkpoint.pt")["objective_states"][0]["queue"],
                                   checkpoints.load(reference / "checkpoint.pt")["objective_states"][0]["queue"],
                                   rtol=0, atol=0)

    # 3.-5. the default ImageNet linear probe, fine-tuning and transfer, one epoch each
    results_dir = tmp_path / "results"
    out = run_ok(evaluate_command(stopped / "checkpoint.pt", image_root, dtd_root, results_dir), env)
    assert "3 result file(s)" in out
    frame = results.load(results_dir)  # every file follows the schema
    assert sorted(zip(frame["kind"], frame["dataset"])) == [
        ("finetune", "imagenet"), ("linear_probe", "imagenet"), ("transfer", "dtd")]
    assert set(frame["method"]) == {method} and set(frame["arm"]) == {"e2mc"} and set(frame["epoch"]) == {2}
    assert set(frame["label_fraction"]) == {1.0} and set(frame["seed"]) == {0}
    records = {record["kind"]: record for record in map(results.read_result, sorted(results_dir.glob("*.json")))}
    n_train, n_test = len(CLASSES) * TRAIN_PER_CLASS, len(CLASSES) * VAL_PER_CLASS
    for kind in ("linear_probe", "finetune"):
        extra = records[kind]["extra"]
        assert (extra["n_train"], extra["n_test"], extra["num_classes"]) == (n_train, n_test, len(CLASSES))
        assert records[kind]["config"]["method"] == method and records[kind]["checkpoint"].endswith("checkpoint.pt")
    probe = records["linear_probe"]["extra"]
    assert probe["probe_on"] == "images"  # ImageNet's default: the authors' protocol on augmented images
    assert probe["settings"] == replace(PAPER_IMAGE_PROBE, epochs=1, batch_size=4).to_dict()
    assert (probe["settings"]["lr"], probe["settings"]["weight_decay"]) == (0.3, 1e-6)
    tune = records["finetune"]["extra"]
    assert tune["probe_on"] is None and (tune["settings"]["epochs"], tune["settings"]["batch_size"]) == (1, 4)
    assert (tune["settings"]["backbone_lr"], tune["settings"]["head_lr"]) == (0.01, 0.2)  # SwAV's, above 1 %
    transfer = records["transfer"]["extra"]
    assert (transfer["n_train"], transfer["n_test"], transfer["num_classes"]) == (2 * len(TEXTURES), len(TEXTURES),
                                                                                 len(TEXTURES))
    assert transfer["settings"]["epochs"] == 1 and transfer["settings"]["batch_size"] == 4
    if "protocol" in {f.name for f in dataclasses.fields(TransferConfig)}:  # eval.transfer.protocol
        # its default for an ImageNet model: the authors' RegLog on the last feature map, on images
        assert (transfer["protocol_name"], transfer["probe_on"]) == ("reglog", "images")
        assert transfer["settings"] == replace(linear.AUTHORS_TRANSFER_PROBE, epochs=1, batch_size=4).to_dict()
    for record in records.values():
        assert np.isfinite(record["metrics"]["top1_last"])

"""Evaluation: probes against known answers, the protocols, transfer datasets, and the three ways in."""
import hashlib
import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from e2mc.config import LABEL_FRACTIONS
from e2mc import checkpoints, results
from e2mc.config import load_config
from e2mc.data import normalize_fashion_mnist
from e2mc.evaluation import (EvaluationPlan, FinetuneSettings, ProbeSettings, TensorImages, evaluate_checkpoint,
                             evaluate_network,
                             extract_features, fashion_mnist_data, finetune, load_checkpoint, make_epoch_probe_hook,
                             sweep, topk_correct, train_linear_on_images, train_linear_probe, transfer_dataset)
from e2mc.train import train
from fake_data import write_fake_dtd, write_fake_fashion_mnist

ROOT = Path(__file__).resolve().parent.parent
CLASSES = 10


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread for small tensors


# ----------------------------------------------------------------------------- probes on synthetic features

def teacher_data(per_class, dim, margin, generator, teacher):
    """x ~ N(0, I) labelled by argmax(x @ teacher), kept only where the top logit beats the runner-up by
    ``margin``: linearly separable (by the teacher) with a margin, no cluster structure, and exactly
    ``per_class`` samples of each class."""
    xs, ys = [], []
    counts = [0] * CLASSES
    while min(counts) < per_class:
        x = torch.randn(20000, dim, generator=generator)
        logits = x @ teacher
        top2 = logits.topk(2, dim=1).values
        y = logits.argmax(1)
        for c in range(CLASSES):
            take = x[(y == c) & (top2[:, 0] - top2[:, 1] > margin)][:per_class - counts[c]]
            xs.append(take)
            ys.append(torch.full((len(take),), c))
            counts[c] += len(take)
    return torch.cat(xs), torch.cat(ys)


@pytest.fixture(scope="module")
def separable():
    generator = torch.Generator().manual_seed(2024)
    teacher = torch.randn(16, CLASSES, generator=generator)
    train_x, train_y = teacher_data(300, 16, 2.0, generator, teacher)
    test_x, test_y = teacher_data(200, 16, 2.0, generator, teacher)
    return train_x, train_y, test_x, test_y, generator


def test_probe_separates_linearly_separable_features(separable):
    train_x, train_y, test_x, test_y, _ = separable
    result = train_linear_probe(train_x, train_y, test_x, test_y, CLASSES, ProbeSettings(epochs=100), seed=0)
    metrics = result.metrics()
    assert metrics["top1_best"] >= 99.0 and metrics["top1_last"] >= 99.0
    assert metrics["top5_last"] == 100.0
    assert len(result.top1) == 100 and result.train_loss[-1] < result.train_loss[0]


def test_probe_on_shuffled_labels_stays_near_chance(separable):
    """Trained on the same features with the training labels permuted, the classifier is a function of
    data that carry no information about the teacher (x ~ N(0, I) is independent of it, and the permuted
    labels only of their class counts, which are equal). On the balanced test set its expected top-1 is
    therefore 1/10. The test accuracy of a fixed classifier on M = 2000 images has a binomial standard
    deviation of sqrt(0.1 * 0.9 / 2000) = 0.67 points; its chance alignment with the teacher adds a few
    points (about 2 to 4 seen over seeds); top1_best is a maximum over 100 epochs. 20 % is 15 binomial
    standard deviations above chance, while the unshuffled probe reaches >= 99 %."""
    train_x, train_y, test_x, test_y, generator = separable
    shuffled = train_y[torch.randperm(len(train_y), generator=generator)]
    metrics = train_linear_probe(train_x, shuffled, test_x, test_y, CLASSES, ProbeSettings(epochs=100), seed=0).metrics()
    assert metrics["top1_best"] < 20.0 and metrics["top1_last"] < 20.0


def test_weight_decay_is_chosen_without_looking_at_the_test_labels(separable):
    train_x, train_y, test_x, test_y, generator = separable
    settings = ProbeSettings(epochs=10, weight_decays=(1.0, 1e-4))
    right = train_linear_probe(train_x, train_y, test_x, test_y, CLASSES, settings, seed=3)
    wrong = train_linear_probe(train_x, train_y, test_x, (test_y + 1) % CLASSES, CLASSES, settings, seed=3)
    assert right.selection == wrong.selection and set(right.selection) == {"1.0", "0.0001"}
    # a decay of 1.0 shrinks the weights towards 0: worse on the held-out part, so 1e-4 is chosen
    assert right.weight_decay == wrong.weight_decay == 1e-4
    assert right.metrics()["weight_decay"] == 1e-4
    # ... while the reported accuracy is measured against the test labels
    assert right.metrics()["top1_last"] > 90 and wrong.metrics()["top1_last"] < 10


def test_topk_counts_against_a_sort_reference(generator):
    logits, labels = torch.randn(200, 7, generator=generator), torch.randint(0, 7, (200,), generator=generator)
    ranks = (-logits).argsort(dim=1).argsort(dim=1)[torch.arange(200), labels]  # 0 = the label is the argmax
    assert topk_correct(logits, labels, (1, 5)) == [int((ranks < 1).sum()), int((ranks < 5).sum())]
    assert topk_correct(logits[:, :3], labels % 3, (1, 5))[1] == 200  # k capped at the class count


# ----------------------------------------------------------------------------- tiny checkpoints on fake data

def tiny_overrides(data_root, output_dir, epochs):
    return [f"data.root={data_root}", "data.batch_size=64", "model.heads={expander: [64, 64]}", "data.limit=128",
            f"train.epochs={epochs}", f"train.output_dir={output_dir}", "train.channels_last=false"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Fake Fashion-MNIST (200 training images per class), a base checkpoint trained for 0 epochs, and one
    epoch of continued E2MC training from it, probed by the per-epoch hook and keeping epoch checkpoints."""
    tmp = tmp_path_factory.mktemp("evaluate")
    root = write_fake_fashion_mnist(tmp / "fmnist", n_train=2000, n_test=200)
    train(load_config(ROOT / "configs/mini/pretrain/vicreg.yaml", tiny_overrides(root, tmp / "base", 0)))
    base = tmp / "base" / "checkpoint.pt"
    run_overrides = tiny_overrides(root, tmp / "run", 1) + [f"train.init={base}", "train.keep_epoch_checkpoints=true",
                                                            "eval.label_fractions=[0.01, 0.1]", "eval.seeds=[0, 1]"]
    cfg = load_config(ROOT / "configs/mini/vicreg.yaml", run_overrides)
    plan = EvaluationPlan(("linear_probe",), (0.01, 0.1), (0, 1), probe_overrides={"epochs": 20})
    train(cfg, epoch_end_hooks=[make_epoch_probe_hook(cfg, plan)])
    return {"root": root, "base": base, "run": tmp / "run", "plan": plan, "cfg": cfg, "overrides": run_overrides,
            "tmp": tmp}


def test_evaluate_cli_on_a_zero_epoch_checkpoint_writes_valid_results(tiny, tmp_path):
    out = tmp_path / "results"
    command = [sys.executable, "-m", "e2mc", "evaluate", "--checkpoint", str(tiny["base"]),
               "--data-root", str(tiny["root"]), "--label-fractions", "0.01", "0.1", "--seeds", "0", "1",
               "--probe-epochs", "30", "--results-dir", str(out), "--device", "cpu"]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr
    table = results.load(out)
    assert len(table) == 4
    assert set(table["kind"]) == {"linear_probe"} and set(table["method"]) == {"vicreg"}
    assert set(table["arm"]) == {"base"} and set(table["epoch"]) == {0}  # a run from scratch is the base model
    assert sorted(zip(table["label_fraction"], table["seed"])) == [(0.01, 0), (0.01, 1), (0.1, 0), (0.1, 1)]
    assert set(table["config_hash"]) == {load_checkpoint(tiny["base"], device="cpu").context.config_hash}
    # 1 % of 200 images per class = 2 per class, 10 % = 20; the test split is whole
    assert {f: n for f, n in zip(table["label_fraction"], table["extra"].map(lambda e: e["n_train"]))} == \
        {0.01: 20, 0.1: 200}
    assert set(table["extra"].map(lambda e: e["n_test"])) == {200}
    assert (table["top1_best"] >= table["top1_last"]).all() and (table["top5_best"] >= table["top1_best"]).all()
    # the fake classes are easy: even random convolutional features separate them well above 10 % chance
    assert (table.loc[table["label_fraction"] == 0.1, "top1_best"] > 50).all()
    assert set(table["extra"].map(lambda e: e["pretrain_epochs"])) == {0}


def test_continue_command_probes_every_epoch_when_asked(tiny, tmp_path):
    from e2mc.__main__ import main

    overrides = [o for o in tiny["overrides"] if not o.startswith(("train.output_dir=", "eval."))]
    code = main(["continue", "--config", str(ROOT / "configs/mini/vicreg.yaml"), *overrides,
                 f"train.output_dir={tmp_path / 'run'}", "eval.every_epoch=true", f"eval.results_dir={tmp_path / 'eval'}"])
    assert code == 0
    table = results.load(tmp_path / "eval")  # the defaults: every label fraction, seed 0, epochs 0 and 1
    assert sorted(zip(table["epoch"], table["label_fraction"], table["seed"])) == \
        [(e, f, 0) for e in (0, 1) for f in LABEL_FRACTIONS]
    assert set(table["extra"].map(lambda e: e["settings"]["epochs"])) == {100}


def test_label_subsets_are_balanced_and_reproducible(tiny):
    evaluation = fashion_mnist_data(tiny["root"])
    one_percent = evaluation.subset(0.01, seed=4)
    assert Counter(evaluation.train.labels[one_percent].tolist()) == {c: 2 for c in range(CLASSES)}
    assert torch.equal(one_percent, evaluation.subset(0.01, seed=4))
    assert not torch.equal(one_percent, evaluation.subset(0.01, seed=5))


def test_hook_inside_training_equals_sweep_over_saved_epochs(tiny, tmp_path):
    hook_table = results.load(tiny["run"] / "eval")
    assert sorted(set(hook_table["epoch"])) == [0, 1] and len(hook_table) == 8
    assert set(hook_table["arm"]) == {"e2mc"}
    sweep(tiny["run"], tmp_path, tiny["plan"], device="cpu")
    sweep_table = results.load(tmp_path)
    key = ["epoch", "label_fraction", "seed"]
    hook_table, sweep_table = hook_table.sort_values(key), sweep_table.sort_values(key)
    assert list(hook_table["file"]) == list(sweep_table["file"])  # same names: same evaluations
    for metric in ("top1_best", "top1_last", "top5_best", "best_epoch"):
        assert list(hook_table[metric]) == list(sweep_table[metric]), metric
    assert list(sweep_table["checkpoint"]) == [str(tiny["run"] / f"checkpoint-epoch{e:03d}.pt")
                                               for e in sweep_table["epoch"]]
    # a second sweep finds every result on disk and runs nothing
    before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    sweep(tiny["run"], tmp_path, tiny["plan"], device="cpu")
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_hook_does_not_change_training(tiny):
    """The hook restores the RNG state, so the run trains exactly as it would without it."""
    plain = tiny["tmp"] / "plain"
    overrides = [o if not o.startswith("train.output_dir=") else f"train.output_dir={plain}" for o in tiny["overrides"]]
    train(load_config(ROOT / "configs/mini/vicreg.yaml", overrides))
    with_hook = checkpoints.load(tiny["run"] / "checkpoint.pt")["model"]
    without = checkpoints.load(plain / "checkpoint.pt")["model"]
    for name in with_hook:
        torch.testing.assert_close(with_hook[name], without[name], rtol=0, atol=0, msg=name)


def test_image_protocol_without_augmentation_equals_the_cached_feature_probe(tiny):
    """Frozen backbone, identity 'augmentation' and no standardisation: the per-epoch image pass must
    give the classifier the cached path trains (same initialisation, batch order and features)."""
    network = load_checkpoint(tiny["base"], device="cpu").network
    evaluation = fashion_mnist_data(tiny["root"])
    plain = TensorImages(evaluation.train.images, evaluation.train.labels,
                         augment=lambda images, generator: normalize_fashion_mnist(images))
    indices = evaluation.subset(0.1, 0)
    settings = ProbeSettings(epochs=4, lr=0.5, batch_size=64, standardize=False)
    on_images = train_linear_on_images(network, plain, indices, evaluation.test, None, CLASSES, settings, seed=7)
    train_x, train_y = extract_features(network, plain, indices)
    test_x, test_y = extract_features(network, evaluation.test)
    cached = train_linear_probe(train_x, train_y, test_x, test_y, CLASSES, settings, seed=7)
    np.testing.assert_allclose(on_images.train_loss, cached.train_loss, rtol=1e-4)
    assert on_images.top1 == cached.top1
    assert all(p.grad is None for p in network.parameters())  # frozen: no gradient reached the backbone


def test_finetune_trains_a_copy_for_a_few_steps(tiny):
    network = load_checkpoint(tiny["base"], device="cpu").network
    before = {k: v.clone() for k, v in network.state_dict().items()}
    evaluation = fashion_mnist_data(tiny["root"])
    settings = FinetuneSettings(epochs=3, batch_size=32, backbone_lr=0.01, head_lr=0.2, max_steps=2)
    result = finetune(network, evaluation.train, evaluation.subset(0.1, 0), evaluation.test, None, CLASSES,
                      settings, seed=0)
    assert len(result.top1) == 1 and 0 <= result.top1[0] <= result.top5[0] <= 100  # stopped after 2 steps
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())  # the original is untouched
    assert [FinetuneSettings(schedule="step").lr_factor(e) for e in (0, 11, 12, 15, 16, 19)] == \
        pytest.approx([1, 1, 0.2, 0.2, 0.04, 0.04])


def test_finetune_protocol_writes_results(tiny, tmp_path):
    loaded = load_checkpoint(tiny["base"], device="cpu")
    plan = EvaluationPlan(("finetune",), (0.1,), (0,), finetune_overrides={"epochs": 1, "max_steps": 2})
    (path,) = evaluate_network(loaded.network, loaded.context, fashion_mnist_data(tiny["root"]), plan, tmp_path,
                               log=None)
    record = results.read_result(path)
    assert record["kind"] == "finetune" and record["extra"]["settings"]["backbone_lr"] == 0.01  # SwAV's 10 %
    assert record["extra"]["settings"]["head_lr"] == 0.2 and record["extra"]["n_train"] == 200


# ----------------------------------------------------------------------------- transfer datasets

def write_cifar10(root, per_class_train=3, per_class_test=2, seed=0):
    """CIFAR-10's python format: cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta (pickled
    dicts; images as uint8 rows of 3072 = 3 x 32 x 32, channel-major). Returns the arrays written and
    the md5 of every file, which torchvision checks."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"class{c}" for c in range(CLASSES)]

    def batch(n_per_class):
        labels = np.repeat(np.arange(CLASSES), n_per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        return images, labels

    written = {"train": [], "test": []}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images, labels = batch(per_class_train if name != "test_batch" else per_class_test)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels.tolist(), "data": images,
                         "filenames": [f"{i}.png" for i in range(len(labels))]}, f)
        written["test" if name == "test_batch" else "train"].append((images, labels))
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": 30, "num_vis": 3072}, f)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    return written, md5


@pytest.fixture
def cifar10(tmp_path, monkeypatch):
    """A tiny CIFAR-10 copy, with torchvision's expected checksums set to those of the files written
    (the real ones belong to the real files): its integrity check still runs on every file."""
    written, md5 = write_cifar10(tmp_path / "cifar")
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5["batches.meta"]})
    return tmp_path / "cifar", written


def test_cifar10_on_disk_format_reads_back(cifar10):
    root, written = cifar10
    train_set = transfer_dataset("cifar10", root, "train")
    test_set = transfer_dataset("cifar10", root, "test")
    assert len(train_set) == 5 * 30 and len(test_set) == 20
    images, labels = written["train"][1]
    image, label = train_set[30 + 4]  # fifth image of data_batch_2
    np.testing.assert_array_equal(np.asarray(image), images[4].reshape(3, 32, 32).transpose(1, 2, 0))
    assert label == labels[4]
    assert train_set.classes[3] == "class3"


def test_corrupt_or_missing_transfer_data_names_the_layout(cifar10, tmp_path):
    root, _ = cifar10
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-1] + b"x")  # one byte changed: the md5 check fails
    with pytest.raises(FileNotFoundError, match=r"cifar10 \(train\) not found or corrupted .*cifar-10-batches-py/"
                                                r"\{data_batch_1, .*batches.meta\}"):
        transfer_dataset("cifar10", root, "train")
    with pytest.raises(FileNotFoundError, match=r"dtd: folder .* does not exist; expected layout: root/dtd/dtd/"):
        transfer_dataset("dtd", tmp_path / "nothing", "train")
    with pytest.raises(ValueError, match="unknown transfer dataset 'cifar11'; choose one of cifar10, cifar100"):
        transfer_dataset("cifar11", root, "train")


def test_dtd_image_folder_layout(tmp_path):
    write_fake_dtd(tmp_path, ("banded", "dotted", "zigzagged"))
    train_set = transfer_dataset("dtd", tmp_path, "train")
    assert len(train_set) == 6 and sorted(train_set.classes) == ["banded", "dotted", "zigzagged"]
    image, label = train_set[2]
    assert image.size == (50, 40) and train_set.classes[label] == "dotted"


def test_transfer_protocol_on_cifar10(cifar10, tiny, tmp_path):
    root, written = cifar10
    loaded = load_checkpoint(tiny["base"], device="cpu")
    plan = EvaluationPlan(("transfer",), (1.0,), (0,), probe_overrides={"epochs": 5}, transfer=(("cifar10", root),))
    (path,) = evaluate_network(loaded.network, loaded.context, None, plan, tmp_path, workers=0, log=None)
    record = results.read_result(path)
    assert (record["kind"], record["dataset"]) == ("transfer", "cifar10")
    assert (record["extra"]["n_train"], record["extra"]["n_test"], record["extra"]["num_classes"]) == (150, 20, 10)
    assert path.name.startswith("transfer_vicreg_base_cifar10-pooled_e000_f100pct_s0_")  # a mini model: pooled


# ----------------------------------------------------------------------------- errors

def test_foreign_checkpoint_needs_a_method(tmp_path, tiny):
    path = tmp_path / "release.pth"
    torch.save({"state_dict": {"module.encoder.conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="give --method vicreg|swav|simsiam"):
        load_checkpoint(path, device="cpu")
    with pytest.raises(ValueError, match="holds a vicreg network, not swav"):
        load_checkpoint(tiny["base"], method="swav", device="cpu")
    with pytest.raises(FileNotFoundError, match="train.keep_epoch_checkpoints=true"):
        sweep(tiny["tmp"] / "base", tmp_path)
    with pytest.raises(ValueError, match="transfer protocol needs at least one dataset"):
        EvaluationPlan(("transfer",))
    with pytest.raises(ValueError, match="takes 1-channel images but imagenet has 3"):
        evaluate_checkpoint(tiny["base"], tmp_path, dataset="imagenet", data_root=tmp_path, device="cpu")

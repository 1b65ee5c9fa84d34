"""Honest probe selection: a class-balanced validation split of the labelled set picks the probe's epoch.

Every assertion compares against something computed independently of the code under test: class
counts by hand, the test accuracy looked up in the history at a numpy argmax, a probe trained
directly on the complement of the validation rows, or the same probe with scrambled test labels.
"""
import numpy as np
import pytest
import torch
from torch import nn

from e2mc.evaluation import ProbeResult, ProbeSettings, TensorImages, train_linear_on_images, train_linear_probe
from e2mc.evaluation.linear import holdout_split, validation_seed

CLASSES = 10


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread for small tensors


def noisy_teacher(counts, dim, generator, teacher, noise=1.5):
    """Features labelled by a linear teacher, with Gaussian noise added afterwards so that the classes
    overlap (accuracy below 100 %, so that the per-epoch curves move). ``counts[c]`` samples of class c."""
    xs, ys = [], []
    for c, n in enumerate(counts):
        taken = 0
        while taken < n:
            x = torch.randn(4000, dim, generator=generator)
            x = x[(x @ teacher).argmax(1) == c][:n - taken]
            xs.append(x + noise * torch.randn(x.shape, generator=generator))
            ys.append(torch.full((len(x),), c))
            taken += len(x)
    return torch.cat(xs), torch.cat(ys)


@pytest.fixture(scope="module")
def features():
    """A 1 % Fashion-MNIST-sized labelled set (60 per class, 600 in all) and a test set of 1000."""
    generator = torch.Generator().manual_seed(15)
    teacher = torch.randn(12, CLASSES, generator=generator)
    train_x, train_y = noisy_teacher([60] * CLASSES, 12, generator, teacher)
    test_x, test_y = noisy_teacher([100] * CLASSES, 12, generator, teacher)
    order = torch.randperm(len(train_y), generator=generator)  # classes interleaved, as a real subset
    return train_x[order], train_y[order], test_x, test_y


SETTINGS = ProbeSettings(epochs=25, lr=0.05, batch_size=64, val_fraction=0.1)


@pytest.fixture(scope="module")
def probe(features):
    train_x, train_y, test_x, test_y = features
    return train_linear_probe(train_x, train_y, test_x, test_y, CLASSES, SETTINGS, seed=4)


def test_validation_rows_are_disjoint_from_training_rows_and_cover_the_labelled_set(features, probe):
    train_x, train_y, test_x, _ = features
    val, fit = probe.validation_indices.tolist(), probe.training_indices.tolist()
    assert len(val) == 60 and len(fit) == 540
    assert not set(val) & set(fit)
    assert sorted(val + fit) == list(range(len(train_y)))
    # the validation rows are labelled training rows, none of them a test image
    test_rows = {tuple(row) for row in test_x.tolist()}
    assert not any(tuple(train_x[i].tolist()) in test_rows for i in val)
    assert probe.history()["n_val"] == 60


def test_validation_split_is_class_balanced(features, probe):
    _, train_y, _, _ = features
    per_class = torch.bincount(train_y[probe.validation_indices], minlength=CLASSES)
    assert per_class.tolist() == [6] * CLASSES  # 10 % of 60
    # an unbalanced labelled set: each class holds out its own share, within one image
    counts = [7, 13, 25, 40, 2, 3, 60, 11, 19, 5]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    kept, held = holdout_split(labels, 0.2, seed=3)
    for c, n in enumerate(counts):
        n_held = int((labels[held] == c).sum())
        assert abs(n_held - 0.2 * n) <= 1 and 1 <= n_held < n, (c, n, n_held)
        assert int((labels[kept] == c).sum()) == n - n_held


def test_validation_split_is_seeded(features, probe):
    train_x, train_y, test_x, test_y = features
    settings = ProbeSettings(epochs=1, val_fraction=0.1)
    again = train_linear_probe(train_x, train_y, test_x, test_y, CLASSES, settings, seed=4)
    other = train_linear_probe(train_x, train_y, test_x, test_y, CLASSES, settings, seed=5)
    assert torch.equal(again.validation_indices, probe.validation_indices)
    assert not torch.equal(other.validation_indices, probe.validation_indices)
    assert validation_seed(4) == validation_seed(4) != validation_seed(5)


def test_probe_trains_only_on_the_rows_outside_the_validation_split(features, probe):
    """The same probe trained directly on the complement rows (no validation split) follows exactly the
    same test curve: the validation rows took part neither in training nor in the standardisation."""
    train_x, train_y, test_x, test_y = features
    fit = probe.training_indices
    direct = train_linear_probe(train_x[fit], train_y[fit], test_x, test_y, CLASSES,
                                ProbeSettings(epochs=25, lr=0.05, batch_size=64), seed=4)
    assert direct.top1 == probe.top1 and direct.train_loss == probe.train_loss


def test_val_selected_top1_is_the_test_accuracy_at_the_best_validation_epoch(probe):
    history, metrics = probe.history(), probe.metrics()
    val = np.asarray(history["val_top1_per_epoch"])
    assert len(val) == SETTINGS.epochs
    chosen = int(np.flatnonzero(val == val.max())[0])  # the earliest epoch of best validation top-1
    assert metrics["val_selected_epoch"] == chosen + 1
    assert metrics["top1_val_selected"] == history["top1_per_epoch"][chosen]
    assert metrics["top5_val_selected"] == history["top5_per_epoch"][chosen]
    # the reference protocol's numbers are unchanged: top1 is still the best test epoch
    assert metrics["top1"] == metrics["top1_best"] == max(history["top1_per_epoch"])
    assert metrics["top1_val_selected"] <= metrics["top1_best"]


def test_validation_curve_and_choice_ignore_the_test_labels(features, probe):
    train_x, train_y, test_x, test_y = features
    scrambled = train_linear_probe(train_x, train_y, test_x, (test_y + 3) % CLASSES, CLASSES, SETTINGS, seed=4)
    assert scrambled.val_top1 == probe.val_top1
    assert scrambled.metrics()["val_selected_epoch"] == probe.metrics()["val_selected_epoch"]
    assert scrambled.top1 != probe.top1  # while the test curve is measured against the test labels


def test_ties_in_validation_accuracy_pick_the_earliest_epoch():
    result = ProbeResult(top1=[10.0, 20.0, 30.0, 40.0], top5=[50.0, 60.0, 70.0, 80.0], train_loss=[1.0] * 4,
                         weight_decay=0.0, val_top1=[5.0, 9.0, 7.0, 9.0])
    metrics = result.metrics()
    assert metrics["val_selected_epoch"] == 2 and metrics["top1_val_selected"] == 20.0
    assert metrics["top5_val_selected"] == 60.0 and metrics["best_epoch"] == 4


def test_without_a_validation_split_the_probe_is_unchanged(features):
    train_x, train_y, test_x, test_y = features
    default = train_linear_probe(train_x, train_y, test_x, test_y, CLASSES, ProbeSettings(epochs=3), seed=2)
    zero = train_linear_probe(train_x, train_y, test_x, test_y, CLASSES, ProbeSettings(epochs=3, val_fraction=0),
                              seed=2)
    assert ProbeSettings().val_fraction == 0.0
    assert default.top1 == zero.top1 and default.metrics() == zero.metrics()
    assert set(default.metrics()) == {"top1", "top5", "top1_best", "top5_best", "top1_last", "top5_last",
                                      "best_epoch", "weight_decay"}
    assert set(default.history()) == {"top1_per_epoch", "top5_per_epoch", "train_loss_per_epoch",
                                      "weight_decay_selection"}
    assert default.validation_indices is None and default.training_indices is None


def test_validation_with_a_weight_decay_grid_chooses_on_the_training_rows_only(features):
    train_x, train_y, test_x, test_y = features
    settings = ProbeSettings(epochs=5, lr=0.05, batch_size=64, val_fraction=0.1, weight_decays=(1.0, 1e-4))
    result = train_linear_probe(train_x, train_y, test_x, test_y, CLASSES, settings, seed=4)
    fit = result.training_indices
    direct = train_linear_probe(train_x[fit], train_y[fit], test_x, test_y, CLASSES,
                                ProbeSettings(epochs=5, lr=0.05, batch_size=64, weight_decays=(1.0, 1e-4)), seed=4)
    assert result.selection == direct.selection and result.top1 == direct.top1
    assert len(result.val_top1) == 5


def test_a_class_too_small_to_split_is_a_clear_error(features):
    train_x, train_y, test_x, test_y = features
    one_of_class_9 = torch.cat([torch.nonzero(train_y != 9).flatten(), torch.nonzero(train_y == 9).flatten()[:1]])
    with pytest.raises(ValueError, match=r"class\(es\) \[9\] have \[1\] image"):
        train_linear_probe(train_x[one_of_class_9], train_y[one_of_class_9], test_x, test_y, CLASSES,
                           ProbeSettings(epochs=1, val_fraction=0.1), seed=0)
    # two images per class and a fraction that would hold out both of them
    labels = torch.arange(CLASSES).repeat(2)
    with pytest.raises(ValueError, match="at least one image of each class on each side"):
        holdout_split(labels, 0.8, seed=0)
    kept, held = holdout_split(labels, 0.1, seed=0)  # one of each class on each side: fine
    assert torch.bincount(labels[kept]).tolist() == torch.bincount(labels[held]).tolist() == [1] * CLASSES


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_val_fraction_must_lie_in_the_unit_interval(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        ProbeSettings(val_fraction=fraction)


def test_image_protocol_holds_out_the_same_validation_split():
    """Identity augmentation, no standardisation: the image path splits the labelled indices as the
    cached path splits its rows, never trains on the validation images, and gives the same curves."""
    generator = torch.Generator().manual_seed(7)
    labels = torch.arange(CLASSES).repeat(20)
    prototypes = torch.randint(0, 256, (CLASSES, 6, 6), generator=generator)
    images = (prototypes[labels] + torch.randint(-60, 60, (len(labels), 6, 6), generator=generator)).clamp(0, 255)
    source = TensorImages(images.to(torch.uint8), labels, normalize=lambda x: x.float() / 255,
                          augment=lambda x, generator: x.float() / 255)
    test_labels = torch.arange(CLASSES).repeat(5)
    test_images = (prototypes[test_labels] + torch.randint(-60, 60, (len(test_labels), 6, 6), generator=generator))
    test = TensorImages(test_images.clamp(0, 255).to(torch.uint8), test_labels, normalize=lambda x: x.float() / 255)
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(36, 16))
    train_indices = torch.arange(50, 150)  # 10 of each class
    settings = ProbeSettings(epochs=6, lr=0.2, batch_size=16, standardize=False, val_fraction=0.2)
    on_images = train_linear_on_images(network, source, train_indices, test, None, CLASSES, settings, seed=3)

    val, fit = set(on_images.validation_indices.tolist()), set(on_images.training_indices.tolist())
    assert not val & fit and val | fit == set(train_indices.tolist())
    assert torch.bincount(labels[on_images.validation_indices]).tolist() == [2] * CLASSES

    with torch.no_grad():
        train_x, test_x = network(images[train_indices].float() / 255), network(test_images.clamp(0, 255).float() / 255)
    cached = train_linear_probe(train_x, labels[train_indices], test_x, test_labels, CLASSES, settings, seed=3)
    assert torch.equal(train_indices[cached.validation_indices], on_images.validation_indices)
    np.testing.assert_allclose(on_images.val_top1, cached.val_top1)
    np.testing.assert_allclose(on_images.top1, cached.top1)
    assert on_images.metrics()["val_selected_epoch"] == cached.metrics()["val_selected_epoch"]
    assert "top1_val_selected" in on_images.metrics()

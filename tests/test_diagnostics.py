"""Embedding diagnostics on inputs with known answers, and `diagnose` on a tiny checkpoint."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from e2mc import results
from e2mc.config import load_config
from e2mc.criterion import to_compact
from e2mc.diagnostics import (dimension_pairs, marginal_entropies, pair_coordinates, rankme,
                              transformed_statistics)
from e2mc.evaluation import diagnose_checkpoint, fashion_mnist_data, load_checkpoint
from e2mc.train import train
from fake_data import write_fake_fashion_mnist

ROOT = Path(__file__).resolve().parent.parent
N = 8192  # samples per dimension; the m-spacings bias at this N is about -0.01 nats


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread for small tensors


def logistic_noise(n, d, generator):
    """Samples whose sigmoid is uniform: the logistic distribution is the inverse sigmoid of U(0, 1)."""
    u = torch.rand(n, d, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return torch.log(u) - torch.log1p(-u)


def test_uniform_after_the_transform_has_entropy_near_zero(generator):
    # sigmoid(logistic) and Phi(standard normal) are U(0, 1): differential entropy exactly 0 nats.
    sigmoid_entropy = marginal_entropies(logistic_noise(N, 4, generator), "sigmoid")
    cdf_entropy = marginal_entropies(torch.randn(N, 4, generator=generator), "gaussian_cdf")
    for entropy in (sigmoid_entropy, cdf_entropy):
        assert entropy.shape == (4,)
        assert torch.all(entropy > -0.03) and torch.all(entropy <= 0.01)


@pytest.mark.parametrize("sigma", [0.5, 0.75])
def test_gaussian_under_the_normal_cdf_matches_the_closed_form(generator, sigma):
    # h(Phi(Z)) = h(Z) + E[log phi(Z)] = 0.5 log(2 pi e s^2) - 0.5 log(2 pi) - s^2 / 2 for Z ~ N(0, s^2):
    # -0.318 nats for s = 0.5, -0.069 for s = 0.75. The m-spacings estimate is biased low by about
    # 0.02 to 0.03 nats at N = 8192 for these densities, hence the tolerance.
    expected = math.log(sigma) + 0.5 - sigma ** 2 / 2
    entropy = marginal_entropies(sigma * torch.randn(N, 8, generator=generator, dtype=torch.float64), "gaussian_cdf")
    assert entropy.mean().item() == pytest.approx(expected, abs=0.05)
    assert torch.all(entropy < 0)  # below the uniform's 0 nats


def test_x_distribution_has_zero_covariance_and_a_diagonal_does_not(generator):
    # "X": u2 = u1 or 1 - u1 with probability 1/2 each; uniform marginals, Cov(u1, u2) = 0.
    u1 = torch.rand(N, generator=generator, dtype=torch.float64).clamp(1e-9, 1 - 1e-9)
    flip = torch.rand(N, generator=generator) < 0.5
    x_shape = torch.stack([u1, torch.where(flip, 1 - u1, u1)], dim=1)
    diagonal = torch.stack([u1, u1], dim=1)
    logit = lambda u: torch.log(u) - torch.log1p(-u)  # noqa: E731 -- so that the sigmoid gives u back
    x_stats = transformed_statistics(logit(x_shape), ("sigmoid",))["sigmoid"]
    diagonal_stats = transformed_statistics(logit(diagonal), ("sigmoid",))["sigmoid"]
    # sum_{i != j} C_ij^2 / D with D = 2: 0 for the X, Var(U)^2 = (1/12)^2 for the diagonal.
    assert x_stats["covariance_penalty"] < 1e-4
    assert diagonal_stats["covariance_penalty"] == pytest.approx(1 / 144, rel=0.05)
    assert min(x_stats["per_dimension_entropy"]) > -0.03  # and both marginals are uniform


def test_rankme_closed_form_and_numpy_reference(generator):
    # singular values 3 and 1: p = (3/4, 1/4), RankMe = exp(-(3/4 log 3/4 + 1/4 log 1/4)).
    z = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    assert rankme(z, eps=0.0) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    z = torch.randn(50, 20, generator=generator) @ torch.randn(20, 20, generator=generator)
    s = np.linalg.svd(z.numpy().astype(np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    assert rankme(z) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-6)


def test_rankme_of_isotropic_and_low_rank_data(generator):
    d, k = 32, 5
    isotropic = torch.randn(20 * 1024, d, generator=generator)
    assert 0.99 * d < rankme(isotropic) <= d
    basis = torch.linalg.qr(torch.randn(d, k, generator=generator, dtype=torch.float64)).Q.T  # (k, d) orthonormal
    low_rank = torch.randn(20 * 1024, k, generator=generator, dtype=torch.float64) @ basis
    assert 0.99 * k < rankme(low_rank) < k + 0.01


def test_dimension_pairs_are_distinct_reproducible_and_in_range():
    pairs = dimension_pairs(10, 45, seed=3)  # every pair of 10 dimensions
    assert sorted(pairs) == [(i, j) for i in range(10) for j in range(i + 1, 10)]
    assert dimension_pairs(64, 8, seed=1) == dimension_pairs(64, 8, seed=1) != dimension_pairs(64, 8, seed=2)
    with pytest.raises(ValueError, match="n_pairs must lie in"):
        dimension_pairs(3, 4, seed=0)


def test_pair_coordinates_are_the_transformed_columns(generator):
    z = torch.randn(7, 5, generator=generator)
    coordinates = pair_coordinates(z, [(0, 3), (4, 1)], "gaussian_cdf")
    u = to_compact(z, "gaussian_cdf")
    torch.testing.assert_close(torch.tensor(coordinates[1]), u[:, [4, 1]])


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A base checkpoint (0 epochs) and one epoch of continued training from it, on fake data."""
    tmp = tmp_path_factory.mktemp("diag")
    root = write_fake_fashion_mnist(tmp / "fmnist", n_train=256, n_test=300)
    common = [f"data.root={root}", "data.batch_size=64", "model.heads={expander: [64, 64]}", "data.limit=128"]
    train(load_config(ROOT / "configs/mini/pretrain/vicreg.yaml",
                      common + ["train.epochs=0", f"train.output_dir={tmp / 'base'}"]))
    train(load_config(ROOT / "configs/mini/vicreg.yaml",
                      common + ["train.epochs=1", f"train.output_dir={tmp / 'run'}",
                                f"train.init={tmp / 'base' / 'checkpoint.pt'}"]))
    return root, tmp / "base" / "checkpoint.pt", tmp / "run" / "checkpoint.pt"


def test_diagnose_measures_the_same_points_before_and_after(tmp_path, tiny_runs):
    root, base, run = tiny_runs
    before = results.read_result(diagnose_checkpoint(base, tmp_path, n_images=200, n_pairs=3, seed=5, device="cpu"))
    after = results.read_result(diagnose_checkpoint(run, tmp_path, n_images=200, n_pairs=3, seed=5, device="cpu"))
    assert before["kind"] == "diagnostics" and (before["arm"], before["epoch"]) == ("base", 0)
    assert (after["arm"], after["epoch"]) == ("e2mc", 1)
    assert before["extra"]["image_indices"] == after["extra"]["image_indices"]
    assert before["extra"]["dimension_pairs"] == after["extra"]["dimension_pairs"]
    assert len(set(before["extra"]["image_indices"])) == 200

    # The stored coordinates are the sigmoid of the network's embeddings of exactly those test images.
    network = load_checkpoint(run, device="cpu").network
    images, labels = fashion_mnist_data(root).test.images, fashion_mnist_data(root).test.labels
    chosen = torch.tensor(after["extra"]["image_indices"])
    from e2mc.data import normalize_fashion_mnist
    with torch.no_grad():
        z = network(normalize_fashion_mnist(images[chosen]))["embedding"]
    i, j = after["extra"]["dimension_pairs"][2]
    torch.testing.assert_close(torch.tensor(after["extra"]["coordinates"]["sigmoid"][2]),
                               torch.sigmoid(z[:, [i, j]]), rtol=0, atol=1e-5)
    assert after["extra"]["labels"] == labels[chosen].tolist()
    assert after["metrics"]["rankme_embedding"] == pytest.approx(rankme(z), rel=1e-4)
    assert after["metrics"]["marginal_entropy"] == after["metrics"]["marginal_entropy_sigmoid"]  # VICReg's transform
    assert len(after["extra"]["per_dimension_entropy"]["gaussian_cdf"]) == 64
    assert 1 <= after["metrics"]["rankme_features"] <= 128


def test_diagnose_cli_writes_a_valid_result(tmp_path, tiny_runs):
    from e2mc.__main__ import main

    _, base, _ = tiny_runs
    assert main(["diagnose", "--checkpoint", str(base), "--results-dir", str(tmp_path), "--n-images", "64",
                 "--n-pairs", "2", "--device", "cpu"]) == 0
    (path,) = tmp_path.iterdir()
    assert results.validate(json.loads(path.read_text())) == []
    assert main(["diagnose", "--checkpoint", str(base), "--results-dir", str(tmp_path), "--n-images", "100000",
                 "--device", "cpu"]) == 2  # more images than the test split: a clear error, not a crash

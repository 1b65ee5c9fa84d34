"""Single-process tests of e2mc.objectives against references written independently here
(numpy loops, scipy, closed-form values). The two-process checks are in
tests/test_objectives_distributed.py."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import logsumexp
from torch import nn

from e2mc.objectives import (MMCR, SimSiamLoss, SwAVLoss, Uniformity, VarianceCovariance,
                             VICRegLoss, normalize_prototypes_, sinkhorn)

ALTERNATIVES = {"uniformity": Uniformity, "mmcr": MMCR, "vc": VarianceCovariance}


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def unit_rows(*shape, seed=0):
    return F.normalize(randn(*shape, seed=seed), dim=1)


# ---------------------------------------------------------------- numpy references

def covariance_matrix_loops(x):
    """Unbiased covariance of the columns of x (N, D), entry by entry."""
    n, d = x.shape
    means = [sum(x[k, i] for k in range(n)) / n for i in range(d)]
    return np.array([[sum((x[k, i] - means[i]) * (x[k, j] - means[j]) for k in range(n)) / (n - 1)
                      for j in range(d)] for i in range(d)])


def vicreg_terms_reference(a, b, target=1.0):
    """(invariance, variance, covariance) of VICReg by explicit loops over dimensions."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n, d = a.shape
    invariance = sum((a[k, i] - b[k, i]) ** 2 for k in range(n) for i in range(d)) / (n * d)
    variance, covariance = 0.0, 0.0
    for x in (a, b):
        cov = covariance_matrix_loops(x)
        variance += sum(max(0.0, target - math.sqrt(cov[i, i] + 1e-4)) for i in range(d)) / d / 2
        covariance += sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d
    return invariance, variance, covariance


def sinkhorn_reference(scores, epsilon, iterations):
    """SwAV's Sinkhorn in the log domain, samples on rows: (B, K) -> codes (B, K)."""
    log_plan = np.asarray(scores, np.float64) / epsilon
    n_samples, n_prototypes = log_plan.shape
    log_plan -= logsumexp(log_plan)
    for _ in range(iterations):
        log_plan -= logsumexp(log_plan, axis=0, keepdims=True) + math.log(n_prototypes)
        log_plan -= logsumexp(log_plan, axis=1, keepdims=True) + math.log(n_samples)
    return np.exp(log_plan) * n_samples


def swav_reference(crops, prototypes, temperature=0.1, epsilon=0.05, iterations=3,
                   crops_for_assign=(0, 1), queues=None):
    """Swapped prediction by loops over samples; ``queues[i]`` are past embeddings of assignment crop i."""
    crops = [np.asarray(c, np.float64) for c in crops]
    prototypes = np.asarray(prototypes, np.float64)
    batch = crops[0].shape[0]
    scores = [c @ prototypes.T for c in crops]
    total = 0.0
    for i, crop_id in enumerate(crops_for_assign):
        assign_scores = scores[crop_id]
        if queues is not None:
            assign_scores = np.concatenate([np.asarray(queues[i], np.float64) @ prototypes.T, assign_scores])
        codes = sinkhorn_reference(assign_scores, epsilon, iterations)[-batch:]
        cross_entropy = 0.0
        for other in range(len(crops)):
            if other == crop_id:
                continue
            for n in range(batch):
                logits = scores[other][n] / temperature
                log_probabilities = logits - math.log(sum(math.exp(v) for v in logits))
                cross_entropy -= float(np.dot(codes[n], log_probabilities)) / batch
        total += cross_entropy / (len(crops) - 1)
    return total / len(crops_for_assign)


# ---------------------------------------------------------------- VICReg

def test_vicreg_terms_match_loop_reference():
    z1, z2 = randn(9, 5, seed=1) * 0.7, randn(9, 5, seed=2) * 1.5  # one view under, one over the hinge
    loss = VICRegLoss(sim_coeff=2.0, std_coeff=3.0, cov_coeff=5.0)
    out = loss(z1, z2)
    invariance, variance, covariance = vicreg_terms_reference(z1.numpy(), z2.numpy())
    assert out["invariance"].item() == pytest.approx(invariance, rel=1e-5)
    assert out["variance"].item() == pytest.approx(variance, rel=1e-5)
    assert out["covariance"].item() == pytest.approx(covariance, rel=1e-5)
    assert out["loss"].item() == pytest.approx(2 * invariance + 3 * variance + 5 * covariance, rel=1e-5)


def test_vicreg_variance_hinge_closed_form():
    # column d takes the values +-s_d in equal numbers: unbiased variance s_d^2 * N / (N - 1)
    n = 6
    signs = torch.tensor([1.0, -1.0] * (n // 2))[:, None]
    scales = torch.tensor([0.5, 2.0])
    z = signs * scales
    std = torch.sqrt(scales ** 2 * n / (n - 1) + 1e-4)
    expected = torch.relu(1 - std).mean()  # only the 0.5 column is below the hinge
    out = VICRegLoss()(z, z)
    assert out["variance"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["invariance"].item() == 0.0
    # the two columns are multiples of one sign vector: C_01 = 0.5 * 2 * N / (N - 1) per view
    c01 = 0.5 * 2 * n / (n - 1)
    assert out["covariance"].item() == pytest.approx(2 * (2 * c01 ** 2 / 2), rel=1e-6)


def test_vicreg_rejects_mismatched_views():
    with pytest.raises(ValueError, match="same shape"):
        VICRegLoss()(randn(4, 3), randn(5, 3))
    with pytest.raises(ValueError, match="2-D"):
        VICRegLoss()(randn(4), randn(4))


# ---------------------------------------------------------------- every loss in float32

def _all_losses(dtype):
    """Each loss on small inputs stored in ``dtype`` (a model under autocast emits bfloat16/half).

    The values are rounded to bfloat16 first, so they are the same for every ``dtype``."""
    def rounded(x):
        return x.to(torch.bfloat16).to(dtype)

    crops = [rounded(unit_rows(6, 4, seed=s)) for s in range(4)]
    prototypes = rounded(unit_rows(5, 4, seed=9))
    z1, z2 = rounded(randn(6, 4, seed=10)), rounded(randn(6, 4, seed=11))
    p1, p2 = rounded(randn(6, 4, seed=12)), rounded(randn(6, 4, seed=13))
    return {
        "vicreg": lambda: VICRegLoss()(z1, z2),
        "swav": lambda: SwAVLoss()(crops, prototypes),
        "simsiam": lambda: SimSiamLoss()(p1, p2, z1, z2),
        **{name: (lambda cls=cls: cls()(z1, z2)) for name, cls in ALTERNATIVES.items()},
    }


@pytest.mark.parametrize("name", sorted(_all_losses(torch.float32)))
def test_loss_is_float32_under_autocast(name):
    # A float32 loss of the bfloat16 inputs' float32 copies is the exact answer; CPU autocast
    # runs matmuls in bfloat16 (~3 significant digits) unless the loss opts out.
    exact = _all_losses(torch.float32)[name]()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        autocast = _all_losses(torch.bfloat16)[name]()
    assert autocast.keys() == exact.keys()
    for term in exact:
        assert autocast[term].dtype == torch.float32, term
        assert autocast[term].item() == pytest.approx(exact[term].item(), rel=1e-6, abs=1e-6), term


# ---------------------------------------------------------------- Sinkhorn

def test_sinkhorn_matches_log_domain_reference():
    scores = unit_rows(7, 3, seed=3) @ unit_rows(5, 3, seed=4).t()
    for iterations in (0, 1, 3):
        codes = sinkhorn(scores, epsilon=0.05, iterations=iterations)
        reference = sinkhorn_reference(scores.numpy(), 0.05, iterations)
        np.testing.assert_allclose(codes.numpy(), reference, rtol=1e-4, atol=1e-7)


def test_sinkhorn_marginals_and_convergence():
    batch, n_prototypes = 12, 4
    scores = unit_rows(batch, 3, seed=5) @ unit_rows(n_prototypes, 3, seed=6).t()

    def prototype_error(iterations):
        codes = sinkhorn(scores, epsilon=0.1, iterations=iterations).double()
        # each sample's codes sum to 1 after every iteration count (the last normalisation is per sample)
        torch.testing.assert_close(codes.sum(dim=1), torch.ones(batch, dtype=torch.float64), rtol=0, atol=1e-6)
        assert (codes >= 0).all()
        # each prototype should receive B / K of the mass in total
        return (codes.sum(dim=0) - batch / n_prototypes).abs().max().item()

    errors = [prototype_error(i) for i in (1, 3, 30, 3000)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[1] > 1e-3, "three iterations should not already be an exact equipartition"
    assert errors[3] < 1e-5, errors


def test_sinkhorn_keeps_the_scaling_form():
    # any Sinkhorn iterate is diag(a) exp(S / eps) diag(b): log Q - S / eps is additive in (row, column)
    scores = unit_rows(6, 3, seed=7) @ unit_rows(4, 3, seed=8).t()
    codes = sinkhorn(scores, epsilon=0.05, iterations=3).double()
    residual = codes.log() - scores.double() / 0.05
    residual = residual - residual.mean(dim=1, keepdim=True) - residual.mean(dim=0, keepdim=True) + residual.mean()
    assert residual.abs().max().item() < 1e-3


def test_sinkhorn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn(randn(3, 2), epsilon=0.0)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn(randn(3, 2), iterations=-1)


# ---------------------------------------------------------------- SwAV

def test_swav_loss_matches_hand_written_cross_entropy():
    crops = [unit_rows(5, 4, seed=s) for s in range(4)]
    prototypes = unit_rows(6, 4, seed=20)
    out = SwAVLoss(temperature=0.2, epsilon=0.1, sinkhorn_iterations=3)(crops, prototypes)
    expected = swav_reference([c.numpy() for c in crops], prototypes.numpy(), 0.2, 0.1, 3)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["queue_used"].item() == 0.0


def test_swav_single_assignment_crop_and_other_order():
    crops = [unit_rows(5, 4, seed=s) for s in range(3)]
    prototypes = unit_rows(6, 4, seed=21)
    out = SwAVLoss(crops_for_assign=(2,))(crops, prototypes)
    expected = swav_reference([c.numpy() for c in crops], prototypes.numpy(), crops_for_assign=(2,))
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_swav_codes_are_constants_in_the_gradient():
    crops = [unit_rows(5, 4, seed=s).requires_grad_() for s in range(3)]
    prototypes = unit_rows(6, 4, seed=22).requires_grad_()
    SwAVLoss()(crops, prototypes)["loss"].backward()
    # the same loss written with codes precomputed as constants
    codes = [torch.from_numpy(sinkhorn_reference((c @ prototypes.t()).detach().numpy(), 0.05, 3)).float()
             for c in crops[:2]]
    ref_crops = [c.detach().clone().requires_grad_() for c in crops]
    ref_prototypes = prototypes.detach().clone().requires_grad_()
    loss = 0
    for i in range(2):
        for other in range(3):
            if other != i:
                log_p = F.log_softmax(ref_crops[other] @ ref_prototypes.t() / 0.1, dim=1)
                loss = loss - (codes[i] * log_p).sum(dim=1).mean() / 2 / 2
    loss.backward()
    for crop, ref in zip(crops, ref_crops):
        torch.testing.assert_close(crop.grad, ref.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(prototypes.grad, ref_prototypes.grad, rtol=1e-4, atol=1e-6)


def test_swav_queue_fills_first_in_first_out_and_joins_when_full():
    loss = SwAVLoss(crops_for_assign=(0, 1), queue_length=10)
    prototypes = unit_rows(6, 4, seed=30)
    batches = [[unit_rows(4, 4, seed=100 * step + c) for c in range(3)] for step in range(4)]
    used = []
    for crops in batches[:3]:
        used.append(loss(crops, prototypes)["queue_used"].item())
    assert used == [0.0, 0.0, 0.0]  # 4, 8, then 10 of 10 slots filled: not yet used
    assert loss.queue.shape == (2, 10, 4) and loss.queue_filled == 10
    for i in range(2):  # newest first; the oldest batch keeps only its first two rows
        expected = torch.cat([batches[2][i], batches[1][i], batches[0][i][:2]])
        torch.testing.assert_close(loss.queue[i], expected)

    queued = [loss.queue[i].clone().numpy() for i in range(2)]
    new_prototypes = unit_rows(6, 4, seed=31)  # queued scores must use the current prototypes
    out = loss(batches[3], new_prototypes)
    assert out["queue_used"].item() == 1.0
    expected = swav_reference([c.numpy() for c in batches[3]], new_prototypes.numpy(), queues=queued)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    without_queue = swav_reference([c.numpy() for c in batches[3]], new_prototypes.numpy())
    assert abs(expected - without_queue) > 1e-4, "the test data should make the queue matter"
    torch.testing.assert_close(loss.queue[0, :4], batches[3][0])


def test_swav_eval_mode_leaves_queue_untouched():
    loss = SwAVLoss(queue_length=8)
    prototypes = unit_rows(6, 4, seed=32)
    loss([unit_rows(4, 4, seed=s) for s in range(2)], prototypes)
    before = loss.queue.clone()
    loss.eval()
    loss([unit_rows(4, 4, seed=s + 10) for s in range(2)], prototypes)
    torch.testing.assert_close(loss.queue, before)
    assert loss.queue_filled == 4


def test_swav_queue_state_dict_round_trip():
    prototypes = unit_rows(6, 4, seed=33)
    original = SwAVLoss(queue_length=8)
    for step in range(2):
        original([unit_rows(4, 4, seed=10 * step + s) for s in range(2)], prototypes)
    restored = SwAVLoss(queue_length=8)
    restored.load_state_dict(original.state_dict())
    assert restored.queue_filled == 8
    crops = [unit_rows(4, 4, seed=50 + s) for s in range(2)]
    assert restored(crops, prototypes)["loss"].item() == original(crops, prototypes)["loss"].item()
    torch.testing.assert_close(restored.queue, original.queue)


def test_swav_rejects_bad_input():
    prototypes = unit_rows(6, 4)
    with pytest.raises(ValueError, match="crops_for_assign"):
        SwAVLoss(crops_for_assign=(0, 3))([unit_rows(4, 4), unit_rows(4, 4)], prototypes)
    with pytest.raises(ValueError, match="prototypes must be"):
        SwAVLoss()([unit_rows(4, 4), unit_rows(4, 4)], unit_rows(6, 5))
    with pytest.raises(ValueError, match="list of at least two"):
        SwAVLoss()(unit_rows(4, 4), prototypes)
    with pytest.raises(ValueError, match="same"):
        SwAVLoss()([unit_rows(4, 4), unit_rows(3, 4)], prototypes)


def test_normalize_prototypes_keeps_directions():
    layer = nn.Linear(4, 6, bias=False)
    with torch.no_grad():
        layer.weight.mul_(torch.arange(1.0, 7.0)[:, None])
    before = layer.weight.detach().clone()
    normalize_prototypes_(layer)
    norms = layer.weight.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(6))
    torch.testing.assert_close(layer.weight.detach() * before.norm(dim=1, keepdim=True), before)


# ---------------------------------------------------------------- SimSiam

def test_simsiam_identical_aligned_pairs_give_minus_one():
    p = randn(5, 3, seed=40)
    assert SimSiamLoss()(p, 2 * p, 3 * p, p)["loss"].item() == pytest.approx(-1.0, abs=1e-6)
    assert SimSiamLoss()(p, p, -p, -p)["loss"].item() == pytest.approx(1.0, abs=1e-6)


def test_simsiam_matches_numpy_and_stops_gradient_into_z():
    p1, p2, z1, z2 = (randn(5, 3, seed=s).requires_grad_() for s in range(41, 45))
    out = SimSiamLoss()(p1, p2, z1, z2)
    a, b, c, d = (t.detach().numpy().astype(np.float64) for t in (p1, p2, z1, z2))

    def mean_cosine(x, y):
        return np.mean([x[n] @ y[n] / np.linalg.norm(x[n]) / np.linalg.norm(y[n]) for n in range(len(x))])

    assert out["loss"].item() == pytest.approx(-(mean_cosine(a, d) + mean_cosine(b, c)) / 2, rel=1e-6)
    out["loss"].backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad is not None and p1.grad.abs().sum() > 0


# ---------------------------------------------------------------- alternatives

def uniformity_reference(x, t):
    x = np.asarray(x, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    pairs = list(itertools.combinations(range(len(x)), 2))
    return math.log(sum(math.exp(-t * np.sum((x[i] - x[j]) ** 2)) for i, j in pairs) / len(pairs))


def test_uniformity_matches_double_loop():
    z1, z2 = randn(7, 4, seed=50), randn(7, 4, seed=51) * 3.0  # raw: normalised inside
    out = Uniformity(t=2.0, coeff=0.5)(z1, z2)
    expected = (uniformity_reference(z1.numpy(), 2.0) + uniformity_reference(z2.numpy(), 2.0)) / 2
    assert out["uniformity"].item() == pytest.approx(expected, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.5 * expected, rel=1e-5)


def test_uniformity_antipodal_pair():
    u = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # squared distance 4
    assert Uniformity(t=3.0)(u, u)["loss"].item() == pytest.approx(-12.0)


def test_mmcr_matches_numpy_svd():
    views = [randn(6, 4, seed=s) for s in range(60, 63)]
    out = MMCR(coeff=2.0)(*views)
    unit = [v.numpy().astype(np.float64) / np.linalg.norm(v.numpy(), axis=1, keepdims=True) for v in views]
    nuclear = np.linalg.svd(sum(unit) / 3, compute_uv=False).sum()
    assert out["nuclear_norm"].item() == pytest.approx(nuclear, rel=1e-5)
    assert out["loss"].item() == pytest.approx(-2.0 * nuclear, rel=1e-5)


def test_mmcr_orthonormal_centroids():
    # identical views whose rows are the standard basis: centroids = I_4, nuclear norm 4
    eye = torch.eye(4, 6) * 5.0
    assert MMCR()(eye, eye)["loss"].item() == pytest.approx(-4.0, rel=1e-6)


def test_variance_covariance_targets():
    # rows +-e_d for every d: already unit norm; each column has two entries +-1, so its
    # unbiased variance is 2 / (N - 1) with N = 2D, above 1 / D but below 1.
    dim = 4
    rows = torch.cat([torch.eye(dim), -torch.eye(dim)])
    std = math.sqrt(2 / (2 * dim - 1) + 1e-4)
    on_sphere = VarianceCovariance(std_coeff=1.0, cov_coeff=0.0, normalize=True)(rows, rows)
    raw = VarianceCovariance(std_coeff=1.0, cov_coeff=0.0, normalize=False)(rows, rows)
    assert on_sphere["variance"].item() == 0.0  # std above gamma = 1/sqrt(D)
    assert raw["variance"].item() == pytest.approx(1 - std, rel=1e-6)


def test_variance_covariance_matches_reference_and_vicreg():
    z1, z2 = randn(8, 5, seed=70) * 0.3, randn(8, 5, seed=71) * 0.2
    out = VarianceCovariance(std_coeff=2.0, cov_coeff=0.5, normalize=True)(z1, z2)
    unit = [z.numpy() / np.linalg.norm(z.numpy(), axis=1, keepdims=True) for z in (z1, z2)]
    _, variance, covariance = vicreg_terms_reference(*unit, target=1 / math.sqrt(5))
    assert out["variance"].item() == pytest.approx(variance, rel=1e-5)
    assert out["covariance"].item() == pytest.approx(covariance, rel=1e-5)
    assert out["loss"].item() == pytest.approx(2.0 * variance + 0.5 * covariance, rel=1e-5)
    raw = VarianceCovariance(normalize=False)(z1, z2)
    vicreg = VICRegLoss()(z1, z2)
    assert raw["variance"].item() == pytest.approx(vicreg["variance"].item(), rel=1e-6)
    assert raw["covariance"].item() == pytest.approx(vicreg["covariance"].item(), rel=1e-6)


def test_criteria_registry_and_gradients():
    from e2mc.criteria import criterion_names, get_criterion

    assert criterion_names() == ("none", "e2mc", "uniformity", "mmcr", "vc")
    assert {n: get_criterion(n).module for n in ALTERNATIVES} == ALTERNATIVES
    assert [n for n in criterion_names() if get_criterion(n).takes_all_crops] == ["mmcr"]
    for name, cls in ALTERNATIVES.items():
        z1, z2 = randn(6, 4, seed=80).requires_grad_(), randn(6, 4, seed=81).requires_grad_()
        out = cls()(z1, z2)
        assert out["loss"].dim() == 0, name
        out["loss"].backward()
        assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0, name


@pytest.mark.parametrize("make, shown", [
    (lambda: VICRegLoss(sim_coeff=2, std_coeff=3, cov_coeff=0.5), "sim_coeff=2.0, std_coeff=3.0, cov_coeff=0.5"),
    (lambda: VarianceCovariance(std_coeff=1, cov_coeff=0, normalize=False),
     "std_coeff=1.0, cov_coeff=0.0, normalize=False"),
    (lambda: Uniformity(t=2, coeff=4), "t=2.0, coeff=4.0"),
    (lambda: MMCR(coeff=3), "coeff=3.0"),
])
def test_loss_weights_are_kept_as_floats_and_shown(make, shown):
    loss = make()
    assert repr(loss) == f"{type(loss).__name__}({shown})"
    assert all(isinstance(getattr(loss, name.split("=")[0]), (float, bool)) for name in shown.split(", "))


@pytest.mark.parametrize("make, named", [
    (lambda: VICRegLoss(cov_coeff=-1), "cov_coeff=-1"), (lambda: VarianceCovariance(std_coeff=-0.5), "std_coeff=-0.5"),
    (lambda: MMCR(coeff=float("nan")), "coeff=nan"), (lambda: Uniformity(coeff=-1), "coeff=-1"),
])
def test_a_negative_or_nan_weight_is_refused_by_name(make, named):
    with pytest.raises(ValueError, match=f"^{named}: the weight of a term must be >= 0$"):
        make()

"""The E2MC criterion against closed forms, scipy, and formulas written another way."""
import math

import numpy as np
import pytest
import scipy.stats
import torch
from scipy.special import digamma

from distributed_utils import run_distributed
from e2mc.criterion import (E2MC, covariance_penalty, covariance_penalty_direct, default_window,
                            m_spacings_entropy, to_compact)


def uniform_expectation(n: int, m: int) -> float:
    """Exact mean of the estimator (eps = 0) on U(0, 1) samples.

    The m-spacing U_(i+m) - U_(i) of n uniform order statistics is Beta(m, n + 1 - m), whose log has
    mean digamma(m) - digamma(n + 1); the true entropy is 0, so this is the estimator's bias.
    """
    return math.log((n + 1) / m) + digamma(m) - digamma(n + 1)


# --- entropy against closed forms -------------------------------------------------------------

N_CLOSED_FORM, D_CLOSED_FORM = 4096, 64


def test_uniform_and_scaled_uniform_match_exact_expectation(generator):
    n, d = N_CLOSED_FORM, D_CLOSED_FORM
    bias = uniform_expectation(n, default_window(n))
    assert -0.01 < bias < 0  # biased low, about -1/(2m)
    for a in (1.0, 0.25, 3.0):
        x = a * torch.rand(n, d, generator=generator, dtype=torch.float64)
        h = m_spacings_entropy(x, eps=0.0)
        # 64 columns of 4096 samples: standard error of the column mean about 2.5e-4 nats.
        stderr = h.std().item() / math.sqrt(d)
        assert abs(h.mean().item() - (math.log(a) + bias)) < 5 * stderr + 1e-4


@pytest.mark.parametrize("name", ["gaussian", "exponential"])
def test_unbounded_distributions_converge_to_closed_form(name):
    """Tails make the bias larger than for the uniform (about -0.056 nats for the Gaussian and -0.036 for the
    exponential at N = 4096, measured); 0.07 nats bounds it, and the estimator must be consistent: the error
    shrinks as N grows with m = sqrt(N)."""
    g = torch.Generator().manual_seed(1)
    errors = []
    for n in (4096, 16384):
        if name == "gaussian":
            s = 2.0
            x = s * torch.randn(n, 32, generator=g, dtype=torch.float64)
            truth = 0.5 * math.log(2 * math.pi * math.e * s**2)
        else:
            rate = 2.0
            x = torch.empty(n, 32, dtype=torch.float64).exponential_(rate, generator=g)
            truth = 1 - math.log(rate)
        errors.append(m_spacings_entropy(x, eps=0.0).mean().item() - truth)
    assert abs(errors[0]) < 0.07
    assert abs(errors[1]) < 0.7 * abs(errors[0])


def test_compact_transform_of_matching_distribution_is_uniform(generator):
    """sigmoid(logistic noise) and Phi(standard normal) are exactly U(0, 1)."""
    n = N_CLOSED_FORM
    bias = uniform_expectation(n, default_window(n))
    u = torch.rand(n, 32, generator=generator, dtype=torch.float64)
    logistic = torch.log(u) - torch.log1p(-u)
    normal = torch.randn(n, 32, generator=generator, dtype=torch.float64)
    for z, transform in ((logistic, "sigmoid"), (normal, "gaussian_cdf")):
        h = m_spacings_entropy(to_compact(z, transform), eps=0.0)
        assert abs(h.mean().item() - bias) < 0.002


def test_gaussian_cdf_matches_scipy():
    z = torch.linspace(-6, 6, 101, dtype=torch.float64)
    np.testing.assert_allclose(to_compact(z, "gaussian_cdf").numpy(), scipy.stats.norm.cdf(z.numpy()), rtol=1e-7)
    np.testing.assert_allclose(to_compact(z, "sigmoid").numpy(), scipy.special.expit(z.numpy()), rtol=1e-12)


# --- entropy against scipy ------------------------------------------------------------------------

def van_es_offset(n: int, m: int) -> float:
    """scipy's van Es estimator minus the paper's: scipy adds sum_{k=m}^{n} 1/k + log m - log(n + 1)."""
    return sum(1.0 / k for k in range(m, n + 1)) + math.log(m) - math.log(n + 1)


def test_offset_to_van_es_is_about_0_021_nats_at_n_512():
    assert van_es_offset(512, default_window(512)) == pytest.approx(0.021, abs=0.001)


@pytest.mark.parametrize("n,m", [(512, None), (300, 7), (50, 1)])
def test_equals_scipy_van_es_minus_constant(generator, n, m):
    x = torch.randn(n, 8, generator=generator, dtype=torch.float64)
    window = default_window(n) if m is None else m
    ours = m_spacings_entropy(x, m=m, eps=0.0).numpy()
    theirs = scipy.stats.differential_entropy(x.numpy(), window_length=window, method="van es", axis=0)
    np.testing.assert_allclose(ours, theirs - van_es_offset(n, window), rtol=0, atol=1e-12)


def test_eps_keeps_ties_finite():
    x = torch.zeros(100, 3)
    h = m_spacings_entropy(x)
    assert torch.isfinite(h).all()
    assert h[0].item() == pytest.approx(math.log(1e-7), rel=1e-5)


# --- covariance penalty ------------------------------------------------------------------------

@pytest.mark.parametrize("n,d", [(16, 64), (64, 16), (32, 32)])
def test_covariance_penalty_matches_numpy(generator, n, d):
    x = torch.randn(n, d, generator=generator, dtype=torch.float64) @ torch.randn(d, d, generator=generator,
                                                                                  dtype=torch.float64)
    cov = np.cov(x.numpy(), rowvar=False)  # unbiased, (D, D)
    expected = (cov**2).sum() - (np.diag(cov) ** 2).sum()
    assert covariance_penalty(x).item() == pytest.approx(expected / d, rel=1e-10)
    assert covariance_penalty_direct(x).item() == pytest.approx(expected / d, rel=1e-10)


def test_gram_and_direct_forms_agree_in_float32(generator):
    x = torch.sigmoid(torch.randn(128, 1024, generator=generator))  # N < D: Gram form
    torch.testing.assert_close(covariance_penalty(x), covariance_penalty_direct(x), rtol=1e-4, atol=0)


def test_independent_columns_have_small_covariance_and_x_distribution_zero():
    """Fig. 2b's "X": uniform marginals, zero covariance, yet dependent."""
    g = torch.Generator().manual_seed(3)
    u = torch.rand(200_000, generator=g, dtype=torch.float64)
    sign = torch.where(torch.rand(200_000, generator=g) < 0.5, 1.0, -1.0).double()
    x_dist = torch.stack([u, 0.5 + sign * (u - 0.5)], dim=1)
    assert covariance_penalty(x_dist).item() < 1e-5  # population value 0; variance of each is 1/12
    assert covariance_penalty(torch.stack([u, u], dim=1)).item() == pytest.approx((1 / 12) ** 2, rel=0.01)


# --- gradients ---------------------------------------------------------------------------------

def test_gradcheck_entropy_and_covariance(generator):
    x = torch.rand(20, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m_spacings_entropy(t, m=3), (x,))
    y = torch.randn(6, 9, generator=generator, dtype=torch.float64, requires_grad=True)  # N < D
    z = torch.randn(9, 4, generator=generator, dtype=torch.float64, requires_grad=True)  # N > D
    assert torch.autograd.gradcheck(covariance_penalty, (y,))
    assert torch.autograd.gradcheck(covariance_penalty, (z,))
    assert torch.autograd.gradcheck(lambda t: E2MC("gaussian_cdf", 2.0, 3.0, m=2)(t[:, :2], t[:, 2:])["loss"], (z,))


# --- the module ---------------------------------------------------------------------------------

def test_module_combines_terms_as_documented(generator):
    z1, z2 = torch.randn(2, 64, 32, generator=generator, dtype=torch.float64)
    out = E2MC("sigmoid", ent_coeff=10.0, cov_coeff=1.0)(z1, z2)
    u1, u2 = torch.sigmoid(z1), torch.sigmoid(z2)
    h = (m_spacings_entropy(u1).mean() + m_spacings_entropy(u2).mean()) / 2
    c = covariance_penalty_direct(u1) + covariance_penalty_direct(u2)
    torch.testing.assert_close(out["entropy"], h)
    torch.testing.assert_close(out["covariance"], c)
    torch.testing.assert_close(out["loss"], c - 10 * h)


def test_zero_coefficient_terms_are_reported_but_give_no_gradient(generator):
    z1 = torch.randn(32, 8, generator=generator, requires_grad=True)
    z2 = torch.randn(32, 8, generator=generator)
    out = E2MC(ent_coeff=1.0, cov_coeff=0.0)(z1, z2)
    assert out["covariance"] > 0
    out["loss"].backward()
    entropy = (m_spacings_entropy(torch.sigmoid(z1)).mean() + m_spacings_entropy(torch.sigmoid(z2)).mean()) / 2
    expected = torch.autograd.grad(-entropy, z1)[0]
    torch.testing.assert_close(z1.grad, expected)


def test_float32_under_bfloat16_autocast(generator):
    z1, z2 = torch.randn(2, 64, 16, generator=generator)
    reference = E2MC()(z1, z2)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = E2MC()(z1.bfloat16(), z2.bfloat16())["loss"]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, E2MC()(z1.bfloat16().float(), z2.bfloat16().float())["loss"])
    assert abs(out.item() - reference.item()) < 0.05 * abs(reference.item())


@pytest.mark.parametrize("call,message", [
    (lambda: m_spacings_entropy(torch.rand(10)), "2-D"),
    (lambda: m_spacings_entropy(torch.rand(1, 4)), "at least 2"),
    (lambda: m_spacings_entropy(torch.rand(10, 4), m=10), "1 <= m < N"),
    (lambda: m_spacings_entropy(torch.rand(10, 4), m=0), "1 <= m < N"),
    (lambda: to_compact(torch.rand(3), "tanh"), "unknown transform"),
    (lambda: E2MC(transform="tanh"), "unknown transform"),
    (lambda: E2MC()(torch.full((8, 2), float("nan")), torch.rand(8, 2)), "non-finite"),
    (lambda: E2MC()(torch.rand(8, 2), torch.rand(9, 2)), "same shape"),
    (lambda: E2MC()(torch.rand(8, 2, 2), torch.rand(8, 2, 2)), "flatten"),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises((ValueError, TypeError, FloatingPointError), match=message):
        call()


# --- torch.distributed -----------------------------------------------------------------------------

def _global_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 48, 10, generator=g), torch.nn.Linear(10, 24)


def _e2mc_on_rank(rank, world_size):
    torch.manual_seed(0)
    (x1, x2), layer = _global_batch()
    ddp = torch.nn.parallel.DistributedDataParallel(layer)
    n = x1.shape[0] // world_size
    local = slice(rank * n, (rank + 1) * n)
    out = E2MC("gaussian_cdf", 10.0, 1.0)(ddp(x1[local]), ddp(x2[local]))
    out["loss"].backward()
    return {"loss": out["loss"].detach(), "grads": [p.grad for p in layer.parameters()]}


def test_two_process_gather_equals_single_process_on_concatenated_batch():
    torch.manual_seed(0)
    (x1, x2), layer = _global_batch()
    out = E2MC("gaussian_cdf", 10.0, 1.0)(layer(x1), layer(x2))
    out["loss"].backward()
    for result in run_distributed(_e2mc_on_rank, 2):
        torch.testing.assert_close(result["loss"], out["loss"].detach())
        for got, expected in zip(result["grads"], layer.parameters()):
            torch.testing.assert_close(got, expected.grad, rtol=1e-4, atol=1e-6)

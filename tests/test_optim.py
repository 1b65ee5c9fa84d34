"""LARS and LARC against their update rules written out by hand."""
import math

import pytest
import torch

from e2mc.optim import LARC, LARS, build_optimizer, learning_rate, learning_rate_schedule, set_learning_rate


def _params(generator):
    w = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=generator, dtype=torch.float64, requires_grad=True)
    w.grad = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    b.grad = torch.randn(4, generator=generator, dtype=torch.float64)
    return w, b


def test_lars_two_steps_match_hand_computation(generator):
    w, b = _params(generator)
    w0, b0, gw, gb = w.detach().clone(), b.detach().clone(), w.grad.clone(), b.grad.clone()
    lr, wd, mom, eta = 0.5, 0.01, 0.9, 0.001
    opt = LARS([w, b], lr=lr, weight_decay=wd, momentum=mom, eta=eta)
    opt.step()
    d = gw + wd * w0
    trust = eta * w0.norm() / d.norm()
    mu_w = trust * d
    torch.testing.assert_close(w.detach(), w0 - lr * mu_w)
    torch.testing.assert_close(b.detach(), b0 - lr * gb)  # 1-D: no decay, no adaptation
    w1 = w.detach().clone()
    opt.step()  # same gradient again: momentum accumulates
    d = gw + wd * w1
    mu_w = mom * mu_w + eta * w1.norm() / d.norm() * d
    torch.testing.assert_close(w.detach(), w1 - lr * mu_w)


def test_larc_matches_apex_rule(generator):
    w, b = _params(generator)
    w0, gw = w.detach().clone(), w.grad.clone()
    lr, wd, trust = 0.3, 1e-4, 0.001
    opt = LARC([w, b], lr=lr, momentum=0.0, weight_decay=wd, trust_coefficient=trust)
    opt.step()
    scale = trust * w0.norm() / (gw.norm() + wd * w0.norm() + 1e-8)
    torch.testing.assert_close(w.detach(), w0 - lr * scale * (gw + wd * w0))


def test_zero_parameter_keeps_plain_gradient():
    p = torch.zeros(3, 2, requires_grad=True)
    p.grad = torch.ones(3, 2)
    LARS([p], lr=1.0, momentum=0.0).step()
    torch.testing.assert_close(p.detach(), -torch.ones(3, 2))


def test_schedules():
    assert learning_rate("constant", 0.4, 123, 1000) == 0.4
    assert learning_rate("cosine", 1.0, 0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert learning_rate("cosine", 1.0, 10, 100, warmup_steps=10) == pytest.approx(1.0)
    mid = learning_rate("cosine", 1.0, 55, 100, warmup_steps=10, final_fraction=0.0)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    with pytest.raises(ValueError, match="constant or cosine"):
        learning_rate("step", 1.0, 0, 10)
    with pytest.raises(ValueError, match="lars, sgd_larc or sgd"):
        build_optimizer("adam", torch.nn.Linear(2, 2), 0.1, 0.9, 0.0)


def test_the_schedule_laid_out_before_training_is_the_rate_of_every_step():
    rates = learning_rate_schedule("cosine", 0.3, 50, warmup_steps=5)
    assert rates.shape == (50,) and rates.dtype.name == "float64"
    assert rates.tolist() == [learning_rate("cosine", 0.3, step, 50, warmup_steps=5) for step in range(50)]  # exactly
    assert rates[4] == pytest.approx(0.3) and rates[-1] < rates[5]
    assert set(learning_rate_schedule("constant", 0.1, 7)) == {0.1}


@pytest.mark.parametrize("name", ["lars", "sgd_larc", "sgd"])
def test_separate_bias_learning_rate_follows_the_schedule(name):
    """Barlow Twins' two groups: the 1-D parameters (biases, BN) in their own group at bias_lr, the
    rest at lr, and a scheduled rate keeps the ratio. The step is checked by hand where the 1-D
    parameters are not adapted (LARS skips them, SGD adapts nothing; LARC rescales every tensor)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2, bias=False))
    optimizer = build_optimizer(name, model, lr=0.4, momentum=0.0, weight_decay=0.0, bias_lr=0.01)
    one_d = [p for p in model.parameters() if p.ndim == 1]
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 3]
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == {id(p) for p in one_d}
    set_learning_rate(optimizer, 0.1)  # a schedule at a quarter of the base rate
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.0025])
    if name != "sgd_larc":
        before = [p.detach().clone() for p in one_d]
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()
        for p, p0 in zip(one_d, before):
            torch.testing.assert_close(p.detach(), p0 - 0.0025)


def test_without_bias_lr_one_group_at_lr():
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer("lars", model, lr=0.3, momentum=0.9, weight_decay=0.0)
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["lr"] == 0.3
    set_learning_rate(optimizer, 0.05)
    assert optimizer.param_groups[0]["lr"] == 0.05


def _apex_larc_sgd(params, grads, buffers, lr, momentum, wd, trust, eps=1e-8):
    """One step of apex ``LARC(SGD(weight_decay=wd), trust, clip=False)``, written from apex's rule: the
    gradient is decayed and rescaled only when the parameter's and the gradient's norms are both
    non-zero; otherwise it is left alone (no weight decay: LARC zeroes SGD's own). Then plain momentum SGD."""
    new_params = []
    for i, (p, g) in enumerate(zip(params, grads)):
        p_norm, g_norm = p.norm().item(), g.norm().item()
        if p_norm != 0 and g_norm != 0:
            g = (g + wd * p) * (trust * p_norm / (g_norm + p_norm * wd + eps))
        buffers[i] = g.clone() if buffers[i] is None else momentum * buffers[i] + g
        new_params.append(p - lr * buffers[i])
    return new_params


def test_larc_leaves_zero_gradients_and_zero_parameters_as_apex(generator):
    """Issue 20 item 17: a parameter whose gradient is 0 is not moved (we used to add weight decay to it)."""
    lr, momentum, wd, trust = 0.5, 0.9, 0.1, 0.02
    live = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    idle = torch.randn(5, generator=generator, dtype=torch.float64)          # its gradient is 0
    zero = torch.zeros(2, 2, dtype=torch.float64)                            # a parameter at 0
    params = [t.clone().requires_grad_(True) for t in (live, idle, zero)]
    expected, buffers = [live, idle, zero], [None, None, None]
    opt = LARC(params, lr=lr, momentum=momentum, weight_decay=wd, trust_coefficient=trust)
    for _ in range(2):
        grads = [torch.randn(4, 3, generator=generator, dtype=torch.float64), torch.zeros(5, dtype=torch.float64),
                 torch.randn(2, 2, generator=generator, dtype=torch.float64)]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        expected = _apex_larc_sgd(expected, grads, buffers, lr, momentum, wd, trust)
        for p, e in zip(params, expected):
            torch.testing.assert_close(p.detach(), e)
    torch.testing.assert_close(params[1].detach(), idle)  # never moved

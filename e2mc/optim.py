"""The optimisers of the three methods' reference code, and learning-rate schedules.

* VICReg: :class:`LARS` (eta 1e-3, momentum 0.9, weight decay 1e-6; biases and norm
  parameters excluded from weight decay and from the layer-wise adaptation).
* SwAV: SGD wrapped in :class:`LARC` (trust coefficient 1e-3, no clipping), as NVIDIA apex's LARC.
* SimSiam: plain SGD (momentum 0.9, weight decay 1e-4).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from e2mc.errors import UserError


def is_bias_or_norm(p: torch.Tensor) -> bool:
    """Biases and normalisation parameters are the 1-D ones."""
    return p.ndim == 1


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with momentum (You et al. 2017), as in VICReg.

    For every 2-D+ parameter: ``g <- g + wd * p``, then ``g <- g * eta * ||p|| / ||g||`` (when both norms are
    non-zero); 1-D parameters (biases, norms) get neither. Then ``mu <- momentum * mu + g``, ``p <- p - lr * mu``.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 1e-3,
                 exclude_bias_and_norm: bool = True):
        if lr < 0:
            raise UserError(f"learning rate must be >= 0, got {lr}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                                      exclude_bias_and_norm=exclude_bias_and_norm))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                adapt = not (group["exclude_bias_and_norm"] and is_bias_or_norm(p))
                if adapt:
                    update = update.add(p, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(update)
                    one = torch.ones_like(param_norm)
                    trust = torch.where(param_norm > 0,
                                        torch.where(update_norm > 0, group["eta"] * param_norm / update_norm, one),
                                        one)
                    update = update.mul(trust)
                state = self.state[p]
                if "mu" not in state:  # VICReg's name, so its released optimizer state loads as is
                    state["mu"] = torch.zeros_like(p)
                buffer = state["mu"]
                buffer.mul_(group["momentum"]).add_(update)
                p.add_(buffer, alpha=-group["lr"])
        return loss


class LARC(torch.optim.SGD):
    """SGD with layer-wise adaptive rates in the form of NVIDIA apex's ``LARC(clip=False)``, used by SwAV.

    Before the SGD step every parameter's gradient becomes
    ``(g + wd * p) * trust * ||p|| / (||g|| + wd * ||p|| + eps)`` when both norms are non-zero; otherwise
    it is left as it is, without weight decay, as apex does. SGD then applies momentum and the learning
    rate without further weight decay.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 1e-3, eps: float = 1e-8):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=0.0)
        for group in self.param_groups:
            group.setdefault("larc_weight_decay", weight_decay)
        self.trust_coefficient = trust_coefficient
        self.eps = eps

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            wd = group["larc_weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                param_norm, grad_norm = torch.norm(p), torch.norm(p.grad)
                scale = self.trust_coefficient * param_norm / (grad_norm + wd * param_norm + self.eps)
                adapted = p.grad.add(p, alpha=wd).mul_(scale)
                # torch.where rather than an `if` on the norms: no host-device synchronisation per parameter.
                p.grad.copy_(torch.where((param_norm > 0) & (grad_norm > 0), adapted, p.grad))
        return super().step(closure)


def build_optimizer(name: str, model: nn.Module, lr: float, momentum: float, weight_decay: float,
                    eta: float = 1e-3, bias_lr: float | None = None) -> torch.optim.Optimizer:
    """``name`` is ``"lars"`` (VICReg), ``"sgd_larc"`` (SwAV) or ``"sgd"`` (SimSiam).

    With ``bias_lr`` the 1-D parameters (biases, norms) form a second group trained at ``bias_lr``
    (Barlow Twins). Every group records its ``lr_scale``, its learning rate over ``lr``, so that a
    schedule sets ``group["lr"] = lr_at_step * group["lr_scale"]`` (:func:`set_learning_rate`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": params, "lr_scale": 1.0}]
    if bias_lr is not None:
        if lr <= 0:
            raise UserError(f"a separate bias learning rate needs a positive weight learning rate, got {lr}")
        groups = [{"params": [p for p in params if not is_bias_or_norm(p)], "lr_scale": 1.0},
                  {"params": [p for p in params if is_bias_or_norm(p)], "lr": bias_lr, "lr_scale": bias_lr / lr}]
        groups = [g for g in groups if g["params"]]
    if name == "lars":
        return LARS(groups, lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta)
    if name == "sgd_larc":
        return LARC(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=eta)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise UserError(f"unknown optimizer {name!r}; choose lars, sgd_larc or sgd")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times its ``lr_scale`` (1 when it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def learning_rate_schedule(schedule: str, base_lr: float, total_steps: int, warmup_steps: int = 0) -> np.ndarray:
    """The learning rate of every step of a run, ``(total_steps,)`` float64: :func:`learning_rate` at
    each step, laid out once before training (as dino's ``cosine_scheduler``)."""
    return np.array([learning_rate(schedule, base_lr, step, total_steps, warmup_steps) for step in range(total_steps)],
                    dtype=np.float64)


def learning_rate(schedule: str, base_lr: float, step: int, total_steps: int, warmup_steps: int = 0,
                  final_fraction: float = 1e-3) -> float:
    """Learning rate at ``step`` (0-based).

    ``"constant"``: the paper's continued pre-training (no warm-up, no decay). ``"cosine"``: linear warm-up
    then cosine decay to ``final_fraction * base_lr``, as VICReg's pre-training.
    """
    if schedule == "constant":
        return base_lr
    if schedule != "cosine":
        raise UserError(f"unknown schedule {schedule!r}; choose constant or cosine")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return base_lr * (final_fraction + (1 - final_fraction) * cosine)

"""Semi-supervised fine-tuning of the whole network on a labelled subset (SwAV's protocol).

A linear head on the backbone; both are trained with SGD (momentum 0.9, no weight decay), the
backbone with a small learning rate and the head with a larger one, for 20 epochs, the learning
rates divided by 5 after epochs 12 and 16 (or cosine-annealed), on augmented images
(RandomResizedCrop + flip); BatchNorm layers train. The test split is measured after every epoch.
SwAV's settings (facebookresearch/swav README, used by the E2MC authors' ``eval_semisup.py``):
1 % of the labels: backbone lr 0.02, head lr 5; 10 %: backbone lr 0.01, head lr 0.2; batch 256.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from e2mc.eval_settings import check_shared
from e2mc.evaluation.linear import ProbeResult, cosine_lr, topk_correct
from e2mc.evaluation.sources import ImageSource, backbone_of, like_network, network_device


@dataclass
class FinetuneSettings:
    """epochs; batch_size; backbone_lr and head_lr (initial learning rates of the two parameter
    groups); momentum; weight_decay; schedule: "step" (times ``gamma`` at each of ``decay_epochs``)
    or "cosine" (to 0); max_steps: stop after this many optimiser steps in total (smoke tests)."""

    epochs: int = 20
    batch_size: int = 256
    backbone_lr: float = 0.01
    head_lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "step"
    decay_epochs: tuple[int, ...] = (12, 16)
    gamma: float = 0.2
    max_steps: int | None = None

    def __post_init__(self) -> None:
        check_shared("finetune", self)  # epochs, batch_size, the learning rates, schedule: as eval.finetune.*
        self.decay_epochs = tuple(int(e) for e in self.decay_epochs)

    def to_dict(self) -> dict:
        return {**asdict(self), "decay_epochs": list(self.decay_epochs)}

    def lr_factor(self, epoch: int) -> float:
        """Multiplier of both initial learning rates during (0-based) ``epoch``."""
        if self.schedule == "cosine":
            return cosine_lr(1.0, epoch, self.epochs)
        return self.gamma ** sum(epoch >= e for e in self.decay_epochs)


def swav_finetune_settings(label_fraction: float, **overrides) -> FinetuneSettings:
    """SwAV's published semi-supervised settings for 1 % and 10 % of the labels (10 %'s otherwise)."""
    lrs = {"backbone_lr": 0.02, "head_lr": 5.0} if label_fraction <= 0.01 else {"backbone_lr": 0.01, "head_lr": 0.2}
    return FinetuneSettings(**{**lrs, **overrides})


class Classifier(nn.Module):
    """backbone -> linear ``head``; x (N, C, H, W) -> logits (N, num_classes)."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(like_network(x, self.backbone)))


@torch.no_grad()
def evaluate_classifier(model: nn.Module, source: ImageSource, indices: torch.Tensor | None, batch_size: int,
                        device: torch.device) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (percent) of ``model`` in eval mode on the images at ``indices``."""
    indices = torch.arange(len(source)) if indices is None else torch.as_tensor(indices)
    was_training = model.training
    model.eval()
    correct, total = [0, 0], 0
    for images, labels in source.batches(indices, batch_size, device):
        hits = topk_correct(model(images).float(), labels)
        correct = [c + h for c, h in zip(correct, hits)]
        total += len(labels)
    model.train(was_training)
    return 100.0 * correct[0] / total, 100.0 * correct[1] / total


def finetune(network: nn.Module, train_source: ImageSource, train_indices: torch.Tensor, test_source: ImageSource,
             test_indices: torch.Tensor | None, num_classes: int, settings: FinetuneSettings | None = None,
             seed: int = 0) -> ProbeResult:
    """Fine-tune a copy of ``network``'s backbone with a new linear head; ``network`` is left unchanged.

    Trains on the images of ``train_source`` at ``train_indices`` (training augmentation), measures
    ``test_source`` after every epoch (and after the last step when ``max_steps`` ends training
    early). Runs on the network's device. Returns per-epoch test accuracies (percent).
    """
    settings = settings or FinetuneSettings()
    device = network_device(network)
    backbone = copy.deepcopy(backbone_of(network))
    generator = torch.Generator().manual_seed(int(seed))
    feature_dim = getattr(network, "feature_dim", None)
    if feature_dim is None:
        raise ValueError("finetune needs a network with a feature_dim attribute (built by e2mc.models.build_model)")
    # PyTorch's default Linear initialisation, as the authors' eval_semisup.py (their checkpoint keys do
    # not match the head, so it keeps its default init), drawn from the seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        head = nn.Linear(feature_dim, num_classes)
    model = Classifier(backbone, head.to(device))
    optimizer = torch.optim.SGD([{"params": model.backbone.parameters(), "lr": settings.backbone_lr},
                                 {"params": model.head.parameters(), "lr": settings.head_lr}],
                                momentum=settings.momentum, weight_decay=settings.weight_decay)
    initial_lrs = [settings.backbone_lr, settings.head_lr]
    top1, top5, losses = [], [], []
    steps = 0
    for epoch in range(settings.epochs):
        for group, lr in zip(optimizer.param_groups, initial_lrs):
            group["lr"] = lr * settings.lr_factor(epoch)
        model.train()
        total, seen = 0.0, 0
        for images, labels in train_source.batches(train_indices, settings.batch_size, device, train=True,
                                                   generator=generator):
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, seen, steps = total + loss.item() * len(labels), seen + len(labels), steps + 1
            if settings.max_steps is not None and steps >= settings.max_steps:
                break
        losses.append(total / max(seen, 1))
        accuracy = evaluate_classifier(model, test_source, test_indices, settings.batch_size, device)
        top1.append(accuracy[0])
        top5.append(accuracy[1])
        if settings.max_steps is not None and steps >= settings.max_steps:
            break
    return ProbeResult(top1, top5, losses, settings.weight_decay)

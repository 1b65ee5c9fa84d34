"""Frozen-backbone features extracted from labelled images.

The images come as an :class:`e2mc.data.images.ImageSource` (:class:`TensorImages` for grey tensors,
:class:`DatasetImages` for torch Datasets), re-exported here for the evaluation modules.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from e2mc.data.images import MINI_PROBE_RECIPE, DatasetImages, ImageSource, TensorImages, dataset_targets  # noqa: F401
from e2mc.errors import UserError


def backbone_of(network: nn.Module) -> nn.Module:
    """The trunk whose output is the ``"features"`` of the method networks (any module also works)."""
    if isinstance(network, nn.parallel.DistributedDataParallel):
        network = network.module
    return getattr(network, "backbone", network)


def input_channels(network: nn.Module) -> int:
    """Channels the network's first convolution expects (1 for the mini ConvNet, 3 for ResNets)."""
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise UserError("the network has no Conv2d layer; cannot tell which images it takes")


def network_device(network: nn.Module) -> torch.device:
    return next(network.parameters()).device


def like_network(images: torch.Tensor, network: nn.Module) -> torch.Tensor:
    """``images`` in the memory layout of the network's first convolution (NHWC if its weights are
    channels_last: about 1.5x faster on CPU than mixing layouts)."""
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            if images.dim() == 4 and module.weight.is_contiguous(memory_format=torch.channels_last):
                return images.contiguous(memory_format=torch.channels_last)
            break
    return images


@torch.no_grad()
def extract_features(network: nn.Module, source: ImageSource, indices: Sequence[int] | torch.Tensor | None = None,
                     batch_size: int = 512, output: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen outputs of ``network`` for the images of ``source`` at ``indices`` (all when None).

    ``output="features"`` runs the backbone only (N, F); any other name runs the whole network and
    takes that entry of its output dict (e.g. ``"embedding"``). The network is put in eval mode
    (BatchNorm uses its running statistics) and given back in the mode it was in; no gradients.
    Returns (float32 outputs (N, ·) on the CPU, int64 labels (N,)) in the order of ``indices``; raises
    ValueError when an output is NaN or infinite.
    """
    module = backbone_of(network) if output == "features" else network
    device = network_device(network)
    if indices is None:
        indices = torch.arange(len(source))
    was_training = module.training
    module.eval()
    outputs, labels = [], []
    try:
        for images, targets in source.batches(torch.as_tensor(indices), batch_size, device):
            out = module(like_network(images, module))  # float32, as the reference linear evaluations
            if output != "features":
                out = out[output]
            outputs.append(out.float().cpu())
            labels.append(targets.cpu())
    finally:
        module.train(was_training)
    if not outputs:
        raise ValueError("no images to extract features from (empty index set)")
    values = torch.cat(outputs)
    if not torch.isfinite(values).all():  # a probe on them would report chance accuracy as a result
        bad = int((~torch.isfinite(values)).any(dim=1).sum())
        raise UserError(f"the network's {output} are not finite for {bad} of {len(values)} images; the "
                         "checkpoint is not a usable model (evaluate an earlier one)")
    return values, torch.cat(labels)

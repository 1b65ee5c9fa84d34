"""Labelled images addressed by index, for evaluation: the splits a dataset hands to the probes.

An :class:`ImageSource` yields batches ``(images, labels)`` for any index set, with the evaluation
transform or a training augmentation:

* :class:`TensorImages` holds grey images as one uint8 tensor (Fashion-MNIST) and transforms whole
  batches on the device (normalisation; RandomResizedCrop + flip for training);
* :class:`DatasetImages` wraps two torch Datasets over the same images, one with the evaluation
  transform and one with the training transform (ImageNet, transfer datasets), read by a DataLoader.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from e2mc.batches import SeededItems
from e2mc.data.augment import BatchAugment, normalize_fashion_mnist
from e2mc.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from e2mc.data.recipes import ViewRecipe

# The grey 28 px counterpart of the linear probe's training transform (RandomResizedCrop + flip, no colour).
MINI_PROBE_RECIPE = ViewRecipe(28, (0.08, 1.0), jitter=(0.0, 0.0, 0.0, 0.0), jitter_p=0.0, grayscale_p=0.0,
                               blur_p=0.0, mean=(FASHION_MNIST_MEAN,), std=(FASHION_MNIST_STD,))


def dataset_targets(dataset: Dataset) -> torch.Tensor:
    """Class index of every sample, (N,) int64, read without decoding the images where possible."""
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    for name in ("targets", "_labels", "labels"):
        values = getattr(dataset, name, None)
        if values is not None and len(values) == len(dataset):
            return torch.as_tensor(list(values) if not isinstance(values, torch.Tensor) else values).long()
    if hasattr(dataset, "samples"):
        return torch.tensor([label for _, label in dataset.samples], dtype=torch.long)
    # Any other map-style dataset: read each sample once (slow, but correct).
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)


class ImageSource:
    """Labelled images addressed by index. ``labels``: (N,) int64 on the CPU."""

    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    def batches(self, indices: torch.Tensor, batch_size: int, device: torch.device, train: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches (images on ``device``, labels on ``device``) of the images at ``indices``.

        ``train=False``: in the order given, evaluation transform. ``train=True``: shuffled by
        ``generator``, training augmentation, last incomplete batch kept.
        """
        raise NotImplementedError


class TensorImages(ImageSource):
    """Grey images in one tensor: ``images`` uint8 (N, H, W) or (N, 1, H, W), ``labels`` (N,).

    Evaluation input is ``normalize(images)`` (default: Fashion-MNIST standardisation); training
    input is ``augment(images, generator)`` (default: :data:`MINI_PROBE_RECIPE`)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 normalize: Callable[[torch.Tensor], torch.Tensor] = normalize_fashion_mnist,
                 augment: nn.Module | None = None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, torch.as_tensor(labels).long().cpu()
        self.normalize = normalize
        self.augment = augment if augment is not None else BatchAugment(MINI_PROBE_RECIPE)

    def batches(self, indices, batch_size, device, train=False, generator=None):
        indices = torch.as_tensor(indices, dtype=torch.long)
        if train:
            indices = indices[torch.randperm(len(indices), generator=generator)]
        for start in range(0, len(indices), batch_size):
            chosen = indices[start:start + batch_size]
            images = self.images[chosen].to(device)
            # The augmentation draws its parameters on the CPU generator, then moves them to the device.
            x = self.augment(images, generator) if train else self.normalize(images)
            yield x, self.labels[chosen].to(device)


class DatasetImages(ImageSource):
    """Images of a torch Dataset read through a DataLoader.

    ``eval_dataset`` applies the evaluation transform, ``train_dataset`` (optional) the same images
    with the training augmentation; both yield ``(tensor image, label)``. Training batches are shuffled
    and augmented by ``generator`` (each image's transform runs under a seed drawn from it)."""

    def __init__(self, eval_dataset: Dataset, train_dataset: Dataset | None = None, workers: int = 4) -> None:
        if train_dataset is not None and len(train_dataset) != len(eval_dataset):
            raise ValueError("train_dataset and eval_dataset must hold the same images")
        self.eval_dataset, self.train_dataset, self.workers = eval_dataset, train_dataset, workers
        self.labels = dataset_targets(eval_dataset)

    def batches(self, indices, batch_size, device, train=False, generator=None):
        dataset = self.eval_dataset
        if train:
            if self.train_dataset is None:
                raise ValueError("this source has no training transform; give DatasetImages a train_dataset")
            dataset = self.train_dataset
        indices = torch.as_tensor(indices, dtype=torch.long)
        if train:
            indices = indices[torch.randperm(len(indices), generator=generator)]
            # Each image's augmentation is seeded from ``generator`` as well, so that an evaluation's result
            # depends on its seed only: not on what ran before in the process, nor on the number of workers.
            seeds = torch.randint(0, 2**62, (len(indices),), generator=generator).tolist()
            items: Dataset = SeededItems(dataset)
            sampler = list(zip(seeds, indices.tolist()))
        else:
            items, sampler = Subset(dataset, indices.tolist()), None
        loader = DataLoader(items, batch_size=batch_size, shuffle=False, sampler=sampler,
                            num_workers=self.workers, pin_memory=device.type == "cuda",
                            persistent_workers=False)
        for images, labels in loader:
            yield images.to(device, non_blocking=True), torch.as_tensor(labels).long().to(device, non_blocking=True)

"""Streams of augmented training batches that can restart at any step of any epoch.

Both streams yield, per step, the list of views (each a float tensor on the training device) of
this process's share of the global batch. The order of images depends only on (seed, epoch) and
the augmentation of a step only on (seed, epoch, step, rank), so a run resumed at step k of an
epoch sees exactly the batches an uninterrupted run would have seen. For :class:`LoaderViews` this
holds because every image is augmented under its own seed (not the global RNG as it stands after
the steps before, nor a DataLoader worker's stream, which a resumed epoch would not reproduce).
"""
from __future__ import annotations

import itertools
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from e2mc.errors import UserError


def _mix(*numbers: int) -> int:
    """A 63-bit seed from a tuple of integers (deterministic across processes and runs)."""
    h = 0x9E3779B97F4A7C15
    for x in numbers:
        h = (h ^ (x + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


class TensorViews:
    """Views of an in-memory image tensor, augmented a batch at a time on the training device.

    Args:
        images: (N, H, W) or (N, 1, H, W) uint8 images.
        augment: callable ``(images (B, 1, H, W) float, generator) -> list of views``
            (e.g. :func:`e2mc.data.make_mini_augment`).
        batch_size: the global batch; each of ``world_size`` processes takes ``batch_size // world_size``.
        seed, rank, world_size: shuffling and sharding.
        device: where images live and augmentation runs.
    """

    def __init__(self, images: torch.Tensor, augment, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, device: torch.device | str = "cpu") -> None:
        if batch_size % world_size:
            raise UserError(f"batch_size={batch_size} must be divisible by the number of processes ({world_size})")
        self.local_batch = batch_size // world_size
        if len(images) < batch_size:
            raise UserError(f"the dataset has {len(images)} images, fewer than one global batch of {batch_size}; "
                             "lower data.batch_size or raise data.limit")
        self.images = (images if images.dim() == 4 else images.unsqueeze(1)).to(device)
        self.augment, self.seed, self.rank, self.world_size = augment, seed, rank, world_size
        self.device = torch.device(device)
        self.steps_per_epoch = len(images) // batch_size  # the incomplete last batch is dropped

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[list[torch.Tensor]]:
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(_mix(self.seed, epoch)))
        for step in range(start_step, self.steps_per_epoch):
            start = step * self.local_batch * self.world_size + self.rank * self.local_batch
            index = order[start:start + self.local_batch].to(self.device)
            generator = torch.Generator(device=self.device).manual_seed(_mix(self.seed, epoch, step, self.rank))
            yield self.augment(self.images[index], generator)


class SeededItems(Dataset):
    """``dataset[index]`` computed under its own seed: item ``(seed, index)`` runs the dataset's
    transform with torch's global RNG seeded by ``seed`` (torchvision's transforms and
    :class:`e2mc.data.augment.RandomPILGaussianBlur` draw from it), then restores that RNG."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        seed, index = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class LoaderViews:
    """Views from a map-style dataset returning ``(list of views, label)`` (ImageNet ImageFolder).

    Shuffling and sharding use :class:`DistributedSampler` (seeded by ``seed`` and the epoch); a resumed
    epoch skips the sampler's first ``start_step`` batches without loading them. The image in slot ``i``
    of step ``s`` is augmented under the seed ``(seed, epoch, s, rank, i)``, whatever the number of
    DataLoader workers and wherever the epoch started.
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 workers: int = 8, device: torch.device | str = "cpu") -> None:
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} must be divisible by the number of processes ({world_size})")
        self.dataset, self.local_batch, self.workers = dataset, batch_size // world_size, workers
        self.seed, self.rank = seed, rank
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                          drop_last=True)
        self.device = torch.device(device)
        self.steps_per_epoch = len(self.sampler) // self.local_batch

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[list[torch.Tensor]]:
        self.sampler.set_epoch(epoch)
        indices = list(self.sampler)
        items = [(_mix(self.seed, epoch, step, self.rank, slot), indices[step * self.local_batch + slot])
                 for step in range(start_step, self.steps_per_epoch) for slot in range(self.local_batch)]
        # Its own generator, so that creating the loader draws nothing from the global RNG either.
        loader = DataLoader(SeededItems(self.dataset), batch_size=self.local_batch, sampler=items,
                            num_workers=self.workers, pin_memory=self.device.type == "cuda", drop_last=True,
                            persistent_workers=False, generator=torch.Generator().manual_seed(_mix(self.seed, epoch)))
        for views, _ in itertools.islice(loader, self.steps_per_epoch - start_step):
            yield [v.to(self.device, non_blocking=True) for v in views]

"""The datasets a run trains on, one :class:`Dataset` record each, and the registry every other module asks.

    from e2mc.data.registry import get_dataset
    fashion = get_dataset("fashion_mnist")
    stream = fashion.train_stream(cfg.data, get_method("vicreg"), seed=0, device=device)
    splits = fashion.evaluation_data(root=None)     # train and test splits for the probes

A record says everything that differs between datasets: the run-folder scale of its launchers, the
image channels a network takes, which of a method's view recipes it augments with, how its training
stream and its evaluation splits are read, and whether the linear probe runs on images or on cached
features. To add a dataset, write its two readers and add its record to :data:`DATASETS` below (an
:class:`e2mc.registry.Registry`, as the methods and criteria are).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from e2mc.batches import LoaderViews, TensorViews
from e2mc.data.augment import (imagenet_eval_transform, imagenet_probe_transform, imagenet_train_dataset,
                               make_mini_augment)
from e2mc.data.fashion_mnist import load_fashion_mnist
from e2mc.data.images import DatasetImages, ImageSource, TensorImages
from e2mc.data.subsets import balanced_subset, download_imagenet_subset, imagenet_subset_indices
from e2mc.distributed import rank, world_size
from e2mc.errors import UserError
from e2mc.registry import Registry


@dataclass
class EvaluationData:
    """Train and test images of the evaluation dataset, and its labelled subsets."""

    name: str
    train: ImageSource
    test: ImageSource
    num_classes: int
    subset: Callable[[float, int], torch.Tensor]  # (label fraction, seed) -> indices into train


@dataclass(frozen=True)
class Dataset:
    """One dataset a run can (pre-)train on, and how every layer reads it.

    ``train_stream(data, method, seed, device)`` gives the training batches (lists of views) for a
    configuration's ``data`` section; ``evaluation_data(root, subset_dir, workers)`` the labelled splits
    the probes read from the evaluation root (:meth:`evaluation_root` of the training root).
    """

    name: str                  # the configuration's data.dataset
    scale: str                 # runs/<scale>/... in the launchers' run folders
    channels: int              # image channels the networks trained on it take
    probe_on: str              # the linear probe's default: "features" (cached, fast) or "images" (the authors')
    train_stream: Callable     # (data section, method, seed, device) -> TensorViews | LoaderViews
    evaluation_data: Callable  # (root, subset_dir=None, workers=8) -> EvaluationData
    train_subfolder: str | None = None  # training reads <root>/<train_subfolder>, evaluation <root>

    def evaluation_root(self, root: str | None) -> str | None:
        """Where the evaluation data of a run whose ``data.root`` is ``root`` are (ImageNet training reads
        ``<root>/train`` while evaluation needs ``<root>`` with train/ and val/)."""
        if self.train_subfolder and root and Path(root).name == self.train_subfolder:
            return str(Path(root).parent)
        return root


# ----------------------------------------------------------------------------- Fashion-MNIST

def _fashion_mnist_stream(data, method, seed: int, device: torch.device) -> TensorViews:
    images, _ = load_fashion_mnist("train", data.root)
    if data.limit is not None:
        images = images[:data.limit]
    return TensorViews(images, make_mini_augment(method).to(device), data.batch_size, seed, rank(), world_size(),
                       device)


def fashion_mnist_data(root: str | Path | None = None, subset_dir=None, workers: int = 8) -> EvaluationData:
    """Fashion-MNIST: the 60k training images (class-balanced random label subsets) and the 10k test images."""
    train_images, train_labels = load_fashion_mnist("train", root)
    test_images, test_labels = load_fashion_mnist("test", root)
    train = TensorImages(train_images, train_labels)
    return EvaluationData("fashion_mnist", train, TensorImages(test_images, test_labels), 10,
                          lambda fraction, seed: balanced_subset(train.labels, fraction, seed))


# ----------------------------------------------------------------------------- ImageNet

def _imagenet_stream(data, method, seed: int, device: torch.device) -> LoaderViews:
    if data.root is None:
        raise UserError("data.dataset=imagenet needs data.root, the ImageNet train/ folder")
    dataset = imagenet_train_dataset(data.root, method)
    if data.limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(data.limit, len(dataset))))
    return LoaderViews(dataset, data.batch_size, seed, rank(), world_size(), data.workers, device)


def imagenet_data(root: str | Path | None, subset_dir: str | Path | None = None, workers: int = 8) -> EvaluationData:
    """ImageNet from ``root/train`` and ``root/val`` (class folders). Label fractions 0.01 and 0.1 are
    SimCLR's lists ``1percent.txt`` / ``10percent.txt`` in ``subset_dir`` (default ``root``; fetched
    with their sha256 checked if absent); the seed does not change them. Other fractions are
    class-balanced random subsets."""
    if root is None:
        raise UserError("ImageNet evaluation needs --data-root, the folder holding train/ and val/")
    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"ImageNet {split} folder {root / split} not found; --data-root must hold "
                                    "train/ and val/, each with one folder per class (n01440764/, ...)")
    train = DatasetImages(_image_folder(root / "train", imagenet_eval_transform()),
                          _image_folder(root / "train", imagenet_probe_transform()), workers)
    test = DatasetImages(_image_folder(root / "val", imagenet_eval_transform()), None, workers)
    subset_dir = Path(subset_dir) if subset_dir is not None else root
    cache: dict[float, torch.Tensor] = {}

    def subset(fraction: float, seed: int) -> torch.Tensor:
        if fraction == 1.0:
            return torch.arange(len(train))
        name = {0.01: "1percent", 0.1: "10percent"}.get(fraction)
        if name is None:
            return balanced_subset(train.labels, fraction, seed)
        if fraction not in cache:
            listing = download_imagenet_subset(name, subset_dir)
            cache[fraction] = imagenet_subset_indices(train.eval_dataset, listing)
        return cache[fraction]

    return EvaluationData("imagenet", train, test, len(train.eval_dataset.classes), subset)


def _image_folder(folder: Path, transform) -> torchvision.datasets.ImageFolder:
    return torchvision.datasets.ImageFolder(str(folder), transform=transform)


# ----------------------------------------------------------------------------- the registry

# An official release carries no configuration: it was trained on ImageNet.
RELEASE_DATASET = "imagenet"
DATASETS: Registry[Dataset] = Registry("dataset", (
    Dataset("fashion_mnist", scale="mini", channels=1, probe_on="features",
            train_stream=_fashion_mnist_stream, evaluation_data=fashion_mnist_data),
    Dataset("imagenet", scale="imagenet", channels=3, probe_on="images",
            train_stream=_imagenet_stream, evaluation_data=imagenet_data, train_subfolder="train"),
))


def dataset_names() -> tuple[str, ...]:
    """Every dataset a run can train on (the choices of ``data.dataset``)."""
    return DATASETS.names()


def get_dataset(name: str) -> Dataset:
    """The dataset ``name``; a UserError naming the choices otherwise."""
    return DATASETS.get(name)

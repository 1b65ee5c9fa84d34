"""Transfer datasets read from a local folder, one interface for all: ``transfer_dataset(name, root, split)``.

Nothing is downloaded (torchvision classes are built with ``download=False``); a missing or
corrupt copy is an error that names the on-disk layout expected under ``root``. torchvision's own
integrity checks (e.g. the md5 of every CIFAR batch) stay in force.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms

from e2mc.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, imagenet_eval_transform, imagenet_probe_transform
from e2mc.errors import UserError
from e2mc.evaluation.sources import DatasetImages, input_channels


class INaturalist2018(Dataset):
    """iNaturalist 2018 as released: ``root/train2018.json`` and ``root/val2018.json`` (COCO style:
    ``images`` with ``id`` and ``file_name``, ``annotations`` with ``image_id`` and ``category_id``),
    image paths relative to ``root`` (``train_val2018/<supercategory>/<category>/<file>.jpg``).
    torchvision's INaturalist cannot tell 2018's train and val images apart, hence this class.
    Yields (image, category_id)."""

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None) -> None:
        if split not in ("train", "val"):
            raise UserError(f"iNaturalist 2018 has splits 'train' and 'val', got {split!r}")
        self.root, self.transform = Path(root), transform
        annotation_file = self.root / f"{split}2018.json"
        if not annotation_file.is_file():
            raise FileNotFoundError(f"{annotation_file} not found")
        data = json.loads(annotation_file.read_text())
        category_of = {a["image_id"]: int(a["category_id"]) for a in data["annotations"]}
        self.samples = [(str(self.root / image["file_name"]), category_of[image["id"]]) for image in data["images"]]
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            image = image.convert("RGB")
        return (self.transform(image) if self.transform else image), label


class INaturalistTargets(Dataset):
    """torchvision's INaturalist with a ``targets`` list (its labels live in ``index`` as (category, file))."""

    def __init__(self, root: str | Path, version: str, transform: Callable | None = None) -> None:
        self.dataset = torchvision.datasets.INaturalist(str(root), version=version, target_type="full",
                                                        transform=transform, download=False)
        self.targets = [category for category, _ in self.dataset.index]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]


class Digits(Dataset):
    """scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1,797 grey 8 x 8
    images, 10 classes; nothing to download): a second dataset for the mini models' transfer table.
    The split is fixed, stratified and seeded: 30 % of each class (540 images) is the test split.
    Yields (PIL image 8 x 8, mode L, pixel values 0..255, class)."""

    TEST_FRACTION = 0.3

    def __init__(self, split: str = "train", transform: Callable | None = None) -> None:
        try:  # scikit-learn is in the [repro] extra only: the core install has no digits
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split
        except ModuleNotFoundError:
            raise UserError("the digits transfer set comes with scikit-learn, which this environment lacks: "
                            "pip install 'e2mc[repro]' (or pip install scikit-learn)") from None

        digits = load_digits()
        images = (digits.images * (255 / 16)).round().astype("uint8")  # 0..16 -> 0..255
        indices = list(range(len(images)))
        train, test = train_test_split(indices, test_size=self.TEST_FRACTION, stratify=digits.target,
                                       random_state=0)
        chosen = sorted(train if split == "train" else test)
        self.images = images[chosen]
        self.targets = [int(digits.target[i]) for i in chosen]
        self.classes = [str(c) for c in range(10)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index], mode="L")
        return (self.transform(image) if self.transform else image), self.targets[index]


def _imagefolder(root: str | Path, split: str, transform: Callable | None) -> Dataset:
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found")
    return torchvision.datasets.ImageFolder(str(folder), transform=transform)


@dataclass(frozen=True)
class TransferSpec:
    """How to open one dataset: ``build(root, split, transform)``, its split names, and its layout."""

    build: Callable[[str, str, Callable | None], Dataset]
    train_split: str
    test_split: str
    splits: tuple[str, ...]
    layout: str
    needs_root: bool = True  # False for a dataset bundled with a library


def _torchvision(cls_name: str, split_kwargs: Callable[[str], dict]) -> Callable[[str, str, Callable | None], Dataset]:
    def build(root: str, split: str, transform: Callable | None) -> Dataset:
        cls = getattr(torchvision.datasets, cls_name)
        return cls(str(root), transform=transform, download=False, **split_kwargs(split))
    return build


def _train_flag(split: str) -> dict:
    return {"train": split == "train"}


def _split(split: str) -> dict:
    return {"split": split}


TRANSFER_DATASETS: dict[str, TransferSpec] = {
    "cifar10": TransferSpec(_torchvision("CIFAR10", _train_flag), "train", "test", ("train", "test"),
                            "root/cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch, batches.meta} "
                            "(cifar-10-python.tar.gz extracted in root; torchvision checks each file's md5)"),
    "cifar100": TransferSpec(_torchvision("CIFAR100", _train_flag), "train", "test", ("train", "test"),
                             "root/cifar-100-python/{train, test, meta} (cifar-100-python.tar.gz extracted in root; "
                             "torchvision checks each file's md5)"),
    "flowers102": TransferSpec(_torchvision("Flowers102", _split), "train", "test", ("train", "val", "test"),
                               "root/flowers-102/{jpg/image_00001.jpg, ..., imagelabels.mat, setid.mat} "
                               "(torchvision checks the md5 of the archive and the two .mat files)"),
    "food101": TransferSpec(_torchvision("Food101", _split), "train", "test", ("train", "test"),
                            "root/food-101/{images/<class>/<id>.jpg, meta/train.json, meta/test.json}"),
    "dtd": TransferSpec(_torchvision("DTD", _split), "train", "test", ("train", "val", "test"),
                        "root/dtd/dtd/{images/<class>/<file>.jpg, labels/train1.txt, labels/val1.txt, "
                        "labels/test1.txt} (each list line is <class>/<file>.jpg; partition 1)"),
    "pets": TransferSpec(_torchvision("OxfordIIITPet", _split), "trainval", "test", ("trainval", "test"),
                         "root/oxford-iiit-pet/{images/<Breed>_<n>.jpg, annotations/trainval.txt, annotations/test.txt}"),
    "stl10": TransferSpec(_torchvision("STL10", _split), "train", "test", ("train", "test"),
                          "root/stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin, ...}"),
    "inaturalist2018": TransferSpec(lambda root, split, t: INaturalist2018(root, split, t), "train", "val",
                                    ("train", "val"),
                                    "root/{train2018.json, val2018.json, train_val2018/<super>/<category>/<file>.jpg} "
                                    "(the iNaturalist 2018 competition release)"),
    "inaturalist2021": TransferSpec(
        lambda root, split, t: INaturalistTargets(root, {"train": "2021_train", "val": "2021_valid"}[split], t),
        "train", "val", ("train", "val"),
        "root/2021_train/<nnnnn_Kingdom_..._species>/<file>.jpg and root/2021_valid/... (torchvision's INaturalist)"),
    "digits": TransferSpec(lambda root, split, t: Digits(split, t), "train", "test", ("train", "test"),
                           "bundled with scikit-learn (load_digits); give any root, e.g. digits=bundled",
                           needs_root=False),
    "imagefolder": TransferSpec(_imagefolder, "train", "val", ("train", "val", "test"),
                                "root/<split>/<class>/<image> (any ImageFolder tree: root/train/..., root/val/...)"),
}


def transfer_dataset(name: str, root: str | Path, split: str, transform: Callable | None = None) -> Dataset:
    """The ``split`` of transfer dataset ``name`` from its local copy under ``root`` (never downloaded).

    ``name``: one of :data:`TRANSFER_DATASETS` (cifar10, cifar100, flowers102, food101, dtd, pets,
    stl10, inaturalist2018, inaturalist2021, digits, imagefolder). Each sample is (image, class index);
    ``transform`` is applied to the PIL image. Raises ValueError for an unknown name or split and
    FileNotFoundError, naming the expected layout, when the files are missing or fail torchvision's
    integrity check.
    """
    if name not in TRANSFER_DATASETS:
        raise UserError(f"unknown transfer dataset {name!r}; choose one of {', '.join(TRANSFER_DATASETS)}")
    spec = TRANSFER_DATASETS[name]
    if split not in spec.splits:
        raise UserError(f"{name} has splits {', '.join(spec.splits)}, got {split!r}")
    root = Path(root)
    expected = f"expected layout: {spec.layout}. Copy the original files there (nothing is downloaded)."
    if spec.needs_root and not root.is_dir():
        raise FileNotFoundError(f"{name}: folder {root} does not exist; {expected}")
    try:
        return spec.build(str(root), split, transform)
    except (RuntimeError, FileNotFoundError) as error:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(f"{name} ({split}) not found or corrupted under {root} ({error}); {expected}") from error


class _ConvertRGB:
    """PIL image -> RGB (grey or RGBA transfer images for a 3-channel network)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.convert("RGB")


def transfer_transforms(network: nn.Module) -> tuple[Callable, Callable]:
    """(evaluation, training) transforms of PIL images for ``network``'s input.

    3-channel networks (ResNets): the ImageNet probe transforms (resize 256 + centre crop 224;
    RandomResizedCrop 224 + flip). 1-channel networks (the mini ConvNet): grey, 28 px (resize +
    centre crop; RandomResizedCrop + flip), standardised as Fashion-MNIST.
    """
    if input_channels(network) == 3:
        return (transforms.Compose([_ConvertRGB(), imagenet_eval_transform()]),
                transforms.Compose([_ConvertRGB(), imagenet_probe_transform()]))
    grey = [transforms.ToTensor(), transforms.Normalize((FASHION_MNIST_MEAN,), (FASHION_MNIST_STD,))]
    return (transforms.Compose([transforms.Grayscale(1), transforms.Resize(28), transforms.CenterCrop(28), *grey]),
            transforms.Compose([transforms.Grayscale(1), transforms.RandomResizedCrop(28),
                                transforms.RandomHorizontalFlip(), *grey]))


def transfer_sources(name: str, root: str | Path, network: nn.Module, workers: int = 4
                     ) -> tuple[DatasetImages, DatasetImages]:
    """(train, test) image sources of transfer dataset ``name`` with the transforms ``network`` needs."""
    spec = TRANSFER_DATASETS.get(name)
    if spec is None:
        raise UserError(f"unknown transfer dataset {name!r}; choose one of {', '.join(TRANSFER_DATASETS)}")
    eval_transform, train_transform = transfer_transforms(network)
    train = DatasetImages(transfer_dataset(name, root, spec.train_split, eval_transform),
                          transfer_dataset(name, root, spec.train_split, train_transform), workers)
    test = DatasetImages(transfer_dataset(name, root, spec.test_split, eval_transform), None, workers)
    return train, test


def num_classes_of(train: DatasetImages, test: DatasetImages) -> int:
    """Class count: the dataset's ``classes`` list if it has one, else the largest label + 1."""
    classes = getattr(train.eval_dataset, "classes", None)
    if classes:
        return len(classes)
    return int(torch.maximum(train.labels.max(), test.labels.max())) + 1

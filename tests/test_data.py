"""Tests of e2mc.data: IDX files, Fashion-MNIST discovery, augmentations, label subsets."""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
import struct
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.datasets.mnist import read_image_file, read_label_file

import e2mc.data.fashion_mnist as fmnist
import e2mc.data.subsets as subsets
from e2mc.errors import UserError
from e2mc.methods import get_method, method_names
from e2mc.data import (
    IMAGENET_SUBSET_SHA256,
    BatchAugment,
    ViewRecipe,
    balanced_subset,
    brightness_contrast,
    download_imagenet_subset,
    find_fashion_mnist,
    gaussian_blur,
    imagenet_eval_transform,
    imagenet_subset_indices,
    imagenet_train_dataset,
    load_fashion_mnist,
    make_mini_augment,
    read_idx,
    read_imagenet_subset,
    resized_crop,
    sample_crop_boxes,
)

# ----------------------------------------------------------------------------- helpers

_IDX_TYPE = {np.dtype("uint8"): 0x08, np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D}


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """IDX writer written from the format description: magic 0 0 type ndim, big-endian dims and data."""
    header = struct.pack(">BBBB", 0, 0, _IDX_TYPE[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def write_fake_fashion_mnist(folder: Path, seed: int = 0, compress: bool = True, n_train: int = 20,
                             n_test: int = 10) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    content = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        image_name, label_name = fmnist.FASHION_MNIST_FILES[split]
        write_idx(folder / image_name, images, compress)
        write_idx(folder / label_name, labels, compress)
        content[split] = (images, labels)
    return content


@pytest.fixture
def no_default_places(tmp_path, monkeypatch):
    """Point the Debian path and the default torchvision root at empty folders."""
    debian, default_root = tmp_path / "debian", tmp_path / "default_root"
    monkeypatch.setattr(fmnist, "DEBIAN_FASHION_MNIST", debian)
    monkeypatch.setattr(fmnist, "DEFAULT_DOWNLOAD_ROOT", default_root)
    return debian, default_root


def grey_batch(n: int = 8, side: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


PLAIN = ViewRecipe(28, (1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter=(0.0, 0.0, 0.0, 0.0), jitter_p=0.0,
                   grayscale_p=0.0, blur_p=0.0, solarize_p=0.0, mean=(0.0,), std=(1.0,))


# ----------------------------------------------------------------------------- IDX and Fashion-MNIST


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    wide = rng.integers(-(2**31), 2**31 - 1, size=(3, 4), dtype=np.int32)  # checks byte order
    floats = rng.standard_normal((2, 3, 4)).astype(np.float32)
    for name, array in (("img", images), ("lbl", labels), ("wide", wide), ("floats", floats)):
        back = read_idx(write_idx(tmp_path / name, array, compress))
        assert back.dtype == array.dtype and back.shape == array.shape
        np.testing.assert_array_equal(back, array)


def test_idx_reader_agrees_with_torchvision(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=4, dtype=np.uint8)
    image_path, label_path = write_idx(tmp_path / "i", images), write_idx(tmp_path / "l", labels)
    assert torch.equal(torch.from_numpy(read_idx(image_path)), read_image_file(str(image_path)))
    assert torch.equal(torch.from_numpy(read_idx(label_path)).long(), read_label_file(str(label_path)))


def test_idx_reader_rejects_bad_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk")
    path = write_idx(tmp_path / "full", np.zeros((3, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_load_fashion_mnist_from_given_root(tmp_path, no_default_places, compress):
    content = write_fake_fashion_mnist(tmp_path / "mine", compress=compress)
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(split, root=tmp_path / "mine", download=False)
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert images.shape == (len(content[split][0]), 28, 28) and labels.shape == (len(content[split][1]),)
        np.testing.assert_array_equal(images.numpy(), content[split][0])
        np.testing.assert_array_equal(labels.numpy(), content[split][1])
    with pytest.raises(ValueError, match="split must be one of"):
        load_fashion_mnist("validation", root=tmp_path / "mine", download=False)


def test_load_rejects_mismatched_labels(tmp_path, no_default_places):
    write_fake_fashion_mnist(tmp_path / "d")
    write_idx(tmp_path / "d" / "train-labels-idx1-ubyte", np.zeros(7, np.uint8))  # plain file wins over .gz
    with pytest.raises(ValueError, match="expected 20 uint8 labels"):
        load_fashion_mnist("train", root=tmp_path / "d", download=False)


def test_discovery_order(tmp_path, no_default_places):
    debian, default_root = no_default_places
    write_fake_fashion_mnist(debian, seed=1)
    write_fake_fashion_mnist(tmp_path / "user", seed=2, compress=False)
    assert find_fashion_mnist(tmp_path / "user", download=False) == tmp_path / "user"  # the user's path first
    assert find_fashion_mnist(None, download=False) == debian
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="data.root=.*empty does not hold Fashion-MNIST"):
        find_fashion_mnist(tmp_path / "empty", download=False)  # an explicit root never falls back to another copy
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FileNotFoundError, match="a_file is a file"):
        find_fashion_mnist(tmp_path / "a_file", download=False)
    torchvision_layout = tmp_path / "tv" / "FashionMNIST" / "raw"
    write_fake_fashion_mnist(torchvision_layout, seed=3)
    assert find_fashion_mnist(tmp_path / "tv", download=False) == torchvision_layout
    # Without Debian's copy, the default torchvision root is next.
    for path in debian.iterdir():
        path.unlink()
    write_fake_fashion_mnist(default_root / "FashionMNIST" / "raw", seed=4)
    assert find_fashion_mnist(None, download=False) == default_root / "FashionMNIST" / "raw"
    images, _ = load_fashion_mnist("test", download=False)
    np.testing.assert_array_equal(images.numpy(), write_fake_fashion_mnist(tmp_path / "again", seed=4)["test"][0])


def _assert_names_the_three_fixes(message: str) -> None:
    assert "data.root=/path/to/folder" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "internet" in message and "torchvision" in message


def test_not_found_error_names_places_and_fixes(tmp_path, no_default_places):
    debian, default_root = no_default_places
    write_fake_fashion_mnist(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        find_fashion_mnist(tmp_path / "partial", download=False)
    message = str(info.value)
    _assert_names_the_three_fixes(message)
    assert f"{tmp_path / 'partial'}: missing t10k-labels-idx1-ubyte[.gz]" in message
    assert f"{debian}: no such folder" not in message  # an explicit root is the only place looked in


def test_failed_download_is_reported_with_the_fixes(tmp_path, no_default_places, monkeypatch):
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: Name or service not known")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", offline)
    (tmp_path / "root").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        find_fashion_mnist(tmp_path / "root", download=True)
    message = str(info.value)
    _assert_names_the_three_fixes(message)
    assert "Name or service not known" in message
    assert str(tmp_path / "root" / "FashionMNIST" / "raw") in message


def test_successful_download_is_used(tmp_path, no_default_places, monkeypatch):
    def fake_download(self):  # what torchvision leaves behind: extracted files in <root>/FashionMNIST/raw
        write_fake_fashion_mnist(Path(self.raw_folder), seed=5, compress=False)

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", fake_download)
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    (tmp_path / "root").mkdir()
    assert find_fashion_mnist(tmp_path / "root", download=True) == raw
    assert load_fashion_mnist("train", root=tmp_path / "root")[0].shape == (20, 28, 28)


# ----------------------------------------------------------------------------- batched augmentations


@pytest.mark.parametrize("method, sizes", [("vicreg", [28, 28]), ("simsiam", [28, 28]),
                                           ("swav", [28, 28, 16, 16, 16, 16])])
def test_mini_augment_shapes_and_determinism(method, sizes):
    augment, images = make_mini_augment(get_method(method)), grey_batch(16)
    views = augment(images, torch.Generator().manual_seed(0))
    assert [v.shape for v in views] == [(16, 1, s, s) for s in sizes]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)
    again = augment(images, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    other = augment(images, torch.Generator().manual_seed(1))
    assert not torch.equal(views[0], other[0])
    assert not torch.equal(views[0], views[1])  # the two views differ
    # uint8 (B, H, W) and float (B, 1, H, W) in [0, 1] are the same input
    floats = augment(images[:, 0].float() / 255, torch.Generator().manual_seed(0))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(views, floats))


def test_full_crop_without_flip_is_identity():
    images = grey_batch(6)
    out = BatchAugment(PLAIN)(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images.float() / 255, atol=1e-5, rtol=0)


def test_flip_equals_torch_flip():
    images = grey_batch(6)
    out = BatchAugment(ViewRecipe(**{**PLAIN.__dict__, "flip_p": 1.0}))(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.flip(images.float() / 255, dims=[-1]), atol=1e-5, rtol=0)


def test_flip_probability():
    images = grey_batch(2000, side=6)
    recipe = ViewRecipe(**{**PLAIN.__dict__, "size": 6, "flip_p": 0.3})
    out = BatchAugment(recipe)(images, torch.Generator().manual_seed(0))
    flipped = (out - torch.flip(images.float() / 255, dims=[-1])).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert abs(flipped.float().mean().item() - 0.3) < 0.04  # 4 binomial standard deviations


def test_whole_pixel_box_copies_pixels():
    images = grey_batch(2).float() / 255
    left, top, side = 7, 3, 14  # a 14 x 14 box at column 7, row 3, resampled to 14 px
    boxes = torch.tensor([[left / 28, top / 28, side / 28, side / 28]] * 2)
    expected = images[..., top:top + side, left:left + side]
    torch.testing.assert_close(resized_crop(images, boxes, side), expected, atol=1e-5, rtol=0)
    mirrored = resized_crop(images, boxes, side, flip=torch.tensor([True, False]))
    torch.testing.assert_close(mirrored[0], torch.flip(expected[0], dims=[-1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(mirrored[1], expected[1], atol=1e-5, rtol=0)


def test_crop_boxes_follow_scale_and_ratio():
    left, top, width, height = sample_crop_boxes(5000, (0.08, 1.0), (3 / 4, 4 / 3),
                                                 torch.Generator().manual_seed(0)).unbind(1)
    assert (left >= 0).all() and (top >= 0).all() and (left + width <= 1 + 1e-6).all() and (top + height <= 1 + 1e-6).all()
    area, ratio = width * height, width / height
    fitted = ~((width == 1) & (height == 1))  # the rare fallback is the whole image
    assert (area[fitted] >= 0.08 - 1e-6).all() and (area <= 1 + 1e-6).all()
    assert (ratio[fitted] >= 3 / 4 - 1e-5).all() and (ratio[fitted] <= 4 / 3 + 1e-5).all()
    assert area.min() < 0.1 and area.max() > 0.9  # the whole range is used
    # No draw fits (area 1 with a ratio of 2 or more): torchvision's fallback, a centred 1 x 1/2 box.
    fallback = sample_crop_boxes(4, (1.0, 1.0), (2.0, 3.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(fallback, torch.tensor([[0.0, 0.25, 1.0, 0.5]] * 4))


def test_brightness_contrast_matches_torchvision():
    images = grey_batch(4).float() / 255
    brightness, contrast = torch.tensor([0.6, 1.0, 1.4, 1.2]), torch.tensor([1.3, 0.7, 1.0, 0.6])
    out = brightness_contrast(images, brightness, contrast)
    for i in range(4):
        expected = TF.adjust_contrast(TF.adjust_brightness(images[i], brightness[i].item()), contrast[i].item())
        torch.testing.assert_close(out[i], expected, atol=1e-6, rtol=0)


def test_gaussian_blur_matches_torchvision():
    images = grey_batch(3, side=16).float() / 255
    sigma = torch.tensor([0.1, 0.7, 1.0])
    out = gaussian_blur(images, sigma, kernel_size=7)
    for i in range(3):
        expected = TF.gaussian_blur(images[i], kernel_size=[7, 7], sigma=[sigma[i].item()] * 2)
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)


def test_solarize_matches_pil_threshold():
    images = grey_batch(4)
    out = BatchAugment(ViewRecipe(**{**PLAIN.__dict__, "solarize_p": 1.0}))(images, torch.Generator().manual_seed(0))
    expected = torch.stack([TF.solarize(image, 128) for image in images]).float() / 255  # uint8: 255 - x if x >= 128
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_batch_augment_rejects_colour_recipes():
    with pytest.raises(ValueError, match="grey images"):
        BatchAugment(get_method("simsiam").imagenet_views[0])
    with pytest.raises(ValueError, match="expected grey images"):
        make_mini_augment(get_method("vicreg"))(torch.zeros(2, 3, 28, 28))


def test_recipes_match_the_official_code():
    # (size, scale, jitter, jitter_p, grayscale_p, blur_p, solarize_p, interpolation, std[0]) from
    # facebookresearch/vicreg augmentations.py, swav main_swav.py/multicropdataset.py, simsiam main_simsiam.py.
    def summary(r):
        return (r.size, r.scale, r.jitter, r.jitter_p, r.grayscale_p, r.blur_p, r.solarize_p, r.interpolation, r.std[0])

    vicreg = ((0.08, 1.0), (0.4, 0.4, 0.2, 0.1), 0.8, 0.2)
    assert [summary(r) for r in get_method("vicreg").imagenet_views] == [
        (224, *vicreg, 1.0, 0.0, "bicubic", 0.229), (224, *vicreg, 0.1, 0.2, "bicubic", 0.229)]
    swav = ((0.8, 0.8, 0.8, 0.2), 0.8, 0.2, 0.5, 0.0, "bilinear", 0.228)
    assert [summary(r) for r in get_method("swav").imagenet_views] == [(224, (0.14, 1.0), *swav)] * 2 + [(96, (0.05, 0.14), *swav)] * 6
    assert [summary(r) for r in get_method("simsiam").imagenet_views] == [
        (224, (0.2, 1.0), (0.4, 0.4, 0.4, 0.1), 0.8, 0.2, 0.5, 0.0, "bilinear", 0.229)] * 2
    assert all(r.flip_p == 0.5 and r.blur_sigma == (0.1, 2.0) for rs in (get_method(m).imagenet_views for m in method_names()) for r in rs)
    # The grey versions keep each view's crop scale and blur/solarize probabilities.
    for method in ("vicreg", "simsiam"):
        assert [(r.scale, r.blur_p, r.solarize_p, r.jitter[:2]) for r in get_method(method).mini_views] == \
               [(r.scale, r.blur_p, r.solarize_p, r.jitter[:2]) for r in get_method(method).imagenet_views]


# ----------------------------------------------------------------------------- ImageNet pipelines


@pytest.fixture
def tiny_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for wnid in ("n01440764", "n01443537"):
        (tmp_path / wnid).mkdir()
        for k, (h, w) in enumerate([(60, 80), (120, 90)]):
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / wnid / f"{wnid}_{k}.JPEG")
    return tmp_path


@pytest.mark.parametrize("method, sizes", [("vicreg", [224] * 2), ("simsiam", [224] * 2),
                                           ("swav", [224] * 2 + [96] * 6)])
def test_imagenet_pipelines(tiny_image_folder, method, sizes):
    dataset = imagenet_train_dataset(tiny_image_folder, get_method(method))
    assert len(dataset) == 4 and dataset.classes == ["n01440764", "n01443537"]
    torch.manual_seed(0)
    views, label = dataset[3]
    assert label == 1
    assert [tuple(v.shape) for v in views] == [(3, s, s) for s in sizes]
    assert all(v.dtype == torch.float32 for v in views)
    assert not torch.equal(views[0], views[1])


def test_imagenet_eval_transform_and_missing_root(tiny_image_folder):
    image = Image.open(tiny_image_folder / "n01440764" / "n01440764_0.JPEG").convert("RGB")
    assert imagenet_eval_transform()(image).shape == (3, 224, 224)
    with pytest.raises(FileNotFoundError, match="class folders"):
        imagenet_train_dataset(tiny_image_folder / "nope", get_method("vicreg"))


# ----------------------------------------------------------------------------- label subsets


def test_balanced_subset_counts_per_class():
    class_sizes = {0: 10, 1: 25, 2: 4, 3: 100, 5: 15}  # class 4 absent
    labels = torch.tensor([c for c, n in class_sizes.items() for _ in range(n)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(9))]
    for fraction in (0.1, 0.5, 1.0):
        chosen = balanced_subset(labels, fraction, seed=0)
        counts = Counter(labels[chosen].tolist())
        expected = {c: max(1, math.floor(fraction * n + 0.5)) for c, n in class_sizes.items()}
        assert counts == expected
        assert len(set(chosen.tolist())) == len(chosen) and torch.equal(chosen, chosen.sort().values)
    assert Counter(labels[balanced_subset(labels, 0.1, 0)].tolist())[1] == 3  # 2.5 rounds up
    assert Counter(labels[balanced_subset(labels, 0.1, 0)].tolist())[2] == 1  # at least one


def test_balanced_subset_seeds_and_nesting():
    labels = torch.arange(10).repeat_interleave(600)  # Fashion-MNIST-like, 600 per class
    one = balanced_subset(labels, 0.01, seed=0)
    assert torch.bincount(labels[one]).tolist() == [6] * 10
    assert torch.equal(one, balanced_subset(labels.numpy(), 0.01, seed=0))
    assert not torch.equal(one, balanced_subset(labels, 0.01, seed=1))
    ten = balanced_subset(labels, 0.1, seed=0)
    assert set(one.tolist()) <= set(ten.tolist())


@pytest.mark.parametrize("labels, fraction, message", [
    (torch.zeros(4, dtype=torch.long), 0.0, "fraction"),
    (torch.zeros(4, dtype=torch.long), 1.5, "fraction"),
    (torch.zeros(2, 2, dtype=torch.long), 0.5, "1-D integer"),
    (torch.zeros(4), 0.5, "1-D integer"),
    (torch.tensor([0, -1]), 0.5, ">= 0"),
])
def test_balanced_subset_rejects_bad_input(labels, fraction, message):
    with pytest.raises(ValueError, match=message):
        balanced_subset(labels, fraction, seed=0)


def _subset_lists_folder() -> Path | None:
    configured = os.environ.get("E2MC_IMAGENET_SUBSETS")
    folder = Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet_subsets"
    return folder if (folder / "1percent.txt").is_file() and (folder / "10percent.txt").is_file() else None


LISTS = _subset_lists_folder()
needs_lists = pytest.mark.skipif(LISTS is None, reason="SimCLR's subset lists not found: set E2MC_IMAGENET_SUBSETS "
                                 "or place them in <repo>/../shared/data/imagenet_subsets")


@needs_lists
def test_real_simclr_lists():
    readme = (LISTS / "README.md").read_text()
    for name, size, per_class in (("1percent", 12811, {13: 811, 12: 189}), ("10percent", 128116, {129: 116, 128: 884})):
        digest = hashlib.sha256((LISTS / f"{name}.txt").read_bytes()).hexdigest()
        assert re.search(rf"{digest}\s+{name}\.txt", readme) and digest == IMAGENET_SUBSET_SHA256[name]
        names = read_imagenet_subset(LISTS / f"{name}.txt")
        per_wnid = Counter(n.split("_")[0] for n in names)
        assert len(names) == size and len(per_wnid) == 1000
        assert Counter(per_wnid.values()) == per_class
    assert set(read_imagenet_subset(LISTS / "1percent.txt")) <= set(read_imagenet_subset(LISTS / "10percent.txt"))


@needs_lists
def test_subset_indices_on_real_lists():
    # An ImageFolder stand-in whose samples are the 10 % names plus decoys, in ImageFolder's sorted order.
    names = read_imagenet_subset(LISTS / "10percent.txt")
    names = sorted(names + [n.replace(".JPEG", "0.JPEG") for n in names[::7]])
    dataset = SimpleNamespace(samples=[(f"/imagenet/train/{n.split('_')[0]}/{n}", 0) for n in names])
    indices = imagenet_subset_indices(dataset, LISTS / "1percent.txt")
    picked = [os.path.basename(dataset.samples[i][0]) for i in indices]
    assert sorted(picked) == sorted(read_imagenet_subset(LISTS / "1percent.txt"))


def test_read_subset_list_validation(tmp_path):
    good = tmp_path / "good.txt"
    good.write_bytes(b"n04235860_14959.JPEG\r\nn01440764_7.JPEG\n\n")
    assert read_imagenet_subset(good) == ["n04235860_14959.JPEG", "n01440764_7.JPEG"]
    bad = tmp_path / "bad.txt"
    bad.write_text("n04235860_14959.JPEG\nn0423_1.JPEG\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: .*n0423_1.JPEG"):
        read_imagenet_subset(bad)
    repeated = tmp_path / "repeated.txt"
    repeated.write_text("n01440764_7.JPEG\nn01440764_8.JPEG\nn01440764_7.JPEG\n")
    with pytest.raises(ValueError, match=r"repeated.txt:3: n01440764_7.JPEG repeats line 1"):
        read_imagenet_subset(repeated)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="lists no file names"):
        read_imagenet_subset(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="download_imagenet_subset"):
        read_imagenet_subset(tmp_path / "absent.txt")


def test_subset_indices_on_image_folder(tmp_path):
    for wnid, numbers in (("n01440764", (3, 1, 2)), ("n01443537", (5, 4))):
        (tmp_path / wnid).mkdir()
        for k in numbers:
            (tmp_path / wnid / f"{wnid}_{k}.JPEG").touch()  # ImageFolder lists files without opening them
    dataset = torchvision.datasets.ImageFolder(str(tmp_path))
    wanted = ["n01443537_4.JPEG", "n01440764_2.JPEG"]
    indices = imagenet_subset_indices(dataset, wanted)
    assert [os.path.basename(dataset.samples[i][0]) for i in indices] == ["n01440764_2.JPEG", "n01443537_4.JPEG"]
    assert [dataset.samples[i][1] for i in indices] == [0, 1]
    with pytest.raises(ValueError, match=r"2 of 3 listed images are not in the dataset .*n01440764_9.JPEG, n02_x"):
        imagenet_subset_indices(dataset, ["n01440764_1.JPEG", "n01440764_9.JPEG", "n02_x"])
    (tmp_path / "n01443537" / "n01440764_8.JPEG").touch()
    misplaced = torchvision.datasets.ImageFolder(str(tmp_path))
    with pytest.raises(ValueError, match="sits in class folder 'n01443537'"):
        imagenet_subset_indices(misplaced, ["n01440764_8.JPEG"])


def test_download_checks_sha256(tmp_path, monkeypatch):
    source = tmp_path / "served.txt"
    source.write_text("n01440764_7.JPEG\n")
    monkeypatch.setitem(subsets.IMAGENET_SUBSET_SHA256, "1percent", hashlib.sha256(source.read_bytes()).hexdigest())
    target = download_imagenet_subset("1percent", tmp_path / "lists", url=source.as_uri())
    assert target == tmp_path / "lists" / "1percent.txt" and target.read_bytes() == source.read_bytes()
    # Already in place with the right checksum: nothing is fetched (this URL would fail).
    assert download_imagenet_subset("1percent", tmp_path / "lists", url=(tmp_path / "gone").as_uri()) == target
    corrupt = tmp_path / "corrupt.txt"
    corrupt.write_text("n01440764_8.JPEG\n")
    with pytest.raises(ValueError, match="sha256"):
        download_imagenet_subset("1percent", tmp_path / "other", url=corrupt.as_uri())
    assert not (tmp_path / "other" / "1percent.txt").exists()
    with pytest.raises(UserError, match="copy 1percent.txt from github.com/google-research/simclr"):
        download_imagenet_subset("1percent", tmp_path / "other", url=(tmp_path / "gone").as_uri())
    with pytest.raises(ValueError, match="name must be one of"):
        download_imagenet_subset("5percent", tmp_path)


@needs_lists
def test_download_accepts_the_real_list(tmp_path):
    target = download_imagenet_subset("10percent", tmp_path, url=(LISTS / "10percent.txt").as_uri())
    assert target.read_bytes() == (LISTS / "10percent.txt").read_bytes()


def test_a_truncated_gzip_names_its_file(tmp_path):
    write_fake_fashion_mnist(tmp_path / "d")
    path = tmp_path / "d" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"{path} is a truncated or corrupt gzip file"):
        read_idx(path)


def test_the_folder_fashion_mnist_was_read_from_is_logged_once(tmp_path, capsys, monkeypatch):
    """A run's log says which copy of Fashion-MNIST it read (issue 23: it was logged nowhere)."""
    from fake_data import write_fake_fashion_mnist

    monkeypatch.setattr(fmnist, "_ANNOUNCED", set())
    root = write_fake_fashion_mnist(tmp_path, n_train=16, n_test=8)
    fmnist.load_fashion_mnist("train", root=root)
    fmnist.load_fashion_mnist("test", root=root)
    folder = fmnist.find_fashion_mnist(root, download=False)
    assert capsys.readouterr().err.count(f"[e2mc] Fashion-MNIST from {folder}\n") == 1

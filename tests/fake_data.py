"""Small datasets written in the real on-disk formats, for tests that must not need downloads."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

_IDX_TYPE = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
             np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write ``array`` in the IDX format (big-endian header: 0, 0, type byte, ndim, then each dimension)."""
    array = np.asarray(array)
    if array.dtype.itemsize > 1:
        array = array.astype(array.dtype.newbyteorder(">"))
    header = struct.pack(">BBBB", 0, 0, _IDX_TYPE[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path = Path(str(path) + ".gz") if compress else Path(path)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_fake_fashion_mnist(root: Path, n_train: int = 512, n_test: int = 128, seed: int = 0) -> Path:
    """Four Fashion-MNIST-named IDX files of 28 x 28 uint8 images in ``root``; returns ``root``.

    Each of the 10 classes is a fixed random blob pattern plus noise, so the classes are learnable.
    """
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(10, 7, 7))
    templates = np.kron(templates, np.ones((4, 4)))  # 28 x 28, blocky
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = templates[labels] + rng.normal(0, 40, size=(n, 28, 28))
        write_idx(root / f"{split}-images-idx3-ubyte", np.clip(images, 0, 255).astype(np.uint8), compress=True)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels.astype(np.uint8), compress=True)
    return root


def write_fake_dtd(root: Path, textures=("banded", "dotted"), seed: int = 0) -> Path:
    """DTD as released, under ``root``: dtd/dtd/images/<texture>/<texture>_NNNN.jpg (40 x 50 RGB noise)
    and labels/{train,val,test}1.txt; per texture two training images, one val, one test. Returns root."""
    from PIL import Image

    base = Path(root) / "dtd" / "dtd"
    rng = np.random.default_rng(seed)
    lines = {"train": [], "val": [], "test": []}
    for texture in textures:
        (base / "images" / texture).mkdir(parents=True)
        for index, split in enumerate(("train", "train", "val", "test")):
            name = f"{texture}_{index:04d}.jpg"
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(base / "images" / texture / name)
            lines[split].append(f"{texture}/{name}")
    (base / "labels").mkdir()
    for split, entries in lines.items():
        (base / "labels" / f"{split}1.txt").write_text("\n".join(entries) + "\n")
    return Path(root)

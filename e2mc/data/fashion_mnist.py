"""Fashion-MNIST: finding it on disk, reading its IDX files, loading a split.

Where the files are looked for, in order:
  1. the folder the user gives (config key ``data.root``, ``root=`` in Python), or its
     torchvision layout ``<root>/FashionMNIST/raw/``;
  2. ``/usr/share/datasets/fashion-mnist``, where the Debian package
     ``dataset-fashion-mnist`` puts the four ``*-idx?-ubyte.gz`` files;
  3. torchvision's layout under :data:`DEFAULT_DOWNLOAD_ROOT`;
  4. a torchvision download into ``<root or DEFAULT_DOWNLOAD_ROOT>/FashionMNIST/raw/``
     (needs internet).
"""
from __future__ import annotations

import gzip
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

from e2mc.errors import UserError

# Per-pixel statistics of the 60,000 training images scaled to [0, 1] (measured on the
# Debian package's files: mean 0.28604, std 0.35302).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DOWNLOAD_ROOT = Path.home() / ".cache" / "e2mc"

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed or not, into a native-endian numpy array.

    torchvision's ``read_image_file`` opens files with plain ``open`` and cannot read
    the ``.gz`` files that the Debian package ships, hence this small reader.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as error:
            raise UserError(f"{path} is a truncated or corrupt gzip file ({error}); download or copy it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}); "
                         "expected e.g. train-images-idx3-ubyte[.gz] from Fashion-MNIST")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise UserError(f"{path} is truncated or corrupt: header says shape {shape} "
                         f"({expected} bytes) but {len(raw) - offset} bytes follow; download it again")
    data = np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # a native-endian, writable copy


def _idx_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (uncompressed first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing_files(folder: Path) -> list[str]:
    names = [name for pair in FASHION_MNIST_FILES.values() for name in pair]
    return [f"{name}[.gz]" for name in names if _idx_file(folder, name) is None]


def _candidates(root: Path | None) -> list[Path]:
    # An explicit root is the only place looked in: silently reading another copy would train on data
    # the user did not name.
    if root is not None:
        return [root, root / "FashionMNIST" / "raw"]
    return [DEBIAN_FASHION_MNIST, DEFAULT_DOWNLOAD_ROOT / "FashionMNIST" / "raw"]


def find_fashion_mnist(root: str | Path | None = None, download: bool = True) -> Path:
    """The folder holding the four Fashion-MNIST IDX files (each plain or ``.gz``).

    With ``root`` given, looks in ``root`` and ``root/FashionMNIST/raw`` only (never in another
    copy); without it, in :data:`DEBIAN_FASHION_MNIST` and ``DEFAULT_DOWNLOAD_ROOT/FashionMNIST/raw``.
    If none holds all four files and ``download`` is true, asks torchvision to download them into
    ``<root or DEFAULT_DOWNLOAD_ROOT>/FashionMNIST/raw``. Raises FileNotFoundError naming every
    place tried and the ways to fix it.
    """
    root = Path(root).expanduser() if root is not None else None
    if root is not None and not root.exists():  # a typo: no FashionMNIST/ folders are downloaded under it
        raise FileNotFoundError(f"data.root={root} does not exist; give the folder that holds the four "
                                "Fashion-MNIST IDX files (or create it first, to download them into it)")
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"data.root={root} is a file; give the folder that holds the four Fashion-MNIST "
                                "IDX files (train-images-idx3-ubyte[.gz], ...)")
    tried = []
    for folder in _candidates(root):
        if not folder.is_dir():
            tried.append(f"{folder}: no such folder")
            continue
        missing = _missing_files(folder)
        if not missing:
            return folder
        tried.append(f"{folder}: missing {', '.join(missing)}")

    download_root = root if root is not None else DEFAULT_DOWNLOAD_ROOT
    raw_folder = download_root / "FashionMNIST" / "raw"
    if download:
        import torchvision

        try:
            torchvision.datasets.FashionMNIST(str(download_root), train=True, download=True)
        except (RuntimeError, OSError) as error:  # torchvision wraps URLError in RuntimeError
            reason = " ".join(str(error).split())
            tried.append(f"torchvision download into {raw_folder}: failed ({reason})")
        else:
            if not _missing_files(raw_folder):
                return raw_folder
            tried.append(f"torchvision download into {raw_folder}: files still missing afterwards")
    else:
        tried.append("torchvision download: not attempted (download=False)")

    where = f"data.root={root} does not hold Fashion-MNIST" if root is not None else "Fashion-MNIST not found"
    raise FileNotFoundError(
        where + ". Looked in:\n  - " + "\n  - ".join(tried) + "\n"
        "Fix it in one of three ways:\n"
        "  1. pass the folder holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] as the config key data.root "
        "(on the command line: data.root=/path/to/folder; in Python: root=...);\n"
        f"  2. install the Debian package: apt-get install dataset-fashion-mnist "
        f"(puts the files in {DEBIAN_FASHION_MNIST});\n"
        f"  3. run once with internet access and download enabled, so that torchvision "
        f"downloads them into {raw_folder}."
    )


_ANNOUNCED: set[Path] = set()


def load_fashion_mnist(
    split: str = "train", root: str | Path | None = None, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of Fashion-MNIST.

    Args:
        split: "train" (60,000 images) or "test" (10,000 images).
        root: optional folder to look in first (see :func:`find_fashion_mnist`).
        download: let torchvision download the files when no local copy is found.

    Returns:
        images: uint8 tensor (N, 28, 28), pixel values 0..255.
        labels: int64 tensor (N,), class indices 0..9 (names in FASHION_MNIST_CLASSES).
    """
    if split not in FASHION_MNIST_FILES:
        raise UserError(f"split must be one of {sorted(FASHION_MNIST_FILES)}, got {split!r}")
    folder = find_fashion_mnist(root, download=download)
    if folder not in _ANNOUNCED:  # once per process: which copy a run read, for its log
        _ANNOUNCED.add(folder)
        print(f"[e2mc] Fashion-MNIST from {folder}", file=sys.stderr, flush=True)
    image_path, label_path = (_idx_file(folder, name) for name in FASHION_MNIST_FILES[split])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise UserError(f"{image_path} holds {images.dtype} data of shape {images.shape}, "
                         "expected uint8 images of shape (N, 28, 28); is it the right file?")
    if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise UserError(f"{label_path} holds {labels.dtype} data of shape {labels.shape}, expected "
                         f"{len(images)} uint8 labels to match {image_path}; is it the right file?")
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise UserError(f"{label_path} has label {labels.max()}, Fashion-MNIST has 10 classes (0..9)")
    return torch.from_numpy(images), torch.from_numpy(labels).long()

"""Label subsets: class-balanced random fractions, and SimCLR's ImageNet 1 % / 10 % lists.

SimCLR's lists (google-research/simclr, ``imagenet_subsets/``) hold one training file name per
line, e.g. ``n04235860_14959.JPEG``; the class is the WordNet id before the underscore. They
are not part of this repository: pass their path, or fetch them with
:func:`download_imagenet_subset`, which checks their sha256.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import torch

from e2mc.errors import UserError

SIMCLR_SUBSET_URL = "https://raw.githubusercontent.com/google-research/simclr/master/imagenet_subsets/{name}.txt"
IMAGENET_SUBSET_SHA256 = {
    "1percent": "71e82a48ba78252683ae334c4d019ebd5c6e855b9599c1389fbe83eb9549cf17",
    "10percent": "6d09de11e7bdaf5b1f3b1f249b6183695f97310cdd20f0c03e7235b6b9392091",
}
_SUBSET_NAME = re.compile(r"(n\d{8})_\d+\.JPEG")


def balanced_subset(labels, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a class-balanced random subset.

    Each class c with n_c samples keeps ``k_c = max(1, floor(fraction * n_c + 0.5))`` of them
    (rounded half up, at least one so that every class stays represented), chosen uniformly at
    random. The same seed gives the same subset; with one seed the subsets are nested: the
    1 % subset lies inside the 10 % one, as SimCLR's lists do.

    Args:
        labels: class indices >= 0, shape (N,) (tensor, array or sequence of ints).
        fraction: in (0, 1]; 1 keeps everything.
        seed: integer seed of the draw.

    Returns:
        int64 tensor of sorted, distinct indices into ``labels``.
    """
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor of class indices, got "
                         f"{labels.dtype} of shape {tuple(labels.shape)}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], e.g. 0.01 for 1 % of the labels, got {fraction}")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0, got {int(labels.min())}")
    labels = labels.long().cpu()
    counts = torch.bincount(labels)
    keep = torch.clamp(torch.floor(fraction * counts.double() + 0.5), min=1).long()
    keep = torch.minimum(keep, counts)  # also 0 for absent classes

    generator = torch.Generator().manual_seed(int(seed))
    shuffled = torch.randperm(labels.numel(), generator=generator)
    # A stable sort by label groups the shuffled indices by class, in random order within each.
    by_class = shuffled[torch.sort(labels[shuffled], stable=True).indices]
    class_of = labels[by_class]
    rank_in_class = torch.arange(labels.numel()) - (torch.cumsum(counts, 0) - counts)[class_of]
    return by_class[rank_in_class < keep[class_of]].sort().values


def read_imagenet_subset(path: str | Path) -> list[str]:
    """File names of one of SimCLR's ImageNet subset lists (``1percent.txt``, ``10percent.txt``).

    One name per line, ``<wnid>_<number>.JPEG``; surrounding whitespace and blank lines are
    ignored. Raises ValueError naming the line of any malformed or repeated name.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet subset list {path} not found; pass the path of SimCLR's "
                                "1percent.txt or 10percent.txt, or fetch it with download_imagenet_subset")
    names, seen = [], {}
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if not _SUBSET_NAME.fullmatch(name):
            raise UserError(f"{path}:{line_number}: expected an ImageNet training file name like "
                             f"n04235860_14959.JPEG, got {line!r}; is this SimCLR's subset list?")
        if name in seen:
            raise UserError(f"{path}:{line_number}: {name} repeats line {seen[name]}")
        seen[name] = line_number
        names.append(name)
    if not names:
        raise UserError(f"{path} lists no file names")
    return names


def subset_wnid(name: str) -> str:
    """The class (WordNet id) of a subset file name: n04235860_14959.JPEG -> n04235860."""
    match = _SUBSET_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"expected an ImageNet training file name like n04235860_14959.JPEG, got {name!r}")
    return match.group(1)


def imagenet_subset_indices(dataset, subset: str | Path | Sequence[str]) -> torch.Tensor:
    """Indices into an ImageFolder over ImageNet's train folder of the images a subset lists.

    Args:
        dataset: anything with ``.samples``, a list of (path, class index), e.g.
            torchvision.datasets.ImageFolder or e2mc.data.imagenet_train_dataset.
        subset: path of a SimCLR list, or the file names themselves.

    Returns:
        int64 tensor of sorted indices, one per listed name. Raises ValueError listing (a few
        of) the names not found, or any name found under a class folder other than its wnid.
    """
    names = read_imagenet_subset(subset) if isinstance(subset, (str, Path)) else list(subset)
    index_of = {}
    for index, (path, _) in enumerate(dataset.samples):
        index_of.setdefault(os.path.basename(path), index)
    missing = [name for name in names if name not in index_of]
    if missing:
        raise UserError(f"{len(missing)} of {len(names)} listed images are not in the dataset "
                         f"({len(dataset.samples)} images), e.g. {', '.join(missing[:5])}; point the "
                         "dataset at ImageNet's full train folder (root/<wnid>/<wnid>_<n>.JPEG)")
    indices = []
    for name in names:
        folder = Path(dataset.samples[index_of[name]][0]).parent.name
        if folder != subset_wnid(name):
            raise UserError(f"{name} sits in class folder {folder!r}, not {subset_wnid(name)!r}; "
                             "the train folder must hold one folder per wnid")
        indices.append(index_of[name])
    return torch.tensor(sorted(indices), dtype=torch.long)


def sha256_of(path: str | Path) -> str:
    """Hex sha256 digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_imagenet_subset(name: str, dest: str | Path, url: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch SimCLR's ``<name>.txt`` ("1percent" or "10percent") into folder ``dest``.

    The file is written only if its sha256 matches :data:`IMAGENET_SUBSET_SHA256`; a file
    already in place with the right checksum is kept without downloading. ``url`` overrides
    :data:`SIMCLR_SUBSET_URL` (e.g. a mirror or a ``file://`` URL). Returns the file's path.
    """
    if name not in IMAGENET_SUBSET_SHA256:
        raise UserError(f"name must be one of {sorted(IMAGENET_SUBSET_SHA256)}, got {name!r}")
    expected = IMAGENET_SUBSET_SHA256[name]
    target = Path(dest) / f"{name}.txt"
    if target.is_file() and sha256_of(target) == expected:
        return target
    url = url or SIMCLR_SUBSET_URL.format(name=name)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except OSError as error:  # URLError and socket timeouts are OSErrors
        raise UserError(f"could not download {url} ({error}); without internet, copy {name}.txt from "
                           "github.com/google-research/simclr/tree/master/imagenet_subsets by hand "
                           f"into {target.parent}") from error
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise UserError(f"{url} has sha256 {actual}, expected {expected}; the file is corrupt or "
                         "not SimCLR's list, nothing was written")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:  # no half-written file
        tmp.write(payload)
    os.replace(tmp.name, target)
    return target

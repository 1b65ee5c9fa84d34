"""Each method's own augmentations: PIL pipelines for ImageNet, batched tensor ops for grey 28 px images.

A :class:`ViewRecipe` describes how one view is drawn; each method is a list of recipes,
one per view. The ImageNet recipes follow the official code:

* VICReg (facebookresearch/vicreg ``augmentations.py``, BYOL's asymmetric pair): 224 px,
  bicubic RandomResizedCrop scale (0.08, 1), flip, ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8,
  grayscale p 0.2, Gaussian blur sigma U(0.1, 2) with p 1.0 / 0.1, solarize p 0.0 / 0.2.
* SwAV (facebookresearch/swav ``multicropdataset.py``, ``--nmb_crops 2 6 --size_crops 224 96
  --min_scale_crops 0.14 0.05 --max_scale_crops 1. 0.14``): colour distortion s = 1, i.e.
  ColorJitter(0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale p 0.2, blur p 0.5; SwAV's std is
  (0.228, 0.224, 0.225).
* SimSiam (facebookresearch/simsiam, MoCo v2): 224 px, scale (0.2, 1),
  ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2, blur sigma U(0.1, 2) p 0.5, flip.

All three apply crop, flip, jitter, grayscale, blur, solarize in that order (SimSiam flips
last, which gives the same distribution: flipping commutes with the other steps).

Fashion-MNIST (grey, 28 px) uses the same recipes with three changes, see :data:`MINI_RECIPES`:
saturation, hue and grayscale are dropped (they are identities on grey images); crops are
28 px, SwAV's are 2 x 28 px (scale 0.14-1) + 4 x 16 px (scale 0.05-0.14; 16 px keeps roughly
SwAV's small/large side ratio 96/224 while leaving a small CNN a few feature-map pixels, and
4 rather than 6 small crops keeps a CPU epoch short); and the blur sigma is U(0.1, 1.0) px,
since SimCLR sizes its blur kernel at 10 % of the image side and 2 px on a 28 px garment
erases most of it. These run on whole batches at once (:class:`BatchAugment`), since
per-image PIL transforms are far too slow for a CPU epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from PIL import ImageFilter
from torch import nn
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from e2mc.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SWAV_IMAGENET_STD = (0.228, 0.224, 0.225)  # as in SwAV's and the E2MC authors' code
METHODS = ("vicreg", "swav", "simsiam")
SOLARIZE_THRESHOLD = 128  # PIL's ImageOps.solarize default, on 0..255 pixel values


@dataclass(frozen=True)
class ViewRecipe:
    """How one augmented view is drawn.

    size: output side in pixels. scale, ratio: RandomResizedCrop's area fraction and aspect
    ratio ranges. jitter: ColorJitter (brightness, contrast, saturation, hue), applied with
    probability jitter_p. blur_sigma: range of the Gaussian blur's standard deviation in
    output pixels, applied with probability blur_p. solarize_p: probability of inverting
    pixels >= 128/255. mean, std: per-channel normalisation applied last.
    """

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


_VICREG = ViewRecipe(224, (0.08, 1.0), interpolation="bicubic", jitter=(0.4, 0.4, 0.2, 0.1))
_SWAV_LARGE = ViewRecipe(224, (0.14, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5, std=SWAV_IMAGENET_STD)
_SIMSIAM = ViewRecipe(224, (0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5)

IMAGENET_RECIPES: dict[str, tuple[ViewRecipe, ...]] = {
    "vicreg": (replace(_VICREG, blur_p=1.0, solarize_p=0.0), replace(_VICREG, blur_p=0.1, solarize_p=0.2)),
    "swav": (_SWAV_LARGE,) * 2 + (replace(_SWAV_LARGE, size=96, scale=(0.05, 0.14)),) * 6,
    "simsiam": (_SIMSIAM,) * 2,
}


def _grey(recipe: ViewRecipe, size: int, scale: tuple[float, float] | None = None) -> ViewRecipe:
    """The grey 28 px version of an ImageNet recipe (see the module docstring)."""
    brightness, contrast, _, _ = recipe.jitter
    return replace(recipe, size=size, scale=scale or recipe.scale, interpolation="bilinear",
                   jitter=(brightness, contrast, 0.0, 0.0), grayscale_p=0.0, blur_sigma=(0.1, 1.0),
                   mean=(FASHION_MNIST_MEAN,), std=(FASHION_MNIST_STD,))


MINI_RECIPES: dict[str, tuple[ViewRecipe, ...]] = {
    "vicreg": tuple(_grey(r, 28) for r in IMAGENET_RECIPES["vicreg"]),
    "swav": (_grey(_SWAV_LARGE, 28),) * 2 + (_grey(_SWAV_LARGE, 16, (0.05, 0.14)),) * 4,
    "simsiam": (_grey(_SIMSIAM, 28),) * 2,
}


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


# ----------------------------------------------------------------------------- ImageNet (PIL)


class RandomPILGaussianBlur:
    """PIL Gaussian blur with sigma ~ U(sigma), applied with probability p (as VICReg, SwAV,
    SimSiam do it; PIL's radius is the standard deviation). Draws from torch's RNG so that
    DataLoader worker seeding covers it."""

    def __init__(self, p: float, sigma: tuple[float, float] = (0.1, 2.0)):
        self.p, self.sigma = p, sigma

    def __call__(self, img):
        if torch.rand(()).item() >= self.p:
            return img
        low, high = self.sigma
        return img.filter(ImageFilter.GaussianBlur(radius=low + (high - low) * torch.rand(()).item()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, sigma={self.sigma})"


def pil_view_transform(recipe: ViewRecipe) -> transforms.Compose:
    """A torchvision (v1) pipeline: PIL image -> float tensor (C, size, size), normalised."""
    steps = [
        transforms.RandomResizedCrop(recipe.size, scale=recipe.scale, ratio=recipe.ratio,
                                     interpolation=InterpolationMode(recipe.interpolation)),
        transforms.RandomHorizontalFlip(p=recipe.flip_p),
    ]
    if recipe.jitter_p > 0 and any(recipe.jitter):
        steps.append(transforms.RandomApply([transforms.ColorJitter(*recipe.jitter)], p=recipe.jitter_p))
    if recipe.grayscale_p > 0:
        steps.append(transforms.RandomGrayscale(p=recipe.grayscale_p))
    if recipe.blur_p > 0:
        steps.append(RandomPILGaussianBlur(recipe.blur_p, recipe.blur_sigma))
    if recipe.solarize_p > 0:
        steps.append(transforms.RandomSolarize(SOLARIZE_THRESHOLD, p=recipe.solarize_p))
    steps += [transforms.ToTensor(), transforms.Normalize(recipe.mean, recipe.std)]
    return transforms.Compose(steps)


class MultiViewTransform:
    """Applies one transform per view: image -> list of views (list order = recipe order)."""

    def __init__(self, view_transforms: Sequence[Callable]):
        if not view_transforms:
            raise ValueError("MultiViewTransform needs at least one view transform")
        self.view_transforms = list(view_transforms)

    def __call__(self, img) -> list:
        return [transform(img) for transform in self.view_transforms]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.view_transforms)} views)"


def imagenet_multiview_transform(method: str) -> MultiViewTransform:
    """PIL image -> list of normalised views: 2 x (3, 224, 224) for VICReg and SimSiam,
    2 x (3, 224, 224) + 6 x (3, 96, 96) for SwAV."""
    _check_method(method)
    return MultiViewTransform([pil_view_transform(r) for r in IMAGENET_RECIPES[method]])


def imagenet_train_dataset(root, method: str) -> torchvision.datasets.ImageFolder:
    """ImageNet's train folder (``root/<wnid>/<wnid>_<n>.JPEG``) yielding (list of views, label)."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"ImageNet train folder {root} does not exist; pass the folder "
                                "that holds the class folders n01440764/, n01443537/, ...")
    return torchvision.datasets.ImageFolder(str(root), transform=imagenet_multiview_transform(method))


def imagenet_eval_transform() -> transforms.Compose:
    """Validation transform of the authors' linear probe: resize 256, centre crop 224."""
    return transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                               transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, SWAV_IMAGENET_STD)])


def imagenet_probe_transform() -> transforms.Compose:
    """Training transform of the authors' linear probe: RandomResizedCrop 224 and flip."""
    return transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                               transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, SWAV_IMAGENET_STD)])


# ----------------------------------------------------------------------------- batched, grey


def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W), uint8 0..255 or float 0..1 -> float32 (B, 1, H, W) in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"expected grey images of shape (B, H, W) or (B, 1, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 (0..255) or floating point (0..1), got {images.dtype}")
    return images.float()


def normalize_fashion_mnist(images: torch.Tensor) -> torch.Tensor:
    """Evaluation input: uint8 (B, 28, 28) -> float (B, 1, 28, 28), standardised with the train statistics."""
    return (as_float_images(images) - FASHION_MNIST_MEAN) / FASHION_MNIST_STD


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=_device(generator))


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def sample_crop_boxes(n: int, scale: tuple[float, float], ratio: tuple[float, float],
                      generator: torch.Generator | None = None, attempts: int = 10) -> torch.Tensor:
    """RandomResizedCrop's box sampling for n square images, in fractions of the image side.

    As torchvision: area ~ U(scale), log aspect ratio ~ U(log ratio); the first of ``attempts``
    draws that fits is kept, otherwise the largest centred box with the nearest allowed ratio.
    Unlike torchvision the boxes are not rounded to whole pixels.

    Returns (n, 4): left, top, width, height, all in [0, 1] with left + width <= 1, top + height <= 1.
    """
    area = _uniform(n * attempts, *scale, generator).view(n, attempts)
    log_ratio = _uniform(n * attempts, math.log(ratio[0]), math.log(ratio[1]), generator).view(n, attempts)
    width, height = (area * log_ratio.exp()).sqrt(), (area / log_ratio.exp()).sqrt()
    fits = (width <= 1) & (height <= 1)
    first = fits.float().argmax(dim=1, keepdim=True)  # index of the first fitting draw (0 if none)
    width, height, found = width.gather(1, first)[:, 0], height.gather(1, first)[:, 0], fits.any(dim=1)
    nearest = min(max(1.0, ratio[0]), ratio[1])  # the square image's ratio, clamped to the range
    width = torch.where(found, width, torch.full_like(width, min(1.0, nearest)))
    height = torch.where(found, height, torch.full_like(height, min(1.0, 1 / nearest)))
    # Fitting boxes sit anywhere inside the image; fallback boxes are centred.
    position = _uniform(2 * n, 0.0, 1.0, generator).view(2, n).where(found, torch.full_like(width, 0.5))
    left, top = position[0] * (1 - width), position[1] * (1 - height)
    return torch.stack([left, top, width, height], dim=1)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int,
                 flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crop each image to its box, optionally mirror it, and resample it to size x size (bilinear).

    Args:
        images: float (B, C, H, W).
        boxes: (B, 4) left, top, width, height in fractions of the image side.
        size: output side in pixels.
        flip: optional bool (B,); True mirrors that image left-right.

    Returns float (B, C, size, size). A box of whole pixels resampled to its own size copies
    those pixels exactly (output pixel centres land on input pixel centres).
    """
    left, top, width, height = boxes.to(images.device, images.dtype).unbind(1)
    sign = torch.ones_like(width) if flip is None else 1 - 2 * flip.to(images.device, images.dtype)
    zero = torch.zeros_like(width)
    # affine_grid maps output coords in [-1, 1] to input coords in [-1, 1]: x_in = a x_out + c.
    theta = torch.stack([torch.stack([width * sign, zero, 2 * left + width - 1], 1),
                         torch.stack([zero, height, 2 * top + height - 1], 1)], 1)
    grid = F.affine_grid(theta, [images.shape[0], images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def brightness_contrast(images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_brightness then adjust_contrast with per-image factors (B,) on
    grey float images (B, 1, H, W) in [0, 1]. Without clipping the two steps commute, so
    ColorJitter's random order matters only at saturated pixels."""
    images = (images * brightness.view(-1, 1, 1, 1)).clamp(0, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    contrast = contrast.view(-1, 1, 1, 1)
    return (contrast * images + (1 - contrast) * mean).clamp(0, 1)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Per-image Gaussian blur with standard deviations sigma (B,) in pixels, by one grouped
    separable convolution with reflect padding (as torchvision's gaussian_blur on tensors)."""
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    batch, channels, height, width = images.shape
    offsets = torch.arange(kernel_size, device=images.device, dtype=images.dtype) - kernel_size // 2
    kernel = torch.exp(-0.5 * (offsets / sigma.to(images).view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (B*C, K)
    pad = kernel_size // 2
    x = F.pad(images.reshape(1, batch * channels, height, width), (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, kernel.view(-1, 1, 1, kernel_size), groups=batch * channels)
    x = F.conv2d(x, kernel.view(-1, 1, kernel_size, 1), groups=batch * channels)
    return x.view(batch, channels, height, width)


class BatchAugment(nn.Module):
    """One view's augmentation applied to a whole batch of grey images, each with its own
    random parameters: crop + flip (one grid_sample), brightness/contrast, blur, solarize,
    normalisation. All randomness comes from the ``generator`` passed to forward.

    Input: (B, 1, H, W) or (B, H, W), uint8 or float in [0, 1] (H = W).
    Output: float32 (B, 1, size, size), normalised with the recipe's mean and std.
    """

    def __init__(self, recipe: ViewRecipe):
        super().__init__()
        _, _, saturation, hue = recipe.jitter
        if saturation or hue or recipe.grayscale_p:
            raise ValueError("BatchAugment works on grey images, where saturation, hue and grayscale "
                             "are identities; set them to 0 in the recipe (see MINI_RECIPES)")
        if recipe.interpolation != "bilinear":
            raise ValueError(f"BatchAugment resamples bilinearly; set interpolation='bilinear', "
                             f"got {recipe.interpolation!r}")
        if len(recipe.mean) != 1 or len(recipe.std) != 1:
            raise ValueError("BatchAugment works on grey images; give one mean and one std")
        self.recipe = recipe
        self.kernel_size = 2 * math.ceil(3 * recipe.blur_sigma[1]) + 1  # holds +-3 sigma

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        r, x = self.recipe, as_float_images(images)
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"BatchAugment expects square images, got {tuple(x.shape[-2:])}")
        n, device = x.shape[0], x.device

        def draw(low: float, high: float) -> torch.Tensor:
            return _uniform(n, low, high, generator).to(device)

        def happens(p: float) -> torch.Tensor:
            return draw(0, 1) < p

        boxes = sample_crop_boxes(n, r.scale, r.ratio, generator)
        x = resized_crop(x, boxes, r.size, flip=happens(r.flip_p))
        brightness, contrast = r.jitter[:2]
        jitter_on = happens(r.jitter_p)
        ones = torch.ones(n, device=device)
        b = torch.where(jitter_on, draw(max(0.0, 1 - brightness), 1 + brightness), ones)
        c = torch.where(jitter_on, draw(max(0.0, 1 - contrast), 1 + contrast), ones)
        x = brightness_contrast(x, b, c)
        blur_on, sigma = happens(r.blur_p), draw(*r.blur_sigma)
        if blur_on.any():
            x = torch.where(blur_on.view(-1, 1, 1, 1), gaussian_blur(x, sigma, self.kernel_size), x)
        solarize_on = happens(r.solarize_p).view(-1, 1, 1, 1)
        # Half a grey level below 128/255: the same as PIL on 8-bit values, robust to resampling noise.
        x = torch.where(solarize_on & (x >= (SOLARIZE_THRESHOLD - 0.5) / 255), 1 - x, x)
        return (x - r.mean[0]) / r.std[0]

    def extra_repr(self) -> str:
        return repr(self.recipe)


class MultiViewBatchAugment(nn.Module):
    """Several views of one batch: images (B, 1, H, W) -> list of (B, 1, size_v, size_v)."""

    def __init__(self, recipes: Sequence[ViewRecipe]):
        super().__init__()
        if not recipes:
            raise ValueError("MultiViewBatchAugment needs at least one view recipe")
        self.views = nn.ModuleList(BatchAugment(r) for r in recipes)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        images = as_float_images(images)  # convert once, not per view
        return [view(images, generator) for view in self.views]


def make_mini_augment(method: str) -> MultiViewBatchAugment:
    """The Fashion-MNIST augmentation of a method: 2 x 28 px views for VICReg and SimSiam,
    2 x 28 px + 4 x 16 px for SwAV (see MINI_RECIPES)."""
    _check_method(method)
    return MultiViewBatchAugment(MINI_RECIPES[method])

"""Augmentations from view recipes: PIL pipelines for ImageNet, batched tensor ops for grey 28 px images.

Each method declares its views (a list of :class:`e2mc.data.recipes.ViewRecipe`, one per view) in
its module under ``e2mc/methods/``, for ImageNet (``imagenet_views``, the official code's recipes)
and for Fashion-MNIST (``mini_views``, see :func:`e2mc.data.recipes.grey_recipe`). All recipes
apply crop, flip, jitter, grayscale, blur, solarize in that order. The grey ones run on whole
batches at once (:class:`BatchAugment`), since per-image PIL transforms are far too slow for a
CPU epoch.
"""
from __future__ import annotations

import math
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
from e2mc.data.recipes import (IMAGENET_MEAN, IMAGENET_STD, SOLARIZE_THRESHOLD, SWAV_IMAGENET_STD,  # noqa: F401
                                ViewRecipe)


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


def imagenet_multiview_transform(method) -> MultiViewTransform:
    """PIL image -> list of normalised views of ``method`` (an :class:`e2mc.methods.Method`, read for its
    ``imagenet_views``): 2 x (3, 224, 224) for VICReg and SimSiam, 2 x (3, 224, 224) + 6 x (3, 96, 96) for SwAV."""
    return MultiViewTransform([pil_view_transform(r) for r in method.imagenet_views])


def imagenet_train_dataset(root, method) -> torchvision.datasets.ImageFolder:
    """ImageNet's train folder (``root/<wnid>/<wnid>_<n>.JPEG``) yielding (list of ``method``'s views, label)."""
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
                             "are identities; set them to 0 in the recipe (see e2mc.data.recipes.grey_recipe)")
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


def make_mini_augment(method) -> MultiViewBatchAugment:
    """The Fashion-MNIST augmentation of ``method`` (an :class:`e2mc.methods.Method`): its ``mini_views``
    (e.g. 2 x 28 px for VICReg, 2 x 28 px + 4 x 16 px for SwAV) on whole batches."""
    return MultiViewBatchAugment(method.mini_views)

"""How one augmented view is drawn (:class:`ViewRecipe`), and the shared normalisation constants.

Each SSL method's module (``e2mc/methods/<name>.py``) declares its own list of recipes, one per
view, for ImageNet and for the grey 28 px Fashion-MNIST images (:func:`grey_recipe`);
:mod:`e2mc.data.augment` turns recipes into PIL pipelines or batched tensor operations.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from e2mc.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SWAV_IMAGENET_STD = (0.228, 0.224, 0.225)  # as in SwAV's and the E2MC authors' code
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


def grey_recipe(recipe: ViewRecipe, size: int, scale: tuple[float, float] | None = None) -> ViewRecipe:
    """The grey 28 px (Fashion-MNIST) version of an ImageNet recipe.

    Saturation, hue and grayscale are dropped (identities on grey images); crops are ``size`` px
    with bilinear resampling; the blur sigma is U(0.1, 1.0) px, since SimCLR sizes its blur kernel
    at 10 % of the image side and 2 px on a 28 px garment erases most of it; normalisation uses
    the Fashion-MNIST training statistics.
    """
    brightness, contrast, _, _ = recipe.jitter
    return replace(recipe, size=size, scale=scale or recipe.scale, interpolation="bilinear",
                   jitter=(brightness, contrast, 0.0, 0.0), grayscale_p=0.0, blur_sigma=(0.1, 1.0),
                   mean=(FASHION_MNIST_MEAN,), std=(FASHION_MNIST_STD,))

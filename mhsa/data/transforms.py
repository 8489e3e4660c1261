"""Image transforms of the Re-ID baseline (reid-strong-baseline style).

All random ops are torchvision ones, which draw from the torch RNG: ``torch.manual_seed`` fixes them.
"""

from __future__ import annotations

import torch
import torchvision.transforms as T

from mhsa.switches import CUTOUT_SIDE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's Resize on a PIL image calls PIL's resize with the BILINEAR filter, which PIL always
# applies with a support widened by the scale factor (antialiased when shrinking). The decoded-image
# cache resizes with the very same op and records this name in its key.
RESIZE_METHOD = "torchvision-Resize-PIL-bilinear-antialias"


def resize_op(height: int, width: int) -> T.Resize:
    """The resize of every pipeline (loader path and decoded-image cache alike)."""
    return T.Resize((height, width), interpolation=T.InterpolationMode.BILINEAR, antialias=True)


def cutout_pixels(width: int, side: float = CUTOUT_SIDE) -> int:
    """The Cutout square's side in pixels: `side` (data.cutout_side) of the input width, at least 1."""
    return max(1, round(side * width))


def cutout_fits(height: int, width: int, pixels: int) -> bool:
    """The authors' Cutout erases only a square strictly inside the image (utils/random_erasing.py:26)."""
    return pixels < height and pixels < width


def apply_cutout(img: torch.Tensor, top: int, left: int, pixels: int) -> torch.Tensor:
    """Zero a pixels x pixels square at (top, left) of a normalised C x H x W image, in place (the authors'
    fill `mean=[0, 0, 0]` after Normalize)."""
    img[:, top : top + pixels, left : left + pixels] = 0.0
    return img


class Cutout:
    """The authors' Cutout (utils/random_erasing.py:11-36, `Cutout(probability=0.5, size=64, mean=[0, 0, 0])`
    at utils/transforms.py:82): with probability `p`, a fixed square of `cutout_pixels(width, side)`
    (64 px at 128 px) at a uniformly drawn position, both ends included, set to 0 in normalised space; an
    image the square does not fit strictly inside is left alone. Draws from the torch RNG."""

    def __init__(self, p: float = 0.5, side: float = CUTOUT_SIDE):
        self.p, self.side = float(p), float(side)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        _, h, w = img.shape
        pixels = cutout_pixels(w, self.side)
        if float(torch.rand(())) >= self.p or not cutout_fits(h, w, pixels):
            return img
        top = int(torch.randint(0, h - pixels + 1, ()))
        left = int(torch.randint(0, w - pixels + 1, ()))
        return apply_cutout(img, top, left, pixels)

    def __repr__(self) -> str:
        return f"Cutout(p={self.p}, side={self.side})"


def build_transforms(
    height: int, width: int, train: bool, flip: bool = True, random_erasing: float = 0.0, pad: int = 0,
    erasing: str = "random", cutout_side: float = CUTOUT_SIDE,
) -> T.Compose:
    """Resize -> [flip] -> [pad + random crop] -> tensor -> ImageNet normalisation -> [erasing].

    Erasing with probability `random_erasing`: torchvision's RandomErasing (`erasing="random"`) or the
    authors' `Cutout` (`erasing="cutout"`, a square of `cutout_side` of the width).
    Flip, pad/crop and erasing are training augmentations only; evaluation is deterministic.
    """
    ops: list = [resize_op(height, width)]
    if train and flip:
        ops.append(T.RandomHorizontalFlip(p=0.5))
    if train and pad > 0:
        ops += [T.Pad(pad), T.RandomCrop((height, width))]
    ops += [T.ToTensor(), T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)]
    if train and random_erasing > 0 and erasing == "cutout":
        ops.append(Cutout(random_erasing, cutout_side))
    elif train and random_erasing > 0:
        # Erases with random values in normalised space, like reid-strong-baseline's RandomErasing.
        ops.append(T.RandomErasing(p=random_erasing, value="random"))
    return T.Compose(ops)

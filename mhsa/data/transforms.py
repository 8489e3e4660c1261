"""Image transforms of the Re-ID baseline (reid-strong-baseline style).

All random ops are torchvision ones, which draw from the torch RNG: ``torch.manual_seed`` fixes them.
"""

from __future__ import annotations

import torchvision.transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's Resize on a PIL image calls PIL's resize with the BILINEAR filter, which PIL always
# applies with a support widened by the scale factor (antialiased when shrinking). The decoded-image
# cache resizes with the very same op and records this name in its key.
RESIZE_METHOD = "torchvision-Resize-PIL-bilinear-antialias"


def resize_op(height: int, width: int) -> T.Resize:
    """The resize of every pipeline (loader path and decoded-image cache alike)."""
    return T.Resize((height, width), interpolation=T.InterpolationMode.BILINEAR, antialias=True)


def build_transforms(
    height: int, width: int, train: bool, flip: bool = True, random_erasing: float = 0.0, pad: int = 0
) -> T.Compose:
    """Resize -> [flip] -> [pad + random crop] -> tensor -> ImageNet normalisation -> [random erasing].

    Flip, pad/crop and random erasing are training augmentations only; evaluation is deterministic.
    """
    ops: list = [resize_op(height, width)]
    if train and flip:
        ops.append(T.RandomHorizontalFlip(p=0.5))
    if train and pad > 0:
        ops += [T.Pad(pad), T.RandomCrop((height, width))]
    ops += [T.ToTensor(), T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)]
    if train and random_erasing > 0:
        # Erases with random values in normalised space, like reid-strong-baseline's RandomErasing.
        ops.append(T.RandomErasing(p=random_erasing, value="random"))
    return T.Compose(ops)

"""Image transforms of the Re-ID baseline (reid-strong-baseline style).

All random ops are torchvision ones, which draw from the torch RNG: ``torch.manual_seed`` fixes them.
"""

from __future__ import annotations

import torchvision.transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(
    height: int, width: int, train: bool, flip: bool = True, random_erasing: float = 0.0, pad: int = 0
) -> T.Compose:
    """Resize -> [flip] -> [pad + random crop] -> tensor -> ImageNet normalisation -> [random erasing].

    Flip, pad/crop and random erasing are training augmentations only; evaluation is deterministic.
    """
    ops: list = [T.Resize((height, width))]
    if train and flip:
        ops.append(T.RandomHorizontalFlip(p=0.5))
    if train and pad > 0:
        ops += [T.Pad(pad), T.RandomCrop((height, width))]
    ops += [T.ToTensor(), T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)]
    if train and random_erasing > 0:
        # Erases with random values in normalised space, like reid-strong-baseline's RandomErasing.
        ops.append(T.RandomErasing(p=random_erasing, value="random"))
    return T.Compose(ops)

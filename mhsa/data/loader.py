"""Torch dataset over ``(path, pid, camid)`` items from ``mhsa.data.datasets``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from mhsa.errors import DataError


class UnreadableImageError(DataError, OSError):
    """An image file is missing, truncated or not an image."""


class ImageDataset(Dataset):
    """``dataset[i] -> (image, pid, camid, i)``; the image goes through ``transform`` if given."""

    def __init__(self, items: Sequence[tuple[str, int, int]], transform: Callable | None = None):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, pid, camid = self.items[index]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")  # forces the full decode, so truncated files fail here
        except (OSError, UnidentifiedImageError, ValueError) as err:
            # from None: the PIL traceback adds nothing to "this file is broken"
            raise UnreadableImageError(f"cannot read image {path} (item {index}): {err}; replace or remove "
                                       "the file") from None
        if self.transform is not None:
            img = self.transform(img)
        return img, pid, camid, index

"""Whole-batch augmentation on the training device, and batch iterables over a ``DecodedCache``.

The ops and their order are those of ``transforms.build_transforms`` (flip -> pad + random crop ->
to float / 255 -> ImageNet normalisation -> random erasing), applied to a uint8 batch at once:

* flip and pad/crop act on uint8, so they are exact; erasing is RandomErasing's (a random box filled
  with noise) or the authors' Cutout (a fixed square of zeros), as `data.erasing` says; ``/ 255`` then ``sub(mean).div(std)`` are the
  same float ops as ``ToTensor`` + ``Normalize``, so with no random op the batch is bit-identical
  to the loader path's.
* Random decisions (flip, crop offsets, erasing boxes) are drawn per sample from a CPU
  ``torch.Generator`` and the erasing noise from a generator on the batch's device, both seeded by
  the caller (per epoch), so a run repeats and resumes exactly. The draws follow torchvision's
  distributions but not its global-RNG stream: a cached run and a loader run see different, equally
  distributed augmentations.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import torch

from mhsa.switches import CUTOUT_SIDE

from .cache import DecodedCache
from .transforms import IMAGENET_MEAN, IMAGENET_STD, cutout_fits, cutout_pixels

ERASE_SCALE = (0.02, 0.33)  # torchvision RandomErasing defaults
ERASE_RATIO = (0.3, 3.3)
ERASE_TRIES = 10


_STATS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor (labels, random draws) on ``device``; on CUDA through pinned memory and without
    waiting: a copy from pageable memory would make the host wait for the GPU's queued work each batch."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The ImageNet mean and std as 3 x 1 x 1 tensors on ``device``, made once per device (not copied to
    the GPU for every batch)."""
    if device not in _STATS:
        _STATS[device] = (torch.tensor(IMAGENET_MEAN, device=device)[:, None, None],
                          torch.tensor(IMAGENET_STD, device=device)[:, None, None])
    return _STATS[device]


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 B x 3 x H x W -> float32, as ``ToTensor`` then ``Normalize(IMAGENET_MEAN, IMAGENET_STD)``."""
    mean, std = _mean_std(x.device)
    return x.to(torch.float32).div_(255).sub_(mean).div_(std)  # in place: one float buffer per batch


def flip_batch(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror (last axis) the samples where ``flips`` (bool, B) is True."""
    flips = to_device(flips, x.device)
    return torch.where(flips[:, None, None, None], x.flip(-1), x)


def pad_crop_batch(x: torch.Tensor, pad: int, offsets: torch.Tensor) -> torch.Tensor:
    """Zero-pad by ``pad`` on every side, then crop H x W at ``offsets`` (B x 2: top, left in
    [0, 2 * pad]) per sample: ``T.Pad(pad)`` + ``T.RandomCrop((H, W))`` with given offsets."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = to_device(offsets, x.device)
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # B x H
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # B x W
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def draw_erase_boxes(gen: torch.Generator, b: int, h: int, w: int, p: float) -> torch.Tensor:
    """B x 4 (top, left, height, width) boxes as ``T.RandomErasing(p)`` draws them (10 tries for a
    box inside the image, else none); a sample not erased gets height = width = 0."""
    area = h * w * torch.empty(b, ERASE_TRIES).uniform_(*ERASE_SCALE, generator=gen).double()
    lo, hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    ratio = torch.exp(torch.empty(b, ERASE_TRIES).uniform_(lo, hi, generator=gen).double())
    eh = torch.sqrt(area * ratio).round().long()
    ew = torch.sqrt(area / ratio).round().long()
    ok = (eh < h) & (ew < w)
    first = torch.where(ok.any(1), ok.long().argmax(1), 0)
    eh, ew = eh.gather(1, first[:, None])[:, 0], ew.gather(1, first[:, None])[:, 0]
    erase = (torch.rand(b, generator=gen) < p) & ok.any(1)
    top = (torch.rand(b, generator=gen) * (h - eh + 1)).long().clamp(0, h - 1)
    left = (torch.rand(b, generator=gen) * (w - ew + 1)).long().clamp(0, w - 1)
    return torch.stack([top, left, eh * erase, ew * erase], 1)


def draw_cutout_boxes(gen: torch.Generator, b: int, h: int, w: int, p: float, side: float = CUTOUT_SIDE) -> torch.Tensor:
    """B x 4 (top, left, height, width) boxes as the authors' Cutout draws them (`transforms.Cutout`): a
    square of `cutout_pixels(w, side)` with probability `p`, top in [0, h - s] and left in [0, w - s] (both
    ends included), none when it does not fit strictly inside; a sample not erased gets height = width = 0."""
    s = cutout_pixels(w, side)
    erase = (torch.rand(b, generator=gen) < p) & cutout_fits(h, w, s)
    top = (torch.rand(b, generator=gen) * max(h - s + 1, 1)).long().clamp(0, max(h - s, 0))
    left = (torch.rand(b, generator=gen) * max(w - s + 1, 1)).long().clamp(0, max(w - s, 0))
    size = torch.full((b,), s, dtype=torch.long) * erase
    return torch.stack([top, left, size, size], 1)


def erase_batch(x: torch.Tensor, boxes: torch.Tensor, noise_gen: torch.Generator | None,
                zero: bool = False) -> torch.Tensor:
    """Fill each sample's box with standard normal noise (``value="random"``, normalised space), or with
    zeros (`zero`: the authors' Cutout)."""
    b, _, h, w = x.shape
    boxes = to_device(boxes, x.device)
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    top, left, bh, bw = (boxes[:, i, None] for i in range(4))
    inside_y = (ys >= top) & (ys < top + bh)  # B x H
    inside_x = (xs >= left) & (xs < left + bw)  # B x W
    mask = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]
    if zero:
        return x.masked_fill(mask, 0.0)
    noise = torch.randn(x.shape, generator=noise_gen, device=x.device, dtype=x.dtype)
    return torch.where(mask, noise, x)


class BatchAugment:
    """The training transform of ``build_transforms(h, w, train=True, flip, random_erasing, pad, erasing,
    cutout_side)`` minus the resize (done by the cache), on a uint8 batch already on the training device."""

    def __init__(self, flip: bool = True, pad: int = 0, random_erasing: float = 0.0, erasing: str = "random",
                 cutout_side: float = CUTOUT_SIDE):
        self.flip, self.pad, self.random_erasing = flip, int(pad), float(random_erasing)
        self.cutout, self.cutout_side = erasing == "cutout", float(cutout_side)

    def draw(self, gen: torch.Generator, b: int, h: int, w: int) -> dict:
        """This batch's random decisions (CPU tensors), in a fixed order from ``gen``."""
        out = {}
        if self.flip:
            out["flips"] = torch.rand(b, generator=gen) < 0.5
        if self.pad > 0:
            out["offsets"] = torch.randint(0, 2 * self.pad + 1, (b, 2), generator=gen)
        if self.random_erasing > 0 and self.cutout:
            out["boxes"] = draw_cutout_boxes(gen, b, h, w, self.random_erasing, self.cutout_side)
        elif self.random_erasing > 0:
            out["boxes"] = draw_erase_boxes(gen, b, h, w, self.random_erasing)
        return out

    def apply(self, x: torch.Tensor, params: dict, noise_gen: torch.Generator | None = None) -> torch.Tensor:
        if "flips" in params:
            x = flip_batch(x, params["flips"])
        if "offsets" in params:
            x = pad_crop_batch(x, self.pad, params["offsets"])
        x = normalize(x)
        if "boxes" in params:
            x = erase_batch(x, params["boxes"], noise_gen, zero=self.cutout)
        return x

    def __call__(self, x: torch.Tensor, gen: torch.Generator, noise_gen: torch.Generator | None = None):
        return self.apply(x, self.draw(gen, x.shape[0], x.shape[-2], x.shape[-1]), noise_gen)


def _labels(items: Sequence[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor([int(i[1]) for i in items], dtype=torch.int64),
            torch.tensor([int(i[2]) for i in items], dtype=torch.int64))


class CachedBatches:
    """Training batches ``(imgs, pids, camids, indices)`` in the sampler's order, like
    ``DataLoader(ImageDataset(items, tf), batch_size, sampler=sampler, drop_last=True)`` but read
    from ``cache`` and augmented on ``device``: imgs float32 on ``device``, the rest int64 on CPU.

    Iterate once per epoch after ``sampler.set_epoch(epoch)``; ``seed`` (e.g. the per-epoch seed)
    fixes the augmentation draws of that iteration.
    """

    def __init__(self, cache: DecodedCache, items: Sequence[tuple], sampler: Iterable[int], batch_size: int,
                 device: torch.device | str, augment: BatchAugment | None, seed: int = 0):
        if len(cache) != len(items):
            raise ValueError(f"cache {cache.path} holds {len(cache)} images but the split has {len(items)}")
        self.cache, self.sampler, self.batch_size = cache, sampler, int(batch_size)
        self.device, self.augment, self.seed = torch.device(device), augment, int(seed)
        self.pids, self.camids = _labels(items)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[tuple]:
        gen = torch.Generator().manual_seed(self.seed)
        noise_gen = torch.Generator(device=self.device).manual_seed(self.seed)
        order = torch.tensor(list(iter(self.sampler)), dtype=torch.int64)
        for s in range(0, len(order) - self.batch_size + 1, self.batch_size):
            idx = order[s : s + self.batch_size]
            x = self.cache.batch(idx.numpy(), self.device)
            x = self.augment(x, gen, noise_gen) if self.augment is not None else normalize(x)
            pids = self.pids[idx]
            yield x, (pids.pin_memory() if self.device.type == "cuda" else pids), self.camids[idx], idx


class CachedEvalBatches:
    """Feature-extraction batches ``(imgs, pids, camids, indices)`` in item order, no augmentation:
    the cached equivalent of ``DataLoader(ImageDataset(items, eval_tf), batch_size, shuffle=False)``."""

    def __init__(self, cache: DecodedCache, items: Sequence[tuple], batch_size: int, device: torch.device | str):
        if len(cache) != len(items):
            raise ValueError(f"cache {cache.path} holds {len(cache)} images but the split has {len(items)}")
        self.cache, self.batch_size, self.device = cache, int(batch_size), torch.device(device)
        self.pids, self.camids = _labels(items)

    def __len__(self) -> int:
        return -(-len(self.cache) // self.batch_size)

    def __iter__(self) -> Iterator[tuple]:
        for s in range(0, len(self.cache), self.batch_size):
            idx = torch.arange(s, min(s + self.batch_size, len(self.cache)))
            yield normalize(self.cache.batch(idx.numpy(), self.device)), self.pids[idx], self.camids[idx], idx

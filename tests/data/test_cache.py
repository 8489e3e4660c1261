"""Decoded-image cache and batch augmentation: same batches as the loader path, one correct cache
under concurrent builds, a changed file list gets a new key, batch ops equal per-sample torchvision."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import time

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader

from mhsa.data import datasets
from mhsa.data.batch_transforms import (
    BatchAugment,
    CachedBatches,
    CachedEvalBatches,
    draw_erase_boxes,
    normalize,
    pad_crop_batch,
)
from mhsa.data.cache import DecodedCache, use_cache
from mhsa.data.loader import ImageDataset
from mhsa.data.sampler import PKSampler
from mhsa.data.synthetic import generate
from mhsa.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

H, W = 40, 24  # not the source size (32x16): the resize up-samples, in both directions unevenly


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "market1501"
    generate(root, "market1501", seed=5, num_ids=6, images_per_id=5, height=32, width=16)
    return datasets.load("market1501", root)


def key(ds, split="train"):
    return {"dataset": "market1501", "root": ds.root, "split": split}


def unnormalize(x):
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return x * std + mean


def test_cached_rows_are_the_loader_resize(ds, tmp_path):
    cache = DecodedCache.open_or_build(ds.train, H, W, tmp_path, key(ds))
    assert cache.built and cache.images.shape == (len(ds.train), 3, H, W) and cache.images.dtype == np.uint8
    resized = ImageDataset(ds.train, build_transforms(H, W, train=False).transforms[0])
    for i in (0, 7, len(ds.train) - 1):
        assert np.array_equal(cache.images[i], np.asarray(resized[i][0]).transpose(2, 0, 1))
    again = DecodedCache.open_or_build(ds.train, H, W, tmp_path, key(ds))
    assert not again.built and again.path == cache.path


def test_cached_batches_equal_loader_batches_same_sampler_order(ds, tmp_path):
    cache = DecodedCache.open_or_build(ds.train, H, W, tmp_path, key(ds))
    pids = [p for _, p, _ in ds.train]
    tf = build_transforms(H, W, train=True, flip=False)  # no random op: the two must agree exactly
    loader = DataLoader(ImageDataset(ds.train, tf), batch_size=8, sampler=PKSampler(pids, 4, 2, seed=1),
                        drop_last=True, num_workers=0)
    cached = CachedBatches(cache, ds.train, PKSampler(pids, 4, 2, seed=1), 8, "cpu", BatchAugment(flip=False))
    assert len(cached) == len(loader) > 1
    n = 0
    for (a, ap, ac, ai), (b, bp, bc, bi) in zip(loader, cached, strict=True):
        assert torch.equal(ai, bi) and torch.equal(ap, bp) and torch.equal(ac, bc)
        assert b.dtype == torch.float32 and b.shape == a.shape
        assert (unnormalize(a) - unnormalize(b)).abs().max() <= 1 / 255
        assert torch.allclose(a, b, atol=1e-6)
        n += 1
    assert n == len(loader)


def test_cached_flips_equal_loader_with_the_same_decisions(ds, tmp_path):
    cache = DecodedCache.open_or_build(ds.train, H, W, tmp_path, key(ds))
    pids = [p for _, p, _ in ds.train]
    tf = build_transforms(H, W, train=True, flip=False)
    loader = DataLoader(ImageDataset(ds.train, tf), batch_size=8, sampler=PKSampler(pids, 4, 2, seed=2),
                        drop_last=True)
    aug = BatchAugment(flip=True)
    cached = CachedBatches(cache, ds.train, PKSampler(pids, 4, 2, seed=2), 8, "cpu", aug, seed=9)
    gen = torch.Generator().manual_seed(9)  # replays the flip decisions CachedBatches draws
    flipped = 0
    for (a, *_), (b, *_) in zip(loader, cached, strict=True):
        flips = aug.draw(gen, 8, H, W)["flips"]
        flipped += int(flips.sum())
        expected = torch.stack([TF.hflip(x) if f else x for x, f in zip(a, flips, strict=True)])
        assert (unnormalize(expected) - unnormalize(b)).abs().max() <= 1 / 255
    assert 0 < flipped


def test_eval_batches_follow_item_order(ds, tmp_path):
    cache = DecodedCache.open_or_build(ds.query, H, W, tmp_path, key(ds, "query"))
    loader = DataLoader(ImageDataset(ds.query, build_transforms(H, W, train=False)), batch_size=5)
    batches = list(CachedEvalBatches(cache, ds.query, 5, "cpu"))
    assert len(batches) == len(loader)
    for (a, ap, ac, ai), (b, bp, bc, bi) in zip(loader, batches, strict=True):
        assert torch.equal(ai, bi) and torch.equal(ap, bp) and torch.equal(ac, bc)
        assert torch.allclose(a, b, atol=1e-6)


def test_pad_crop_equals_torchvision_per_sample():
    x = torch.randint(0, 256, (5, 3, 12, 7), dtype=torch.uint8)
    offsets = torch.tensor([[0, 0], [6, 6], [3, 1], [0, 6], [5, 2]])
    out = pad_crop_batch(x, 3, offsets)
    for i in range(5):
        ref = TF.crop(TF.pad(x[i], [3]), int(offsets[i, 0]), int(offsets[i, 1]), 12, 7)
        assert torch.equal(out[i], ref)


def test_random_erasing_boxes_follow_torchvision_rules():
    gen = torch.Generator().manual_seed(0)
    boxes = draw_erase_boxes(gen, 2000, 64, 32, p=0.5)
    top, left, h, w = boxes.T
    erased = h > 0
    assert 0.4 < erased.float().mean() < 0.6  # p, less the rare samples with no box in 10 tries
    area = (h * w)[erased].double() / (64 * 32)
    assert area.min() >= 0.015 and area.max() <= 0.36  # scale (0.02, 0.33), up to rounding
    assert bool(((top + h <= 64) & (left + w <= 32) & (h < 64) & (w < 32))[erased].all())
    x = normalize(torch.zeros(4, 3, 64, 32, dtype=torch.uint8))
    aug = BatchAugment(flip=False, random_erasing=1.0)
    params = aug.draw(torch.Generator().manual_seed(1), 4, 64, 32)
    y = aug.apply(torch.zeros(4, 3, 64, 32, dtype=torch.uint8), params, torch.Generator().manual_seed(2))
    for i, (t, l_, h_, w_) in enumerate(params["boxes"].tolist()):
        changed = (y[i] != x[i]).any(0)
        assert int(changed.sum()) == h_ * w_  # exactly the box, nowhere else
        if h_:
            assert bool(changed[t : t + h_, l_ : l_ + w_].all())


def test_cutout_boxes_follow_the_authors_rules():
    """The batch path of the authors' Cutout (data.erasing: cutout; tests/data/test_transforms.py has the
    transform): a square of half the width, both ends of each position reachable, filled with zeros."""
    from mhsa.data.batch_transforms import draw_cutout_boxes

    boxes = draw_cutout_boxes(torch.Generator().manual_seed(0), 4000, 64, 32, p=0.5)
    top, left, h, w = boxes.T
    erased = h > 0
    assert 0.45 < erased.float().mean() < 0.55
    assert bool((h[erased] == 16).all() and (w[erased] == 16).all())
    assert int(top.min()) == 0 and int(top.max()) == 64 - 16 and int(left.min()) == 0 and int(left.max()) == 32 - 16
    aug = BatchAugment(flip=False, random_erasing=1.0, erasing="cutout")
    params = aug.draw(torch.Generator().manual_seed(1), 4, 64, 32)
    x = torch.randint(1, 255, (4, 3, 64, 32), dtype=torch.uint8)
    y = aug.apply(x, params)
    plain = normalize(x.clone())
    for i, (t, l_, h_, w_) in enumerate(params["boxes"].tolist()):
        changed = (y[i] != plain[i]).any(0)
        assert int(changed.sum()) == h_ * w_ == 256 and bool((y[i][:, t : t + h_, l_ : l_ + w_] == 0).all())
    wide = draw_cutout_boxes(torch.Generator().manual_seed(0), 50, 64, 32, p=1.0, side=0.999)
    assert int(wide[:, 2:].sum()) == 0  # a square as wide as the image is never drawn (the authors' rule)


def test_augmentation_repeats_per_seed(ds, tmp_path):
    cache = DecodedCache.open_or_build(ds.train, H, W, tmp_path, key(ds))
    pids = [p for _, p, _ in ds.train]
    aug = BatchAugment(flip=True, pad=2, random_erasing=0.5)

    def run(seed):
        sampler = PKSampler(pids, 4, 2, seed=0)
        return [b[0] for b in CachedBatches(cache, ds.train, sampler, 8, "cpu", aug, seed=seed)]

    a, b, c = run(3), run(3), run(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def _build_in_process(items, cache_dir, parts, barrier, queue):
    barrier.wait()  # both processes call open_or_build at the same moment
    t0 = time.monotonic()
    cache = DecodedCache.open_or_build(items, H, W, cache_dir, parts, threads=1)
    queue.put((cache.built, str(cache.path), t0, time.monotonic(), np.asarray(cache.images).tobytes()))


def test_two_processes_building_at_once_make_one_correct_cache(ds, tmp_path):
    shared, fresh = tmp_path / "shared", tmp_path / "fresh"
    items, parts = ds.train * 10, key(ds)  # ~300 decodes: long enough for the calls to overlap
    ctx = mp.get_context("spawn")  # fresh interpreters: no state shared with this process
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_build_in_process, args=(items, shared, parts, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    reference = DecodedCache.open_or_build(items, H, W, fresh, parts)
    (builder,), (waiter,) = [r for r in results if r[0]], [r for r in results if not r[0]]
    assert waiter[2] < builder[3]  # the reuser asked while the build ran: it waited on the lock
    assert builder[1] == waiter[1]
    assert builder[4] == waiter[4] == np.asarray(reference.images).tobytes()
    left = sorted(p.name for p in shared.iterdir())
    assert not [n for n in left if n.endswith(".tmp")], left
    assert sum(n.endswith(".npy") for n in left) == 1 and sum(n.endswith(".json") for n in left) == 1


def test_changed_file_list_or_size_gets_a_new_key(ds, tmp_path):
    shutil.copytree(ds.root, tmp_path / "copy")
    ds = datasets.load("market1501", tmp_path / "copy")  # a copy: the shared data set stays intact
    items = list(ds.train)
    first = DecodedCache.open_or_build(items, H, W, tmp_path, key(ds))
    assert DecodedCache.open_or_build(items[:-1], H, W, tmp_path, key(ds)).path != first.path
    assert DecodedCache.open_or_build(items, H + 8, W, tmp_path, key(ds)).path != first.path
    assert DecodedCache.open_or_build(items, H, W, tmp_path, key(ds, "query")).path != first.path
    # Rewrite one image with other content and size: the fingerprint changes, the new cache holds it.
    path = items[3][0]
    Image.new("RGB", (16, 32), (255, 0, 0)).save(path, format="PNG")
    os.utime(path, ns=(0, 123456789))
    changed = DecodedCache.open_or_build(items, H, W, tmp_path, key(ds))
    assert changed.built and changed.path != first.path
    assert (changed.images[3][0] == 255).all() and (changed.images[3][1:] == 0).all()


def test_auto_switch_follows_the_budget():
    assert use_cache("auto", 1000, 384, 128, max_gb=1.0)  # 147 MB
    assert not use_cache("auto", 20_000, 384, 128, max_gb=1.0)  # 2.9 GB
    assert not use_cache("auto", 0, 64, 32, max_gb=1.0)
    assert use_cache(True, 20_000, 384, 128, max_gb=0) and not use_cache(False, 10, 8, 8, max_gb=9)


def test_unreadable_image_names_the_file(ds, tmp_path):
    from mhsa.errors import DataError

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="bad.jpg"):
        DecodedCache.open_or_build([(str(bad), 0, 0)], H, W, tmp_path / "c", {"dataset": "x", "split": "y"})
    assert not [p for p in (tmp_path / "c").iterdir() if p.suffix in (".tmp", ".npy", ".json")]


def test_resize_is_bilinear_antialiased():
    t = build_transforms(H, W, train=False).transforms[0]
    assert isinstance(t, T.Resize) and t.interpolation == T.InterpolationMode.BILINEAR and t.antialias


def test_open_split_follows_the_config(ds, tmp_path):
    from mhsa.config import build_run_config
    from mhsa.data.cache import open_split

    def cfg(cache, max_gb=4.0):
        return build_run_config({"data": {"height": H, "width": W, "cache": cache, "cache_max_gb": max_gb,
                                          "cache_dir": str(tmp_path)},
                                 "model": {"num_heads": 4}}).data  # K <= the 3x2 map's 6 positions

    assert open_split(cfg(False), "market1501", ds.root, "train", ds.train) is None
    assert open_split(cfg("auto", max_gb=1e-6), "market1501", ds.root, "train", ds.train) is None
    cache = open_split(cfg("auto"), "market1501", ds.root, "train", ds.train)
    assert cache is not None and cache.path.parent == tmp_path and len(cache) == len(ds.train)
    assert open_split(cfg(True, max_gb=0), "market1501", ds.root, "train", ds.train).path == cache.path


def test_a_cache_the_disk_cannot_hold_stops_before_anything_is_written(ds, tmp_path, monkeypatch):
    """The paper's 384x128 cache takes six times the 128x64 decode (Market-1501: 32,217 images, 4.42 GiB
    against 0.74 GiB); a disk that cannot hold a split's array (plus the reserve for checkpoints) is one line
    naming data.cache_dir and the sizes, before a byte is written (simulated free space)."""
    from mhsa.data import cache as cache_mod

    assert cache_mod.image_bytes(32_217, 384, 128) == 4_750_589_952  # 4.42 GiB
    assert cache_mod.image_bytes(32_217, 384, 128) == 6 * cache_mod.image_bytes(32_217, 128, 64)
    need = cache_mod.image_bytes(len(ds.train), H, W)
    usage = shutil.disk_usage(tmp_path)
    for free, fits in ((need + cache_mod.DISK_RESERVE - 1, False), (need + cache_mod.DISK_RESERVE, True)):
        monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p, free=free: usage._replace(free=free))
        out = tmp_path / f"c{free}"
        key = {"dataset": "market1501", "root": ds.root, "split": "train"}
        if fits:
            assert DecodedCache.open_or_build(ds.train, H, W, out, key).built
            continue
        with pytest.raises(cache_mod.CacheSpaceError, match=r"decoded-image cache of market1501 train at 40x24 needs "
                                                            r"0\.0 GiB in .* \(data\.cache_dir\), but its disk has 1\.0 GiB "
                                                            r"free .*data\.cache: false"):
            DecodedCache.open_or_build(ds.train, H, W, out, key)
        assert not [p for p in out.iterdir() if p.suffix in (".tmp", ".npy", ".json")]

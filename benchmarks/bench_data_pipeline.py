"""Data pipeline throughput: the decoded-image cache beside the PIL loader, and what the model consumes.

For each input size (default: the demo's 64x32 and the paper's 384x128), in one run:
  * the cache build (decode + resize once, ``mhsa.data.cache``), timed once;
  * the cache path: ``CachedBatches`` (memmap gather + flip + normalise on the device) in P x K order;
  * the loader path: ``DataLoader(ImageDataset)`` (JPEG decode, resize, flip, normalise per image)
    with 0, 1, 2 and 4 workers, a new loader per epoch as CPU training does;
  * the model's consumption rate (train step of MHSA-Net K=8 on random input, same size and batch),
so the ratios say which part limits and by how much. Source images are 128x64 JPEGs like Market-1501's.

    python benchmarks/bench_data_pipeline.py                                  # CPU, both sizes
    python benchmarks/bench_data_pipeline.py --sizes 384x128 --p 32 --k 4 --backbone resnet50  # GPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mhsa.data import datasets
from mhsa.data.batch_transforms import BatchAugment, CachedBatches
from mhsa.data.cache import DecodedCache
from mhsa.data.loader import ImageDataset
from mhsa.data.sampler import PKSampler
from mhsa.data.synthetic import generate
from mhsa.data.transforms import build_transforms
from mhsa.losses import Criterion
from mhsa.model import build_model


def loader_rate(ds, h: int, w: int, args, workers: int) -> float:
    tf = build_transforms(h, w, train=True)
    sampler = PKSampler([p for _, p, _ in ds.train], args.p, args.k, seed=0)
    n, t0 = 0, time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        loader = DataLoader(ImageDataset(ds.train, tf), batch_size=args.p * args.k, sampler=sampler,
                            drop_last=True, num_workers=workers, pin_memory=args.device.type == "cuda")
        for imgs, *_ in loader:
            imgs = imgs.to(args.device, non_blocking=True)
            n += imgs.shape[0]
    sync(args.device)
    return n / (time.perf_counter() - t0)


def cache_rate(ds, cache: DecodedCache, args) -> float:
    sampler = PKSampler([p for _, p, _ in ds.train], args.p, args.k, seed=0)
    aug = BatchAugment(flip=True)
    n, t0 = 0, time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for imgs, *_ in CachedBatches(cache, ds.train, sampler, args.p * args.k, args.device, aug, seed=epoch):
            n += imgs.shape[0]
    sync(args.device)
    return n / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_rate(num_classes: int, h: int, w: int, args) -> float:
    cuda = args.device.type == "cuda"
    model = build_model(num_classes, num_heads=8, backbone=args.backbone, pretrained=False).to(args.device).train()
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(memory_format=fmt)
    crit, opt = Criterion(), torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.randn(args.p * args.k, 3, h, w, device=args.device).to(memory_format=fmt)
    y = torch.arange(args.p, device=args.device).repeat_interleave(args.k)
    times = []
    for _ in range(args.model_steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False):
            out = model(x)
        loss, _ = crit(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync(args.device)
        times.append(time.perf_counter() - t0)
    return x.shape[0] / sorted(times[1:])[len(times[1:]) // 2]


def bench_size(ds, h: int, w: int, cache_dir: Path, args) -> None:
    t0 = time.perf_counter()
    cache = DecodedCache.open_or_build(ds.train, h, w, cache_dir, {"dataset": "market1501", "root": ds.root,
                                                                    "split": "train"})
    build = time.perf_counter() - t0
    print(f"\n{h}x{w}: cache build {build:.2f} s ({len(ds.train) / build:.0f} images/s decoded, "
          f"{cache.images.nbytes / 2**20:.1f} MiB)")
    model = model_rate(ds.num_train_pids, h, w, args) if args.model_steps else None
    cached = cache_rate(ds, cache, args)
    rows = [("cache path", cached)] + [(f"loader, {n} worker(s)", loader_rate(ds, h, w, args, n))
                                       for n in args.workers]
    for name, rate in rows:
        vs_model = f"  data/model = {rate / model:6.2f}" if model else ""
        print(f"  {name:22s} {rate:9.1f} images/s  cache/this = {cached / rate:6.2f}{vs_model}")
    if model:
        print(f"  {'model consumes':22s} {model:9.1f} images/s  ({args.backbone}, MHSA-Net K=8, train step)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["64x32", "384x128"], help="HxW input sizes")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--p", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--ids", type=int, default=32, help="synthetic train identities (8 images each)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model-steps", type=int, default=3, help="0: do not time the model")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "market1501", "market1501", seed=0, num_ids=args.ids, images_per_id=8,
                        height=128, width=64)
        ds = datasets.load("market1501", root)
        dev = torch.cuda.get_device_name() if args.device.type == "cuda" else f"cpu, {args.threads} torch thread(s)"
        print(f"synthetic market1501: {len(ds.train)} train images (128x64 JPEG), batch {args.p}x{args.k}, "
              f"{args.epochs} epochs per path, device {dev}")
        for size in args.sizes:
            h, w = (int(v) for v in size.lower().split("x"))
            bench_size(ds, h, w, Path(tmp) / "cache", args)


if __name__ == "__main__":
    main()

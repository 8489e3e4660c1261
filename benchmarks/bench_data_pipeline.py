"""Data pipeline throughput (decode + augment + batch) beside the model's consumption rate.

Shows which one limits a run: if the loader delivers fewer images/s than a training step
consumes, more `data.workers` (or a faster disk) speed training up; otherwise the model does.

    python benchmarks/bench_data_pipeline.py [--height 64 --width 32 --backbone resnet18]
    python benchmarks/bench_data_pipeline.py --height 384 --width 128 --backbone resnet50   # paper
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mhsa.data import datasets
from mhsa.data.loader import ImageDataset
from mhsa.data.sampler import PKSampler
from mhsa.data.synthetic import generate
from mhsa.data.transforms import build_transforms
from mhsa.losses import Criterion
from mhsa.model import build_model


def loader_rate(ds, args, workers: int) -> float:
    tf = build_transforms(args.height, args.width, train=True)
    sampler = PKSampler([p for _, p, _ in ds.train], args.p, args.k, seed=0)
    loader = DataLoader(ImageDataset(ds.train, tf), batch_size=args.p * args.k, sampler=sampler,
                        drop_last=True, num_workers=workers, persistent_workers=False)
    n, t0 = 0, time.perf_counter()
    for _ in range(args.epochs):
        for imgs, *_ in loader:
            n += imgs.shape[0]
    return n / (time.perf_counter() - t0)


def model_rate(num_classes: int, args) -> float:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(num_classes, num_heads=8, backbone=args.backbone).to(device).train()
    crit, opt = Criterion(), torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.randn(args.p * args.k, 3, args.height, args.width, device=device)
    y = torch.arange(args.p, device=device).repeat_interleave(args.k)
    times = []
    for _ in range(args.steps + 1):
        t0 = time.perf_counter()
        loss, _ = crit(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return x.shape[0] / sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--p", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "market1501", "market1501", seed=0, num_ids=32, images_per_id=8,
                        height=128, width=64)
        ds = datasets.load("market1501", root)
        print(f"synthetic market1501: {len(ds.train)} train images (128x64 JPEG) -> {args.height}x{args.width}, "
              f"batch {args.p}x{args.k}, torch threads 1")
        model = model_rate(ds.num_train_pids, args)
        print(f"  model ({args.backbone}, MHSA-Net K=8) consumes  {model:8.1f} images/s (train step)")
        for w in args.workers:
            rate = loader_rate(ds, args, w)
            limit = "loader limits" if rate < model else "model limits"
            print(f"  loader, {w} worker(s)              delivers {rate:8.1f} images/s  "
                  f"(loader/model = {rate / model:5.2f}: {limit})")


if __name__ == "__main__":
    main()

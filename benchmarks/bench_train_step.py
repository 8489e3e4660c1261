"""Training throughput, data included: Baseline and MHSA-Net (K=8), loader vs cache, eager vs compile.

Every configuration runs the real training step (forward, all losses, backward, Adam) on batches
delivered by its data path from a synthetic Market-style data set (128x64 JPEGs), so images/s is
what a cell would sustain. Configurations run round-robin (``--rounds`` chunks of ``--steps`` steps
each), so machine noise spreads over all of them; the median step time is reported.

CPU (default): 64x32 input, resnet18, P x K = 4 x 4, fp32, loader with 0 workers (the demo preset);
``--compile`` adds the compiled models (inductor needs minutes to compile on a small CPU).
CUDA: 384x128, resnet50, P x K = 32 x 4 = 128, bf16 autocast, channels_last, loader with 4 workers,
compile on. Peak memory: CUDA ``max_memory_allocated`` per configuration; CPU the process's peak RSS
(cumulative over the run, so only the first row is one configuration's own).

    python benchmarks/bench_train_step.py                       # CPU, reduced size
    python benchmarks/bench_train_step.py --compile --steps 3   # CPU, with torch.compile
    python benchmarks/bench_train_step.py                       # on a GPU: the paper's size
"""

from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import tempfile
import time
from contextlib import nullcontext
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


def make_model(mhsam: bool, compiled: bool, num_classes: int, args):
    torch.manual_seed(0)
    model = build_model(num_classes, num_heads=8, backbone=args.backbone, pretrained=False, mhsam=mhsam)
    model = model.to(args.device, memory_format=args.fmt).train()
    if compiled:
        model.compile()
    crit = Criterion() if mhsam else Criterion(lambda1=0, lambda2=0, lambda3=0)
    return model, crit, torch.optim.Adam(model.parameters(), lr=1e-4)


def batches(kind: str, ds, cache, args):
    """An endless stream of training batches from the loader path or the cache path."""
    sampler = PKSampler([p for _, p, _ in ds.train], args.p, args.k, seed=0)
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        if kind == "cache":
            yield from CachedBatches(cache, ds.train, sampler, args.p * args.k, args.device,
                                     BatchAugment(flip=True), seed=epoch)
        else:
            tf = build_transforms(args.height, args.width, train=True)
            yield from DataLoader(ImageDataset(ds.train, tf), batch_size=args.p * args.k, sampler=sampler,
                                  drop_last=True, num_workers=args.workers, pin_memory=args.device.type == "cuda",
                                  persistent_workers=args.workers > 0)


def train_step(model, crit, opt, imgs, pids, args) -> None:
    imgs = imgs.to(args.device, non_blocking=True, memory_format=args.fmt)
    pids = pids.to(args.device, non_blocking=True)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if args.device.type == "cuda" else nullcontext()
    with amp:
        out = model(imgs)
    loss, _ = crit(out, pids)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def run_chunk(cfg: dict, args) -> list[float]:
    """``args.steps`` timed steps (data fetch included); returns per-step seconds."""
    times = []
    for _ in range(args.steps):
        sync(args.device)
        t0 = time.perf_counter()
        imgs, pids, _, _ = next(cfg["data"])
        train_step(*cfg["model"], imgs, pids, args)
        sync(args.device)
        times.append(time.perf_counter() - t0)
    return times


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_configs(ds, cache, args) -> dict:
    configs = {}
    for (label, mhsam), compiled, data in itertools.product(
            (("baseline", False), ("mhsa-net K=8", True)), args.compile_modes, ("loader", "cache")):
        name = f"{label:13s} {data:6s} {'compile' if compiled else 'eager':7s}"
        configs[name] = {"model": make_model(mhsam, compiled, ds.num_train_pids, args),
                         "data": batches(data, ds, cache, args), "times": [], "peak": 0.0, "warm_s": 0.0}
    return configs


def report(configs: dict, args) -> None:
    batch = args.p * args.k
    print(f"{'configuration':30s} {'step ms':>8s} {'images/s':>9s} {'peak MiB':>9s} {'warm-up s':>9s}")
    rates = {}
    for name, c in configs.items():
        med = statistics.median(c["times"])
        rates[name] = batch / med
        print(f"{name:30s} {med * 1000:8.1f} {batch / med:9.1f} {c['peak']:9.0f} {c['warm_s']:9.1f}")
    for a, b in itertools.combinations(rates, 2):
        same_model, same_compile = a.split()[0] == b.split()[0], a.split()[-1] == b.split()[-1]
        if same_model and same_compile and "loader" in a and "cache" in b:
            print(f"  cache / loader   {a.split('loader')[0].strip():13s} {a.split()[-1]:7s}: "
                  f"{rates[b] / rates[a]:.2f}x")
        if same_model and "eager" in a and "compile" in b and a.split()[-2] == b.split()[-2]:
            print(f"  compile / eager  {a.split()[0]:13s} {a.split()[-2]:7s}: {rates[b] / rates[a]:.2f}x")
        if a.startswith("baseline") and b.startswith("mhsa") and a.split()[1:] == b.split()[2:]:
            ratio = rates[a] / rates[b]
            print(f"  step time MHSA-Net / Baseline, {' '.join(a.split()[1:]):14s}: {ratio:.3f} "
                  f"(target <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per configuration and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--p", type=int, default=None)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also the compiled models (default on CUDA)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    args.device = torch.device("cuda" if cuda else "cpu")
    args.height, args.width = args.height or (384 if cuda else 64), args.width or (128 if cuda else 32)
    args.p, args.backbone = args.p or (32 if cuda else 4), args.backbone or ("resnet50" if cuda else "resnet18")
    args.workers = args.workers if args.workers is not None else (4 if cuda else 0)
    args.fmt = torch.channels_last if cuda else torch.contiguous_format
    args.compile_modes = (False, True) if (args.compile or cuda) else (False,)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "market1501", "market1501", seed=0, num_ids=max(2 * args.p, 16),
                        images_per_id=8, height=128, width=64)
        ds = datasets.load("market1501", root)
        cache = DecodedCache.open_or_build(ds.train, args.height, args.width, Path(tmp) / "cache",
                                           {"dataset": "market1501", "root": root, "split": "train"})
        configs = build_configs(ds, cache, args)
        for c in configs.values():  # warm-up: compile, cudnn autotune, allocator, worker start
            t0 = time.perf_counter()
            imgs, pids, _, _ = next(c["data"])
            train_step(*c["model"], imgs, pids, args)
            sync(args.device)
            c["warm_s"] = time.perf_counter() - t0
        for _ in range(args.rounds):
            for c in configs.values():
                if cuda:
                    torch.cuda.reset_peak_memory_stats(args.device)
                c["times"] += run_chunk(c, args)
                c["peak"] = max(c["peak"], peak_mb(args.device))
        dev = torch.cuda.get_device_name() if cuda else f"cpu, {torch.get_num_threads()} threads"
        print(f"device {dev}, {args.backbone}, input {args.height}x{args.width}, batch {args.p}x{args.k}, "
              f"{'bf16 channels_last' if cuda else 'fp32'}, loader workers {args.workers}, "
              f"{args.rounds} rounds x {args.steps} steps")
        report(configs, args)


if __name__ == "__main__":
    main()

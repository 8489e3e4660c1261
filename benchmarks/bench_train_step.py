"""Training throughput, data included: Baseline and MHSA-Net (K=8), loader vs cache, eager vs compile.

Every configuration runs the training loop's own step (`mhsa.run.train.forward_backward`: autocast, loss,
GradScaler, optimiser, no host sync) on batches delivered by its data path from a synthetic Market-style
data set (128x64 JPEGs), so images/s is what a cell sustains. A chunk of ``--steps`` steps is timed from
one device sync to the next, as an epoch runs (the loop reads its losses once per epoch); configurations
run round-robin (``--rounds`` chunks each), so machine noise spreads over all of them; the median chunk is
reported.

CPU (default): 64x32 input, resnet18, P x K = 4 x 4, fp32, loader with 0 workers (the demo preset);
``--compile`` adds the compiled models (inductor needs minutes to compile on a small CPU).
CUDA: 384x128, resnet50, P x K = 32 x 4 = 128, bf16 autocast (checked by `mhsa.run.device.check_amp`),
channels_last, cuDNN autotuning, loader with 4 persistent workers (started once, as a CUDA cell does),
compile on. Peak memory (CUDA): ``max_memory_allocated`` during the configuration's chunks minus the
memory the *other* configurations keep resident (their weights, gradients and optimiser states), so each
row is that configuration's own; CPU: the process's peak RSS (cumulative, only the first row is its own).

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
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mhsa.config import build_run_config
from mhsa.data import datasets
from mhsa.data.batch_transforms import BatchAugment, CachedBatches
from mhsa.data.cache import DecodedCache
from mhsa.data.loader import ImageDataset
from mhsa.data.sampler import PKSampler
from mhsa.data.synthetic import generate
from mhsa.data.transforms import build_transforms
from mhsa.losses import Criterion
from mhsa.model.build import build_model_from_config
from mhsa.run import train
from mhsa.run.device import check_amp, configure_cuda, use_channels_last
from mhsa.run.optim import make_optimizer


def run_config(mhsam: bool, compiled: bool, args):
    loss = {} if mhsam else {"lambda1": 0.0, "lambda2": 0.0, "lambda3": 0.0}
    return build_run_config({
        "device": str(args.device), "amp": args.amp, "channels_last": True, "compile": compiled,
        "model": {"backbone": args.backbone, "pretrained": False, "num_heads": 8, "mhsam": mhsam},
        "data": {"height": args.height, "width": args.width, "p": args.p, "k": args.k, "workers": args.workers},
        "loss": loss, "optim": {"lr": 1e-4, "warmup_epochs": 0, "milestones": []},
    })


def make_cell(mhsam: bool, compiled: bool, ds, args) -> train.Cell:
    """A training cell as `mhsa.run.train.set_up` builds it (no data check, no test sets)."""
    cfg = run_config(mhsam, compiled, args)
    torch.manual_seed(0)
    fmt = torch.channels_last if use_channels_last(cfg, args.device) else torch.contiguous_format
    model = build_model_from_config(ds.num_train_pids, cfg.model).to(args.device).to(memory_format=fmt).train()
    if compiled:
        model.compile()
    sampler = PKSampler([p for _, p, _ in ds.train], args.p, args.k, seed=0)
    return train.Cell(cfg=cfg, device=args.device, train_set=ds, targets={}, sampler=sampler, model=model,
                      criterion=Criterion.from_config(cfg.loss), optimizer=make_optimizer(cfg.optim, model),
                      scaler=torch.amp.GradScaler("cuda", enabled=args.device.type == "cuda" and args.amp == "fp16"),
                      memory_format=fmt, ckpt_dir=Path(args.tmp))


def batches(kind: str, cell: train.Cell, cache, args):
    """An endless stream of training batches from the loader path (one loader, persistent workers: started
    once, as a CUDA cell does) or the cache path."""
    ds, sampler = cell.train_set, cell.sampler
    loader = None
    if kind == "loader":
        tf = build_transforms(args.height, args.width, train=True)
        loader = DataLoader(ImageDataset(ds.train, tf), batch_size=args.p * args.k, sampler=sampler,
                            drop_last=True, num_workers=args.workers, pin_memory=args.device.type == "cuda",
                            persistent_workers=args.workers > 0)
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        yield from loader if loader is not None else CachedBatches(
            cache, ds.train, sampler, args.p * args.k, args.device, BatchAugment(flip=True), seed=epoch)


def step(c: dict) -> torch.Tensor:
    imgs, pids, _, _ = next(c["data"])
    return train.forward_backward(c["cell"], imgs, pids)[1]


def resident_bytes(cell: train.Cell) -> int:
    """What a configuration keeps on the device between its chunks: weights, gradients, optimiser state."""
    tensors = [p for p in cell.model.parameters()] + [p.grad for p in cell.model.parameters() if p.grad is not None]
    tensors += [v for s in cell.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type == "cuda")


def run_chunk(c: dict, args) -> float:
    """``args.steps`` steps timed from one device sync to the next (data fetch included); seconds per step."""
    sync(args.device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        values = step(c)
    float(values[0])  # the loop's one read of the losses (here per chunk): waits for the device
    return (time.perf_counter() - t0) / args.steps


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_configs(ds, cache, args) -> dict:
    configs = {}
    for (label, mhsam), compiled, data in itertools.product(
            (("baseline", False), ("mhsa-net K=8", True)), args.compile_modes, ("loader", "cache")):
        name = f"{label:13s} {data:6s} {'compile' if compiled else 'eager':7s}"
        cell = make_cell(mhsam, compiled, ds, args)
        configs[name] = {"cell": cell, "data": batches(data, cell, cache, args), "times": [], "peak": 0.0,
                         "warm_s": 0.0}
    return configs


def measure(args) -> dict:
    """Warm-up, then ``args.rounds`` round-robin chunks of every configuration; returns the configurations
    with their per-step times, own peak memory (MiB) and warm-up seconds."""
    cuda = args.device.type == "cuda"
    if cuda:
        check_amp(args.amp, args.device)
        configure_cuda(args.amp)
    root = generate(Path(args.tmp) / "market1501", "market1501", seed=0, num_ids=args.ids,
                    images_per_id=8, height=128, width=64)
    ds = datasets.load("market1501", root)
    cache = DecodedCache.open_or_build(ds.train, args.height, args.width, Path(args.tmp) / "cache",
                                       {"dataset": "market1501", "root": root, "split": "train"})
    configs = build_configs(ds, cache, args)
    for c in configs.values():  # warm-up: compile, cudnn autotune, allocator, worker start
        t0 = time.perf_counter()
        float(step(c)[0])
        c["warm_s"] = time.perf_counter() - t0
    for _ in range(args.rounds):
        for c in configs.values():
            if cuda:
                others = torch.cuda.memory_allocated(args.device) - resident_bytes(c["cell"])
                torch.cuda.reset_peak_memory_stats(args.device)
            c["times"].append(run_chunk(c, args))
            if cuda:
                c["peak"] = max(c["peak"], (torch.cuda.max_memory_allocated(args.device) - others) / 2**20)
            else:
                c["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return configs


def report(configs: dict, args) -> list[str]:
    batch = args.p * args.k
    lines = [f"{'configuration':30s} {'step ms':>8s} {'images/s':>9s} {'peak MiB':>9s} {'warm-up s':>9s}"]
    rates = {}
    for name, c in configs.items():
        med = statistics.median(c["times"])
        rates[name] = batch / med
        lines.append(f"{name:30s} {med * 1000:8.1f} {batch / med:9.1f} {c['peak']:9.0f} {c['warm_s']:9.1f}")
    for a, b in itertools.combinations(rates, 2):
        same_model, same_compile = a.split()[0] == b.split()[0], a.split()[-1] == b.split()[-1]
        if same_model and same_compile and "loader" in a and "cache" in b:
            lines.append(f"  cache / loader   {a.split('loader')[0].strip():13s} {a.split()[-1]:7s}: "
                         f"{rates[b] / rates[a]:.2f}x")
        if same_model and "eager" in a and "compile" in b and a.split()[-2] == b.split()[-2]:
            lines.append(f"  compile / eager  {a.split()[0]:13s} {a.split()[-2]:7s}: {rates[b] / rates[a]:.2f}x")
        if a.startswith("baseline") and b.startswith("mhsa") and a.split()[1:] == b.split()[2:]:
            ratio = rates[a] / rates[b]
            lines.append(f"  step time MHSA-Net / Baseline, {' '.join(a.split()[1:]):14s}: {ratio:.3f} "
                         f"(target <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'})")
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per configuration and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--p", type=int, default=None)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--amp", default=None, help="bf16 | fp16 | off (CUDA; default bf16)")
    ap.add_argument("--compile", action="store_true", help="also the compiled models (default on CUDA)")
    ap.add_argument("--no-compile", action="store_true", help="eager models only, also on CUDA")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    args = ap.parse_args(argv)
    return complete_args(args)


def complete_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the size defaults: the paper's on CUDA, the demo's on CPU."""
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    args.device = torch.device("cuda" if cuda else "cpu")
    args.height, args.width = args.height or (384 if cuda else 64), args.width or (128 if cuda else 32)
    args.p, args.backbone = args.p or (32 if cuda else 4), args.backbone or ("resnet50" if cuda else "resnet18")
    args.workers = args.workers if args.workers is not None else (4 if cuda else 0)
    args.amp = args.amp or ("bf16" if cuda else "off")
    args.compile_modes = (False,) if args.no_compile else ((False, True) if (args.compile or cuda) else (False,))
    # enough identities for an epoch of >= 8 batches: the persistent loader is not restarted within a chunk
    args.ids = max(8 * args.p, 16)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        configs = measure(args)
        dev = torch.cuda.get_device_name() if args.device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
        print(f"device {dev}, {args.backbone}, input {args.height}x{args.width}, batch {args.p}x{args.k}, "
              f"amp {args.amp}, loader workers {args.workers}, {args.rounds} rounds x {args.steps} steps")
        print("\n".join(report(configs, args)))


if __name__ == "__main__":
    main()

"""channels_last against NCHW on the CPU, per input size: where `mhsa.run.device.use_channels_last` turns it on.

MHSA-Net (K=8) forward passes (eval mode) and training steps (forward, all losses, backward) on random
images, NCHW and channels_last alternating within each round (``--rounds``), the median per format
reported with the ratio channels_last / NCHW (> 1: channels_last faster). Sizes: the ci's 64x32, the
demo's 80x32 and 128x64 (ResNet-18), and ResNet-50 at 128x64, 256x128 and the paper's 384x128.

    python benchmarks/bench_channels_last.py                 # ~10 min on 2 cores
    python benchmarks/bench_channels_last.py --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mhsa.losses import Criterion
from mhsa.model import build_model

SIZES = (("resnet18", 64, 32, 32), ("resnet18", 80, 32, 32), ("resnet18", 128, 64, 32),
         ("resnet50", 128, 64, 16), ("resnet50", 256, 128, 8), ("resnet50", 384, 128, 8))


def runner(backbone: str, h: int, w: int, batch: int, fmt, train: bool):
    torch.manual_seed(0)
    model = build_model(batch // 2, num_heads=8, backbone=backbone, pretrained=False).to(memory_format=fmt)
    x = torch.randn(batch, 3, h, w).contiguous(memory_format=fmt)
    pids = torch.arange(batch // 2).repeat_interleave(2)
    crit = Criterion()
    model.train(train)

    def once() -> float:
        t0 = time.perf_counter()
        if train:
            model.zero_grad(set_to_none=True)
            crit(model(x), pids)[0].backward()
        else:
            with torch.inference_mode():
                model(x)
        return time.perf_counter() - t0

    once()  # warm-up (oneDNN primitive creation)
    return once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"cpu, {args.threads} threads, {args.rounds} rounds (median); images/s")
    print(f"{'model':9s} {'input':>8s} {'batch':>5s} {'mode':5s} {'NCHW':>8s} {'chan_last':>9s} {'ratio':>6s}")
    for backbone, h, w, batch in SIZES:
        for train in (False, True):
            runs = {f: runner(backbone, h, w, batch, f, train) for f in (torch.contiguous_format, torch.channels_last)}
            times = {f: [] for f in runs}
            for _ in range(args.rounds):
                for f, once in runs.items():
                    times[f].append(once())
            rate = {f: batch / statistics.median(t) for f, t in times.items()}
            ratio = rate[torch.channels_last] / rate[torch.contiguous_format]
            print(f"{backbone:9s} {h:>4d}x{w:<3d} {batch:5d} {'train' if train else 'eval':5s} "
                  f"{rate[torch.contiguous_format]:8.1f} {rate[torch.channels_last]:9.1f} {ratio:6.2f}", flush=True)


if __name__ == "__main__":
    main()

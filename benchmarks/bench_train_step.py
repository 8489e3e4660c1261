"""Training-step throughput: MHSA-Net (K=8) beside the Baseline (ResNet-50 + GFB), one run.

The ratio of step times is the cost of the attention branch (target: MHSA-Net <= 1.15x).
CPU: a reduced input (default 128x64, batch 16); CUDA: 384x128, batch 128, bf16 autocast,
channels_last. Steps are interleaved (A, B, A, B, ...) so machine noise hits both alike.

    python benchmarks/bench_train_step.py [--steps 6] [--height 128 --width 64 --batch 16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from mhsa.losses import Criterion
from mhsa.model import build_model


def make(mhsam: bool, device, channels_last: bool, num_classes: int):
    model = build_model(num_classes, num_heads=8, backbone="resnet50", pretrained=False, mhsam=mhsam).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    crit = Criterion() if mhsam else Criterion(lambda1=0, lambda2=0, lambda3=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    return model.train(), crit, opt


def step(model, crit, opt, x, y, amp):
    with amp():
        out = model(x)
    loss, _ = crit(out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    h, w = args.height or (384 if cuda else 128), args.width or (128 if cuda else 64)
    batch = args.batch or (128 if cuda else 16)
    ids = batch // 4
    x = torch.randn(batch, 3, h, w, device=device)
    if cuda:
        x = x.to(memory_format=torch.channels_last)
    y = torch.arange(ids, device=device).repeat_interleave(4)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext
    torch.manual_seed(0)
    models = {"baseline": make(False, device, cuda, ids), "mhsa-net K=8": make(True, device, cuda, ids)}
    times: dict[str, list[float]] = {k: [] for k in models}
    for m, c, o in models.values():  # warm-up (allocator, cudnn autotune)
        step(m, c, o, x, y, amp)
    for _ in range(args.steps):
        for name, (m, c, o) in models.items():
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(m, c, o, x, y, amp)
            if cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    print(f"device {device} ({torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} threads'}), "
          f"input {h}x{w}, batch {batch}, {args.steps} interleaved steps")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"  {k:14s} step {v * 1000:8.1f} ms   {batch / v:8.1f} images/s")
    ratio = med["mhsa-net K=8"] / med["baseline"]
    verdict = "met" if ratio <= 1.15 else "NOT met"
    print(f"  step-time ratio MHSA-Net / Baseline = {ratio:.3f}  (target <= 1.15: {verdict})")


if __name__ == "__main__":
    main()

"""What the CPU-kernel pin costs: training and evaluation speed at each `cpu_kernels` level, side by side.

Each (size, level) runs in a fresh process with the level's environment exported before torch is
imported (as `python -m mhsa train` and the workflow do); levels alternate over `--rounds` rounds so
machine noise spreads over all of them. Per process: MHSA-Net (K=8, all losses) training steps
(forward, losses, backward, Adam) on random images, and eval-mode forward passes; the median step
time is reported with the ratio to `native`.

    .venv/bin/python benchmarks/bench_cpu_kernels.py                  # demo and paper sizes, ~5 min
    .venv/bin/python benchmarks/bench_cpu_kernels.py --sizes demo     # demo size only, ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SIZES = {  # backbone, height, width, P, K (batch P*K), timed steps
    "demo": ("resnet18", 80, 32, 8, 4, 6),
    "paper": ("resnet50", 384, 128, 2, 4, 2),  # the paper's model and input, a batch a 2-core CPU can take
}


def child(size: str, threads: int) -> dict:
    import torch

    from mhsa.losses import Criterion
    from mhsa.model import build_model

    backbone, h, w, p, k, steps = SIZES[size]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(p * 2, num_heads=8, backbone=backbone, pretrained=False)
    crit, opt = Criterion(), torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(p * k, 3, h, w)
    pids = torch.arange(p).repeat_interleave(k)
    times = []
    model.train()
    for i in range(steps + 1):
        t = time.perf_counter()
        loss, _ = crit(model(x), pids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step allocates and picks kernels
            times.append(time.perf_counter() - t)
    model.eval()
    evals = []
    with torch.no_grad():
        for i in range(steps + 1):
            t = time.perf_counter()
            model(x)
            if i:
                evals.append(time.perf_counter() - t)
    return {"train": statistics.median(times), "eval": statistics.median(evals), "batch": p * k,
            "capability": torch.backends.cpu.get_cpu_capability()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--levels", nargs="+", default=["native", "avx2", "portable"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.threads)))
        return

    from mhsa.run.cpu_kernels import ENV_VARS, pin_env

    base = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    for size in args.sizes:
        got: dict[str, list[dict]] = {lv: [] for lv in args.levels}
        for _ in range(args.rounds):
            for level in args.levels:
                out = subprocess.run([sys.executable, __file__, "--child", size, "--threads", str(args.threads)],
                                     env={**base, **pin_env(level)}, capture_output=True, text=True, check=True)
                got[level].append(json.loads(out.stdout.strip().splitlines()[-1]))
        backbone, h, w, p, k, _ = SIZES[size]
        print(f"\n{size}: MHSA-Net K=8, {backbone} {h}x{w}, batch {p * k}, {args.threads} threads, "
              f"{args.rounds} rounds (median step of each process, best process shown)")
        print(f"{'level':10s} {'kernels':8s} {'train img/s':>11s} {'ratio':>6s} {'eval img/s':>10s} {'ratio':>6s}")
        best = {lv: (min(r["train"] for r in rs), min(r["eval"] for r in rs)) for lv, rs in got.items()}
        ref = best.get("native", best[args.levels[0]])
        for level, rs in got.items():
            tr, ev = best[level]
            batch = rs[0]["batch"]
            print(f"{level:10s} {rs[0]['capability']:8s} {batch / tr:11.1f} {ref[0] / tr:6.2f} "
                  f"{batch / ev:10.1f} {ref[1] / ev:6.2f}")


if __name__ == "__main__":
    main()

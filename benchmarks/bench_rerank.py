"""Benchmark: ``mhsa.evaluation.re_ranking`` vs the plain NumPy transcription of the reference code.

Inputs: clustered random 512-d features (~750 ids, Market-like 3,368 q / 15,913 g split, scaled to
the requested size), squared Euclidean distances as torchreid passes them (float32).
For each size: wall time, peak traced memory (tracemalloc: NumPy/SciPy allocations made during the
call, measured in the same run; input matrices not counted), ratio, max |difference|.

    .venv/bin/python benchmarks/bench_rerank.py                       # ref+ours at 4,000; ours at 19,281
    .venv/bin/python benchmarks/bench_rerank.py --ref-size 2000 --size 8000
    .venv/bin/python benchmarks/bench_rerank.py --ref-full            # also the reference at full size
                                                                      # (tens of minutes, ~8 GB)
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from reference_impls import re_ranking_loop  # noqa: E402

from mhsa.evaluation import re_ranking, squared_euclidean  # noqa: E402

MARKET_Q, MARKET_G = 3368, 15913
BUDGET_MIB = 1024  # stated peak working-memory budget of re_ranking at 19,281 images (output incl.)


def make_inputs(total, seed=0, dim=512, n_ids=750):
    nq = max(1, round(total * MARKET_Q / (MARKET_Q + MARKET_G)))
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, dim, generator=g)
    ids = torch.randint(0, n_ids, (total,), generator=g)
    f = centres[ids] + 1.2 * torch.randn(total, dim, generator=g)
    qf, gf = f[:nq], f[nq:]
    return (
        squared_euclidean(qf, gf).numpy(),
        squared_euclidean(qf, qf).numpy(),
        squared_euclidean(gf, gf).numpy(),
    )


def run(fn, *args):
    tracemalloc.start()
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    out = fn(*args)
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, dt, peak


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=MARKET_Q + MARKET_G, help="total images for ours alone")
    ap.add_argument("--ref-size", type=int, default=4000, help="total images measured side by side")
    ap.add_argument("--ref-full", action="store_true", help="also run the reference at --size")
    args = ap.parse_args(argv)
    print(f"torch threads: {torch.get_num_threads()}; memory = tracemalloc peak (NumPy/SciPy allocations)")

    sizes = [(args.ref_size, True), (args.size, args.ref_full)]
    for total, with_ref in sizes:
        qg, qq, gg = make_inputs(total)
        in_mib = (qg.nbytes + qq.nbytes + gg.nbytes) / 2**20
        print(
            f"\n== {total} images ({qg.shape[0]} q + {qg.shape[1]} g), k1=20 k2=6 lambda=0.3; "
            f"inputs {in_mib:.0f} MiB float32 (not counted), output {qg.nbytes / 2**20:.0f} MiB =="
        )
        ours, t_ours, m_ours = run(re_ranking, qg, qq, gg)
        print(f"re_ranking (ours)      : {t_ours:8.2f} s, peak {m_ours:7.0f} MiB (output included)")
        if total >= MARKET_Q + MARKET_G:
            status = "OK" if m_ours <= BUDGET_MIB else "OVER"
            print(f"memory budget {BUDGET_MIB} MiB at Market scale: {status}")
        if with_ref:
            ref, t_ref, m_ref = run(re_ranking_loop, qg, qq, gg)
            print(f"reference transcription: {t_ref:8.2f} s, peak {m_ref:7.0f} MiB")
            print(
                f"speed-up {t_ref / t_ours:.1f}x, memory ratio {m_ref / max(m_ours, 1e-9):.1f}x, "
                f"max |diff| {np.abs(ref - ours).max():.2e}"
            )
            assert np.abs(ref - ours).max() < 1e-5
        else:
            print("reference transcription: not run at this size (use --ref-full)")
        del qg, qq, gg, ours


if __name__ == "__main__":
    main()

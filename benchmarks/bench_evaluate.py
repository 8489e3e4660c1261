"""Benchmark: vectorised ``mhsa.evaluation.evaluate`` vs the per-query Python loop reference.

Market-sized random problem (3,368 queries x 15,913 gallery, 6 cameras, ~750 ids, float32 distances).
Prints wall time (best of --repeats for the vectorised version, one run of the loop), peak traced
memory (tracemalloc: Python/NumPy allocations during the call, measured in a separate untimed run),
the speed ratio, and asserts that both give the same metrics (1e-6).

    .venv/bin/python benchmarks/bench_evaluate.py            # full size, target ratio >= 10x
    .venv/bin/python benchmarks/bench_evaluate.py --small    # quick run (500 x 3,000)
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from reference_impls import evaluate_loop  # noqa: E402

from mhsa.evaluation import evaluate  # noqa: E402


def make_problem(nq, ng, n_ids, n_cams, seed=0):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, n_ids, nq), rng.integers(0, n_ids, ng)
    q_cams, g_cams = rng.integers(0, n_cams, nq), rng.integers(0, n_cams, ng)
    dist = rng.random((nq, ng), dtype=np.float32)
    # make true matches somewhat closer so metrics are not trivial
    dist -= 0.3 * (q_pids[:, None] == g_pids[None, :])
    return dist, q_pids, g_pids, q_cams, g_cams


def traced_peak_mb(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="500 queries x 3,000 gallery")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    nq, ng, n_ids = (500, 3000, 150) if args.small else (3368, 15913, 750)
    prob = make_problem(nq, ng, n_ids, 6)
    print(f"problem: {nq} queries x {ng} gallery, 6 cameras, {n_ids} ids, float32 distances")

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = evaluate(*prob)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ref = evaluate_loop(*prob)
    t_ref = time.perf_counter() - t0

    np.testing.assert_allclose(ours["cmc"], ref["cmc"], atol=1e-6)
    for k in ("mAP", "mINP", "mAP@50"):
        assert abs(ours[k] - ref[k]) < 1e-6, (k, ours[k], ref[k])
    assert ours["num_valid_queries"] == ref["num_valid_queries"]

    mem_ours = traced_peak_mb(lambda: evaluate(*prob))
    mem_ref = traced_peak_mb(lambda: evaluate_loop(*prob))
    t_best = min(times)
    print(
        f"results equal (1e-6): rank1={ours['cmc'][0]:.4f} mAP={ours['mAP']:.4f} "
        f"mINP={ours['mINP']:.4f} mAP@50={ours['mAP@50']:.4f} valid={ours['num_valid_queries']}"
    )
    print(
        f"evaluate (vectorised): best {t_best:.3f} s of {args.repeats} "
        f"({', '.join(f'{t:.3f}' for t in times)}), peak traced {mem_ours:.0f} MiB"
    )
    print(f"per-query loop ref   : {t_ref:.3f} s, peak traced {mem_ref:.0f} MiB")
    print(f"speed-up: {t_ref / t_best:.1f}x (best) / {t_ref / np.median(times):.1f}x (median)  target >= 10x")
    print(f"(input distmat itself: {prob[0].nbytes / 2**20:.0f} MiB, not counted)")


if __name__ == "__main__":
    main()

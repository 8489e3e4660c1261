"""The premise preset's numbers for docs/demo-study.md, "The paper's premise", from a finished run: per row of
Tables II and XIV the Rank-1 / mAP over seeds and MHSA-Net minus Baseline (Welch), then where the attention
goes (the attention-share diagnostics) with MHSA-Net against the Baseline and against chance.

    python benchmarks/premise_study.py [--results results/premise]

Reads results/premise/runs/*/metrics.json through the study of config.yaml; prints Markdown tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mhsa.evaluation.attention_share import CLASSES  # noqa: E402
from mhsa.study.build import build_study, load_study_config  # noqa: E402
from mhsa.study.tables import load_metrics, seed_values  # noqa: E402
from mhsa.study.welch import mean_interval, welch  # noqa: E402


def _ms(values) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def _test(a, b) -> str:
    w = welch(a, b)
    return "n/a" if w is None else f"{w.diff:+.1f} [{w.low:+.1f}, {w.high:+.1f}], p {w.p:.3f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "config.yaml"))
    ap.add_argument("--results", default=None, help="the preset's results folder (default: its results_dir)")
    args = ap.parse_args(argv)
    study = build_study(load_study_config(args.config), "premise")
    results = Path(args.results or study.config["results_dir"])
    metrics = load_metrics(results / "runs", study.cells)
    refs = {(r.table, r.row): r for r in study.rows if r.source == "table"}

    print("## Rank-1 / mAP (mean ± std over seeds), MHSA-Net - Baseline (Welch, 95 % interval)\n")
    print("| Table | Row | Rank-1 | mAP | Rank-1 vs its Baseline | mAP vs its Baseline |")
    print("|---|---|---|---|---|---|")
    for (table, row), ref in refs.items():
        r1 = seed_values(metrics, ref.cells, ref.dataset, ref.mode, "rank1")
        ap_ = seed_values(metrics, ref.cells, ref.dataset, ref.mode, "mAP")
        if not r1:
            continue
        base_row = "Baseline" if table == "II" else "Baseline, " + row.rsplit(", ", 1)[-1] if ", " in row else None
        cmp1 = cmp2 = ""
        if base_row and base_row != row and (table, base_row) in refs:
            b = refs[(table, base_row)]
            cmp1 = _test(r1, seed_values(metrics, b.cells, b.dataset, b.mode, "rank1"))
            cmp2 = _test(ap_, seed_values(metrics, b.cells, b.dataset, b.mode, "mAP"))
        print(f"| {table} | {row} | {_ms(r1)} | {_ms(ap_)} | {cmp1} | {cmp2} |")

    print("\n## Attention share % (mean over heads; Baseline: its activation map), mean ± std over seeds\n")
    head = " | ".join(f"{c} (chance)" for c in CLASSES)
    print(f"| Table | Row | {head} | occluder - chance (95 % t) | occluder vs Baseline (Welch) |")
    print("|---|---|" + "---|" * (len(CLASSES) + 2))
    seen = set()
    for (table, row), ref in refs.items():
        shares = [metrics[c]["diagnostics"]["attention_share"] for c in ref.cells
                  if "attention_share" in (metrics.get(c) or {}).get("diagnostics", {})]
        if not shares or tuple(ref.cells) in seen:
            continue
        seen.add(tuple(ref.cells))
        cells = []
        for i in range(len(CLASSES)):
            cells.append(f"{_ms([100 * s['mean'][i] for s in shares])} "
                         f"({np.mean([100 * s['chance'][i] for s in shares]):.1f})")
        occ = CLASSES.index("occluder")
        excess = [100 * (s["mean"][occ] - s["chance"][occ]) for s in shares]
        vs_chance = "n/a"
        if len(excess) > 1:
            m, lo, hi = mean_interval(excess)
            vs_chance = f"{m:+.1f} [{lo:+.1f}, {hi:+.1f}]"
        base_row = "Baseline" if table == "II" else "Baseline, " + row.rsplit(", ", 1)[-1] if ", " in row else None
        vs_base = ""
        if base_row and base_row != row and (table, base_row) in refs:
            b = refs[(table, base_row)]
            base = [100 * metrics[c]["diagnostics"]["attention_share"]["mean"][occ] for c in b.cells
                    if "attention_share" in (metrics.get(c) or {}).get("diagnostics", {})]
            vs_base = _test([100 * s["mean"][occ] for s in shares], base)
        print(f"| {table} | {row} | {' | '.join(cells)} | {vs_chance} | {vs_base} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

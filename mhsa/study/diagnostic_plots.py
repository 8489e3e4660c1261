"""Figures of the cell diagnostics (docs/demo-study.md, "Diagnostics"): one figure per cell family (the seeds of one
configuration) and the "Rank-1 vs occlusion" sanity curve. Drawn from ``mhsa.evaluation.diagnostics`` dicts
(metrics.json's ``diagnostics`` entry), never imported by training.

    python -m mhsa diagnostic-plots RUN_DIR [RUN_DIR ...] --out family.png   # seeds of one family
"""

from __future__ import annotations

import argparse
import io
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from mhsa.errors import cli_errors  # noqa: E402
from mhsa.evaluation.diagnostics import cell_diagnostics  # noqa: E402
from mhsa.io import atomic_write_bytes  # noqa: E402
from mhsa.run.results import read_attention, read_metrics  # noqa: E402

__all__ = ["family_figure", "rank1_vs_occlusion", "diagnostics_of_run"]


def _save(fig, path: str | Path, dpi: int = 110) -> Path:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _branches_panel(ax, diags: Sequence[Mapping]) -> None:
    order = ["global", "local", "concat"] + [f"head{i}" for i in range(1, 33)]
    present = [m for m in order if all(m in d.get("branches", {}).get("branches", {}) for d in diags)]
    stats = [_mean_std([d["branches"]["branches"][m]["rank1"] for d in diags]) for m in present]
    labels = {"global": "q* (global)", "local": "p* (local)", "concat": "[p*, q*]"}
    ax.bar(range(len(present)), [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=3,
           color=[sns.color_palette()[0 if m in labels else 1] for m in present])
    ax.set_xticks(range(len(present)), [labels.get(m, m.replace("head", "P")) for m in present],
                  rotation=45, ha="right")
    ax.set_ylabel("Rank-1 (%)")
    ax.set_title("each branch alone")


def _err(v: np.ndarray):
    return v.std(0, ddof=1) if len(v) > 1 else None


def _entropy_panel(ax, diags: Sequence[Mapping]) -> None:
    ent = np.array([d["attention"]["entropy_norm"] for d in diags], dtype=float)
    mass = np.array([d["attention"]["mass"] for d in diags], dtype=float)
    k, x = ent.shape[1], np.arange(1, ent.shape[1] + 1)
    ax.bar(x - 0.2, ent.mean(0), width=0.4, yerr=_err(ent), capsize=3, label="entropy / log(positions)")
    if k > 1:  # the Baseline's single map is an activation map, not a share across heads
        ax.bar(x + 0.2, mass.mean(0) * k, width=0.4, yerr=None if _err(mass) is None else _err(mass) * k,
               capsize=3, label="head mass x K (1 = balanced, 0 = dead head)")
    ax.axhline(1.0, color="grey", ls="--", lw=1)
    ax.set_xticks(x)
    ax.set_xlabel("head")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"per head: attention entropy ({diags[0]['attention']['positions']} positions) and mass")


def _overlap_panel(ax, diags: Sequence[Mapping]) -> None:
    if "overlap" not in diags[0]["attention"]:
        ax.axis("off")
        ax.text(0.5, 0.5, "one map: no head overlap", ha="center", va="center")
        return
    ov = np.mean([d["attention"]["overlap"] for d in diags], axis=0)
    sns.heatmap(ov, ax=ax, vmin=0, vmax=1, cmap="viridis", square=True, cbar_kws={"shrink": 0.7},
                xticklabels=range(1, len(ov) + 1), yticklabels=range(1, len(ov) + 1))
    fd = [d["attention"].get("fdrt_overlap") for d in diags]
    extra = f"; FDRT quantity {_mean_std(fd)[0]:.3f}" if all(x is not None for x in fd) else ""
    ax.set_title(f"attention-map overlap (cosine), mean off-diag "
                 f"{_mean_std([d['attention']['overlap_mean'] for d in diags])[0]:.2f}{extra}", fontsize=9)


def _losses_panel(ax, diags: Sequence[Mapping]) -> None:
    curves = [d["losses"] for d in diags if "losses" in d]
    if not curves:
        ax.axis("off")
        return
    for i, term in enumerate(curves[0]["weighted"]):
        values = np.array([c["weighted"][term] for c in curves if term in c["weighted"]], dtype=float)
        mean = np.abs(values).mean(0)
        if not np.isfinite(mean).any() or not (mean > 0).any():
            continue
        ax.plot(curves[0]["epochs"], mean, label=term, color=sns.color_palette("tab10")[i % 10])
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("weight x term (epoch mean)")
    ax.set_title("weighted loss terms")
    ax.legend(fontsize=7, ncol=2)


def family_figure(diags: Sequence[Mapping], out: str | Path, title: str = "") -> Path:
    """One figure for a cell family (the seeds of one configuration): per-branch Rank-1, attention
    entropy per head, head overlap, weighted loss terms over epochs (means over the seeds)."""
    if not diags:
        raise ValueError("family_figure needs at least one diagnostics dict")
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    _branches_panel(axes[0, 0], diags)
    _entropy_panel(axes[0, 1], diags)
    _overlap_panel(axes[1, 0], diags)
    _losses_panel(axes[1, 1], diags)
    fig.suptitle(f"{title} ({len(diags)} seed{'s' if len(diags) > 1 else ''})" if title else "")
    fig.tight_layout()
    return _save(fig, out)


def _occlusion_panel(ax, series: Mapping[str, Mapping[float, Sequence[float]]], title: str) -> None:
    for i, (label, points) in enumerate(series.items()):
        xs = sorted(x for x, v in points.items() if len(v))
        if not xs:
            continue
        stats = [_mean_std(points[x]) for x in xs]
        n = sorted({len(points[x]) for x in xs})
        offset = (i - (len(series) - 1) / 2) * 0.008  # keep overlapping error bars apart
        ax.errorbar(np.array(xs) + offset, [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=4,
                    marker="o", label=f"{label} (n={'/'.join(map(str, n))})")
    ax.set_xlabel("share of the body hidden by the occluder")
    ax.set_ylabel("Rank-1 (%), mean +- std over seeds")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def rank1_vs_occlusion(panels: Mapping[str, Mapping[str, Mapping[float, Sequence[float]]]], out: str | Path,
                       title: str = "") -> Path:
    """``panels``: panel title -> {series label -> {occluded share of the body: [Rank-1 per seed]}};
    one panel per entry (e.g. one per test set), points at the mean with +- std error bars."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.4), squeeze=False, sharex=True,
                             sharey=True)
    for ax, (panel, series) in zip(axes[0], panels.items(), strict=True):
        _occlusion_panel(ax, series, panel)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out)


def cell_families(run_dirs) -> dict:
    """Run dirs grouped by cell family: the cell id without its ``__s<seed>`` suffix."""
    families: dict[str, list[Path]] = {}
    for d in sorted(Path(r) for r in run_dirs):
        families.setdefault(re.sub(r"__s\d+$", "", d.name), []).append(d)
    return families


def diagnostics_of_run(run_dir: str | Path) -> dict:
    """metrics.json's ``diagnostics`` entry, or computed from metrics.json + attention.npz."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir / "metrics.json")  # a corrupt file: a ResultsError naming it
    if "diagnostics" in metrics:
        return metrics["diagnostics"]
    return cell_diagnostics(read_attention(run_dir / "attention.npz", required=("alpha",)), metrics)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mhsa diagnostic-plots", description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders of one family (its seeds)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "metrics.json").is_file()]
    if missing:
        raise SystemExit(f"no metrics.json in {', '.join(missing)}: pass finished run folders")
    with cli_errors():
        print(family_figure([diagnostics_of_run(r) for r in args.runs], args.out, args.title or args.runs[0].name))


if __name__ == "__main__":
    main()

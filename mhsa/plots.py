"""Figures of the reproduction: Figs. 9/10 (K sweeps), the lambda/gamma sweeps of Tables IX-XI,
attention overlays (trainer artifacts) and a Fig. 7 style attention grid.

Ours are drawn as lines (mean over seeds, a +-1 std band when several seeds); the paper's numbers as
markers, only where the paper gives a number (Figs. 9/10 have none in the text: their points come
from the table rows that name the same cell and test mode, e.g. Table VII `K=k` for the MHSAM series,
Table V / IX / X for the K=8 / K=7 points of +FDRT and +IHTL).

    python -m mhsa.plots --config config.yaml [--preset demo] --runs results/runs --out results/figures
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from mhsa.io import atomic_write_bytes  # noqa: E402
from mhsa.study import Study, build_study, cell_id, load_config, table_number, variant_knobs  # noqa: E402
from mhsa.tables import (  # noqa: E402
    DATASET_NAMES,
    METRIC_NAMES,
    load_metrics,
    load_paper,
    seed_values,
    synthetic_banner,
)

log = logging.getLogger(__name__)

# The swept knobs of the hyper-parameter tables (the x axis is read from the cells' knobs).
SWEEP_TABLES = {"IX": "lambda1", "X": "lambda2", "XI": "lambda3"}


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Render `fig` to PNG in memory, write it atomically, close it (callers lay it out first)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _suptitle(fig, title: str, study: Study | None) -> None:
    if study is not None and study.config.get("data_source") == "synthetic":
        title += "\n" + synthetic_banner(str(study.config.get("preset", "demo")))
    width = max(24, int(fig.get_figwidth() * 13))  # ~characters per line at fontsize 10
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.splitlines()), fontsize=10)


def _arch(cid: str) -> str:
    """Cell id without the seed: 'market1501__mhsam-K8__s0' -> 'market1501__mhsam-K8'."""
    return cid.rsplit("__s", 1)[0]


def _paper_lookup(paper: pd.DataFrame) -> dict:
    return {
        (t, r, d, m): v
        for t, r, d, m, v in zip(
            paper["table"], paper["row"], paper["dataset"], paper["metric"], paper["value"], strict=True
        )
    }


def _long_frame(study: Study, rows: list, metrics: dict, extra) -> pd.DataFrame:
    """One line per (row ref, metric, seed value) with the columns returned by `extra(rowref)`."""
    out = []
    for rr in rows:
        info = extra(rr)
        for m in rr.metrics:
            for v in seed_values(metrics, rr.cells, rr.dataset, rr.mode, m):
                out.append({**info, "dataset": rr.dataset, "metric": m, "value": v})
    return pd.DataFrame(out, columns=[*extra(rows[0]).keys(), "dataset", "metric", "value"] if rows else None)


# ----------------------------------------------------------------------------- Figs. 9 / 10


def paper_points_for_series(study: Study, fig_id: str, paper: pd.DataFrame) -> pd.DataFrame:
    """The paper's known points of a K-sweep figure: columns series, K, dataset, metric, value, source.

    A figure point (series, K, data set) takes the paper value of the first table row of the study
    that evaluates the same cell (same knobs, training set) with the same test mode on that data set.
    """
    pv = _paper_lookup(paper)
    table_rows = [r for r in study.rows if r.source == "table"]
    out, seen = [], set()
    for fr in (r for r in study.rows if r.source == "figure" and r.table == str(fig_id)):
        for tr in table_rows:
            if tr.dataset != fr.dataset or tr.mode != fr.mode or _arch(tr.cells[0]) != _arch(fr.cells[0]):
                continue
            for m in fr.metrics:
                key = (fr.series, fr.K, fr.dataset, m)
                val = pv.get((tr.table, tr.row, tr.dataset, m))
                if key in seen or val is None:
                    continue
                seen.add(key)
                out.append(
                    {
                        "series": fr.series,
                        "K": fr.K,
                        "dataset": fr.dataset,
                        "metric": m,
                        "value": val,
                        "source": f"Table {tr.table} / {tr.row}",
                    }
                )
    return pd.DataFrame(out, columns=["series", "K", "dataset", "metric", "value", "source"])


def plot_k_sweep(
    study: Study,
    fig_id: str,
    metrics: dict,
    paper: pd.DataFrame | None,
    out_path: str | Path,
    band: str = "sd",
) -> Path:
    """Figs. 9/10: a panel per metric (rows) x data set (columns); ours per series vs K, paper points."""
    fig_id = str(fig_id)
    spec = study.config.get("figures", {}).get(fig_id)
    if spec is None:
        raise KeyError(f"figure {fig_id!r} is not in this study (figures: {study.figure_ids()})")
    paper = load_paper() if paper is None else paper
    rows = [r for r in study.rows if r.source == "figure" and r.table == fig_id]
    ours = _long_frame(study, rows, metrics, lambda r: {"series": r.series, "K": r.K})
    pts = paper_points_for_series(study, fig_id, paper)
    series = list(dict.fromkeys(r.series for r in rows))
    palette = dict(zip(series, sns.color_palette("tab10", len(series)), strict=True))
    datasets, mets = list(spec["datasets"]), list(spec["metrics"])
    ks = sorted({r.K for r in rows if r.K is not None})

    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(
        len(mets), len(datasets), figsize=(4.2 * len(datasets), 3.2 * len(mets)), squeeze=False
    )
    for i, m in enumerate(mets):
        for j, d in enumerate(datasets):
            ax = axes[i][j]
            sub = ours[(ours["dataset"] == d) & (ours["metric"] == m)] if len(ours) else ours
            if len(sub):
                sns.lineplot(
                    data=sub,
                    x="K",
                    y="value",
                    hue="series",
                    palette=palette,
                    hue_order=series,
                    errorbar=band,
                    marker="o",
                    ax=ax,
                    legend=False,
                )
            p = pts[(pts["dataset"] == d) & (pts["metric"] == m)]
            for s in series:
                ps = p[p["series"] == s].sort_values("K")
                if len(ps):
                    ax.plot(
                        ps["K"],
                        ps["value"],
                        linestyle="none",
                        marker="*",
                        markersize=11,
                        markeredgecolor="black",
                        color=palette[s],
                    )
            ax.set_title(f"{DATASET_NAMES.get(d, d)} - {METRIC_NAMES.get(m, m)}", fontsize=9)
            ax.set_xlabel("K (heads)")
            ax.set_ylabel(f"{METRIC_NAMES.get(m, m)} (%)")
            if ks:
                ax.set_xticks(ks)
            if not len(sub) and not len(p):
                ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes)
    handles = [plt.Line2D([], [], color=palette[s], marker="o", label=f"{s} (ours)") for s in series]
    handles += [
        plt.Line2D(
            [],
            [],
            color=palette[s],
            marker="*",
            markersize=11,
            markeredgecolor="black",
            linestyle="none",
            label=f"{s} (paper)",
        )
        for s in series
    ]
    fig.legend(handles=handles, loc="lower center", ncol=max(len(handles) // 2, 1), fontsize=8)
    _suptitle(fig, f"Fig. {fig_id}: {spec.get('title', '')}", study)
    fig.tight_layout(rect=(0, 0.09 * 2 / max(len(mets), 1), 1, 1))
    return save_figure(fig, out_path)


# ----------------------------------------------------------------------------- Tables IX - XI sweeps


def _sweep_panels(study: Study, table_id: str) -> list:
    """[(panel title, x knob, group knob or None, x-rows, baseline rows)] for Tables IX/X/XI."""
    rows = [r for r in study.rows if r.source == "table" and r.table == table_id]
    knobs = {r.row: study.cells[r.cells[0]].knobs for r in rows}
    if table_id == "IX":
        return [
            (
                "lambda1 (FDRT weight)",
                "lambda1",
                None,
                [r for r in rows if knobs[r.row]["lambda1"] > 0],
                [r for r in rows if knobs[r.row]["lambda1"] == 0],
            )
        ]
    if table_id == "X":
        return [
            (
                "lambda2 (IHTL weight)",
                "lambda2",
                "K",
                [r for r in rows if knobs[r.row]["lambda2"] > 0],
                [r for r in rows if knobs[r.row]["lambda2"] == 0],
            )
        ]
    if table_id == "XI":
        sweep = [r for r in rows if knobs[r.row]["lambda3"] > 0]
        base = [r for r in rows if knobs[r.row]["lambda3"] == 0]
        return [
            (
                "lambda3 (ACM weight), gamma = 1e-3",
                "lambda3",
                None,
                [r for r in sweep if math.isclose(knobs[r.row]["gamma"], 1e-3)],
                base,
            ),
            (
                "gamma (ACM threshold), lambda3 = 1e-3",
                "gamma",
                None,
                [r for r in sweep if math.isclose(knobs[r.row]["lambda3"], 1e-3)],
                base,
            ),
        ]
    raise KeyError(f"no parameter sweep for table {table_id!r}")


def plot_param_sweep(
    study: Study, table_id: str, metrics: dict, paper: pd.DataFrame, out_path: str | Path, band: str = "sd"
) -> Path:
    """One figure for Table IX, X or XI: a panel per (swept knob, metric), log x, ours vs paper."""
    pv = _paper_lookup(paper)
    panels = _sweep_panels(study, table_id)
    mets = list(study.config["tables"][table_id]["metrics"])
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(
        len(panels), len(mets), figsize=(4.3 * len(mets) + 2.2, 3.2 * len(panels)), squeeze=False
    )
    handles: list = []
    for i, (title, xk, gk, xrows, brows) in enumerate(panels):

        def info(r, xk=xk, gk=gk):
            k = study.cells[r.cells[0]].knobs
            return {"x": float(k[xk]), "group": f"K={k['K']}" if gk else "ours"}

        ours = _long_frame(study, xrows, metrics, info)
        groups = list(dict.fromkeys(info(r)["group"] for r in xrows + brows)) or ["ours"]
        palette = dict(zip(groups, sns.color_palette("tab10", len(groups)), strict=True))
        for j, m in enumerate(mets):
            ax = axes[i][j]
            sub = ours[ours["metric"] == m] if len(ours) else ours
            if len(sub):
                sns.lineplot(
                    data=sub,
                    x="x",
                    y="value",
                    hue="group",
                    hue_order=groups,
                    palette=palette,
                    errorbar=band,
                    marker="o",
                    ax=ax,
                    legend=False,
                )
            for g in groups:
                gx = sorted(
                    (info(r)["x"], pv.get((table_id, r.row, r.dataset, m)))
                    for r in xrows
                    if info(r)["group"] == g
                )
                gx = [(x, v) for x, v in gx if v is not None]
                if gx:
                    ax.plot(
                        *zip(*gx, strict=True),
                        linestyle="--",
                        marker="*",
                        markersize=10,
                        color=palette[g],
                        alpha=0.8,
                    )
                for r in brows:
                    if info(r)["group"] != g:
                        continue
                    v = pv.get((table_id, r.row, r.dataset, m))
                    if v is not None:
                        ax.axhline(v, color=palette[g], linestyle=":", linewidth=1)
                    vals = seed_values(metrics, r.cells, r.dataset, r.mode, m)
                    if vals:
                        ax.axhline(
                            float(np.mean(vals)), color=palette[g], linestyle="-", linewidth=0.8, alpha=0.5
                        )
            ax.set_xscale("log")
            ax.set_xlabel(title)
            ax.set_ylabel(f"{METRIC_NAMES.get(m, m)} (%)")
            ax.set_title(
                f"{DATASET_NAMES.get(xrows[0].dataset, '') if xrows else ''} {METRIC_NAMES.get(m, m)}",
                fontsize=9,
            )
            if i == 0 and j == 0:
                for g in groups:
                    label = "" if g == "ours" else f"{g} "
                    handles += [
                        plt.Line2D([], [], color=palette[g], marker="o", label=f"{label}ours"),
                        plt.Line2D(
                            [], [], color=palette[g], marker="*", linestyle="--", label=f"{label}paper"
                        ),
                        plt.Line2D(
                            [], [], color=palette[g], linestyle=":", label=f"{label}reference row (paper)"
                        ),
                        plt.Line2D(
                            [],
                            [],
                            color=palette[g],
                            linestyle="-",
                            linewidth=0.8,
                            alpha=0.5,
                            label=f"{label}reference row (ours)",
                        ),
                    ]
    fig.legend(handles=handles, loc="center right", fontsize=7)
    _suptitle(fig, f"Table {table_id}: {study.config['tables'][table_id].get('title', '')}", study)
    fig.tight_layout(rect=(0, 0, 1 - 2.2 / (4.3 * len(mets) + 2.2), 1))
    return save_figure(fig, out_path)


def plot_param_sweeps(study: Study, metrics: dict, paper: pd.DataFrame | None, out_dir: str | Path) -> list:
    """Tables IX (lambda1), X (lambda2 at K=7, 8), XI (lambda3 and gamma) present in the study -> PNGs."""
    paper = load_paper() if paper is None else paper
    out = []
    for tid, knob in SWEEP_TABLES.items():
        if tid in study.table_ids():
            name = "lambda3_gamma" if tid == "XI" else knob
            out.append(
                plot_param_sweep(
                    study, tid, metrics, paper, Path(out_dir) / f"table_{table_number(tid)}_{name}.png"
                )
            )
    return out


# ----------------------------------------------------------------------------- attention maps


def _to_hwc(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N,3,H,W) or (N,H,W,3), got shape {images.shape}")
    if images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)
    elif images.shape[1] in (1, 3) and images.shape[-1] in (1, 3) and images.shape[2] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # ambiguous (N,3,H,3): torch layout, as the trainer writes
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    if images.dtype != np.uint8:
        images = np.clip(images, 0, 255).astype(np.uint8)
    return images


def upsample_bilinear(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (..., h, w) to (..., height, width) (half-pixel centers, align_corners=False)."""
    a = np.asarray(a, dtype=np.float32)
    h, w = a.shape[-2:]

    def coords(n_out, n_in):
        x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        x = np.clip(x, 0, n_in - 1)
        lo = np.floor(x).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (x - lo).astype(np.float32)

    y0, y1, fy = coords(height, h)
    x0, x1, fx = coords(width, w)
    rows = a[..., y0, :] * (1 - fy)[:, None] + a[..., y1, :] * fy[:, None]
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx


def save_attention_overlay(
    images, alpha, path: str | Path, titles: list | None = None, cmap: str = "jet"
) -> Path:
    """A grid, one row per image: the image, each head's alpha (upsampled, overlaid), the max over heads.

    images: uint8 (N,3,H,W) or (N,H,W,3); alpha: float (N,K,h,w). Heads of one image share a color
    scale (0 .. the image's max over heads) so suppressed heads look suppressed. With K=1 the max
    column is omitted (it would repeat the head).
    """
    imgs = _to_hwc(images)
    alpha = np.asarray(alpha, dtype=np.float32)
    if alpha.ndim == 3:
        alpha = alpha[:, None]
    if alpha.ndim != 4 or alpha.shape[0] != imgs.shape[0]:
        raise ValueError(f"alpha must be (N,K,h,w) with N={imgs.shape[0]}, got {alpha.shape}")
    n, k = alpha.shape[:2]
    H, W = imgs.shape[1:3]
    up = upsample_bilinear(alpha, H, W)
    cols = 1 + k + (1 if k > 1 else 0)
    fig, axes = plt.subplots(n, cols, figsize=(1.1 * cols, 2.3 * n), squeeze=False)
    for i in range(n):
        vmax = float(up[i].max()) or 1.0
        vmin = min(float(up[i].min()), 0.0)
        panels = [(None, "image")] + [(up[i, h], f"head {h + 1}") for h in range(k)]
        if k > 1:
            panels.append((upsample_bilinear(alpha[i].max(axis=0), H, W), "max"))
        for j, (amap, label) in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(imgs[i])
            if amap is not None:
                ax.imshow(amap, cmap=cmap, alpha=0.5, vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=7)
            if j == 0 and titles is not None and i < len(titles):
                ax.set_ylabel(str(titles[i]), fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def attention_models(study: Study, dataset: str) -> list:
    """[(label, cell id without seed)] of the Fig. 7 models trained on `dataset`."""
    cfg = study.config
    out = []
    for label, spec in (
        ("Baseline", {"variant": "baseline"}),
        ("MHSAM (K=8)", {"variant": "mhsam", "K": 8}),
        ("MHSAM+ACM (K=8)", {"variant": "mhsam_acm", "K": 8}),
        ("MHSA-Net (K=8)", {"variant": "mhsa_net", "K": 8}),
    ):
        if spec["variant"] not in cfg.get("variants", {}):
            continue
        knobs = variant_knobs(cfg, f"Fig. 7 / {label}", spec)
        out.append((label, _arch(cell_id(dataset, knobs, 0))))
    return out


def _find_attention(runs_dir: Path, arch: str, seeds: list) -> Path | None:
    for s in seeds:
        p = runs_dir / f"{arch}__s{s}" / "attention.npz"
        if p.is_file():
            return p
    found = sorted(runs_dir.glob(f"{arch}__s*/attention.npz"))
    return found[0] if found else None


def plot_attention_grid(
    study: Study,
    runs_dir: str | Path,
    out_path: str | Path,
    dataset: str = "occluded_duke",
    max_images: int = 6,
) -> Path:
    """Fig. 7 style: the same query images with the Baseline / MHSAM / MHSA-Net attention (max over heads)."""
    runs_dir = Path(runs_dir)
    seeds = [int(s) for s in study.config.get("seeds", [0])]
    loaded = []
    for label, arch in attention_models(study, dataset):
        path = _find_attention(runs_dir, arch, seeds)
        if path is None:
            log.info("no attention.npz for %s (%s); skipping it", label, arch)
            continue
        with np.load(path) as z:
            loaded.append((label, z["images"], np.asarray(z["alpha"], dtype=np.float32)))
    if not loaded:
        raise FileNotFoundError(
            f"no attention.npz under {runs_dir} for the Baseline / MHSAM / MHSA-Net cells "
            f"of {dataset!r} (expected e.g. {runs_dir}/<cell>/attention.npz)"
        )
    imgs = _to_hwc(loaded[0][1])
    n = min([max_images, imgs.shape[0]] + [a.shape[0] for _, _, a in loaded])
    H, W = imgs.shape[1:3]
    cols = 1 + len(loaded)
    fig, axes = plt.subplots(n, cols, figsize=(1.3 * cols, 2.4 * n), squeeze=False)
    for i in range(n):
        axes[i][0].imshow(imgs[i])
        for j, (_, _, alpha) in enumerate(loaded, start=1):
            # max over heads at feature resolution, then upsampled: the max of upsampled maps is
            # convex between feature pixels and paints stripes that are not in the attention
            amap = upsample_bilinear(alpha[i].max(axis=0), H, W)
            axes[i][j].imshow(imgs[i])
            axes[i][j].imshow(amap, cmap="jet", alpha=0.5)
        for j in range(cols):
            axes[i][j].set_xticks([])
            axes[i][j].set_yticks([])
            if i == 0:
                axes[i][j].set_title("query" if j == 0 else loaded[j - 1][0], fontsize=7)
    _suptitle(fig, f"Attention on {DATASET_NAMES.get(dataset, dataset)} (max over heads)", study)
    fig.tight_layout()
    return save_figure(fig, out_path)


# ----------------------------------------------------------------------------- all figures


def build_all_figures(
    study: Study, runs_dir: str | Path, out_dir: str | Path, paper_csv: str | Path | None = None
) -> list:
    """Figs. of `study.figure_ids()`, the sweeps of Tables IX-XI, and Fig. 7 if attention maps exist."""
    paper = load_paper(paper_csv)
    metrics = load_metrics(runs_dir)
    out_dir = Path(out_dir)
    sweeps = [f for f in study.figure_ids() if study.config["figures"][f].get("sweep")]  # Figs. 9/10
    paths = [plot_k_sweep(study, fid, metrics, paper, out_dir / f"fig_{fid}.png") for fid in sweeps]
    paths += plot_param_sweeps(study, metrics, paper, out_dir)
    # Fig. 7 is on Occluded-Duke; fall back to the first other training set that has attention maps.
    known = study.config.get("datasets", {})
    trained = sorted({c.dataset for c in study.cells.values()} - {"occluded_duke"})
    for ds in ["occluded_duke", *trained]:
        if ds not in known:
            continue
        try:
            paths.append(plot_attention_grid(study, runs_dir, out_dir / f"fig_7_attention_{ds}.png", ds))
        except FileNotFoundError:
            continue
        break
    return paths


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mhsa.plots", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--runs", default="results/runs")
    ap.add_argument("--out", default="results/figures")
    ap.add_argument("--paper", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    study = build_study(load_config(args.config), args.preset)
    paths = build_all_figures(study, args.runs, args.out, args.paper)
    print(f"wrote {len(paths)} figure(s) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

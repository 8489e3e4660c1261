"""Figures of the reproduction, as config.yaml describes them.

Each entry of `figures:` names its `plot.kind`; a table with a `plot:` entry is drawn as well:

* `k_sweep` (figures with a `sweep:`): a panel per metric x data set, each series against the swept
  number of heads K. Ours are lines (the tables' numbers: one seed's value or the mean over seeds) with the
  tables' 95 % intervals as error bars (`mhsa.study.uncertainty`: a bootstrap over the test set's query
  identities with one seed, the t interval over seeds widened by it with several); the paper's
  numbers are markers, only where the paper gives one (a figure point takes the number of the first
  table row of the study that evaluates the same cell with the same test mode);
* `param_sweep` (tables): a panel per (`plot.panels` entry, metric), the panel's knob on the x axis,
  the rows where `reference` holds as horizontal lines, optional series per value of a `group` knob;
* `attention_grid` (figures): the query images of each data set of the figure with the attention
  (max over heads) of each series' cell, from `results/runs/<cell>/attention.npz`.

`save_attention_overlay` draws one cell's heads (`results/runs/<cell>/attention.png`).

    python -m mhsa plots [--config config.yaml] [--preset ci] [--runs results/ci/runs] [--out results/ci/figures]
"""

from __future__ import annotations

import argparse
import functools
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
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from mhsa.errors import cli_errors  # noqa: E402
from mhsa.evaluation.diagnostics import attention_entropy  # noqa: E402
from mhsa.io import atomic_write_bytes  # noqa: E402
from mhsa.run.results import read_attention  # noqa: E402
from mhsa.study.build import Study, build_study, load_study_config, table_number  # noqa: E402
from mhsa.study.figure_specs import (  # noqa: E402
    SweepPanel,
    attention_kind,
    check_plot_specs,
    plot_spec,
    series_colours,
    sweep_panels,
)
from mhsa.study.tables import (  # noqa: E402
    DATASET_NAMES,
    METRIC_NAMES,
    load_metrics,
    load_paper,
    require_runs,
    seed_values,
    study_arguments,
    study_dirs,
    synthetic_banner,
)
from mhsa.study.uncertainty import BOOTSTRAP, SEEDS, SEEDS_BOOTSTRAP, Uncertainty  # noqa: E402

log = logging.getLogger(__name__)


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
    # never inside a word: "Occluded-DukeMTMC" is one name
    fig.suptitle("\n".join(textwrap.fill(line, width, break_on_hyphens=False, break_long_words=False)
                           for line in title.splitlines()), fontsize=10)


def _arch(cid: str) -> str:
    """Cell id without the seed: '<set>__<arch>__s0' -> '<set>__<arch>'."""
    return cid.rsplit("__s", 1)[0]


def _paper_lookup(paper: pd.DataFrame) -> dict:
    return {
        (t, r, d, m): v
        for t, r, d, m, v in zip(
            paper["table"], paper["row"], paper["dataset"], paper["metric"], paper["value"], strict=True
        )
    }


def _interval_frame(rows: list, metrics: dict, extra) -> pd.DataFrame:
    """One line per (row ref, metric) with a result: the columns of `extra(rowref)`, then dataset, metric and
    the number the tables print with its interval (value, low, high; NaN where there is none), n_seeds and
    the interval's method (`mhsa.study.uncertainty.Uncertainty.interval`)."""
    unc, out = Uncertainty(metrics), []
    for rr in rows:
        for m in rr.metrics:
            iv = unc.interval(rr.cells, rr.dataset, rr.mode, m)
            if iv is not None:
                out.append({**extra(rr), "dataset": rr.dataset, "metric": m, "value": iv.value, "low": iv.low,
                            "high": iv.high, "n_seeds": iv.n_seeds, "method": iv.method})
    cols = [*extra(rows[0]).keys(), "dataset", "metric", "value", "low", "high", "n_seeds", "method"] if rows else None
    return pd.DataFrame(out, columns=cols)


def _interval_lines(ax, frame: pd.DataFrame, x: str, hue: str, palette: dict) -> None:
    """Each `hue` group's values against `x` as a line, its intervals as error bars (none where NaN)."""
    for group, colour in palette.items():
        s = frame[frame[hue] == group].sort_values(x)
        if not len(s):
            continue
        ax.plot(s[x], s["value"], marker="o", color=colour)
        s = s[s["low"].notna() & s["high"].notna()]
        if len(s):
            ax.errorbar(s[x], s["value"], yerr=[s["value"] - s["low"], s["high"] - s["value"]], fmt="none",
                        ecolor=colour, elinewidth=1, capsize=2.5, alpha=0.8)


def interval_label(frame: pd.DataFrame) -> str:
    """What the lines and error bars of `frame` are, for the legend: the seeds and the interval's method."""
    if not len(frame):
        return "no results yet"
    seeds = sorted({int(n) for n in frame["n_seeds"]})
    value = f"mean of {seeds[-1]} seeds" if seeds == [seeds[-1]] and seeds[-1] > 1 else (
        "1 seed" if seeds == [1] else f"mean of {'-'.join(map(str, (seeds[0], seeds[-1])))} seeds")
    methods = set(frame["method"])
    bars = {BOOTSTRAP: "bootstrap over query ids", SEEDS_BOOTSTRAP: "seeds + bootstrap", SEEDS: "t over seeds"}
    named = [bars[m] for m in (BOOTSTRAP, SEEDS_BOOTSTRAP, SEEDS) if m in methods]
    if not named:
        return f"{value}, no interval (no per-query results)"
    return f"{value}, 95 % interval: {' / '.join(named)}" + (" (not every point)" if "" in methods else "")


def _ax_labels(ax, title: str, xlabel: str, metric: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} (%)")


def _star(color, label: str | None = None, **kw) -> plt.Line2D:
    """Legend handle of the paper's points."""
    return plt.Line2D([], [], color=color, marker="*", markersize=11, markeredgecolor="black",
                      linestyle="none", label=label, **kw)


# ----------------------------------------------------------------------------- K sweeps (figures)


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
                out.append({"series": fr.series, "K": fr.K, "dataset": fr.dataset, "metric": m,
                            "value": val, "source": f"Table {tr.table} / {tr.row}"})
    return pd.DataFrame(out, columns=["series", "K", "dataset", "metric", "value", "source"])


def _k_sweep_panel(ax, ours, pts, series, palette) -> None:
    """One data set x metric: our series against K (line, the tables' intervals as error bars), the
    paper's stars."""
    if len(ours):
        _interval_lines(ax, ours, "K", "series", {s: palette[s] for s in series})
    for s in series:
        ps = pts[pts["series"] == s].sort_values("K")
        if len(ps):
            ax.plot(ps["K"], ps["value"], linestyle="none", marker="*", markersize=11,
                    markeredgecolor="black", color=palette[s])
    if not len(ours) and not len(pts):
        ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes)


def star_note(fig_id: str, series: list, ks: list, pts: pd.DataFrame) -> str:
    """Why a series has stars at some K only: the paper prints no numbers in its K-sweep figures, so a
    star is a number of one of its tables that reports the same model (paper_points_for_series)."""
    parts = []
    for s in series:
        ps = pts[pts["series"] == s]
        at = sorted({int(k) for k in ps["K"]})
        if not at:
            parts.append(f"{s}: none")
            continue
        where = ", ".join(dict.fromkeys(src.split(" / ")[0] for src in ps.sort_values("K")["source"]))
        span = "every K" if at == sorted(ks) else "K=" + ",".join(map(str, at))
        parts.append(f"{s}: {span} ({where})")
    return (f"Paper stars only where a table of the paper reports the same model (Fig. {fig_id} prints no "
            f"numbers): " + "; ".join(parts) + ".")


def plot_k_sweep(
    study: Study,
    fig_id: str,
    metrics: dict,
    paper: pd.DataFrame | None,
    out_path: str | Path,
) -> Path:
    """A K-sweep figure laid out as the paper's: a row per data set, a column per metric, panels (a), (b),
    ... in reading order (the paper's captions: (a) the first data set's Rank-1, (b) its mAP, ...); ours
    per series against K, the paper's known points as stars (`star_note` says where they come from), the
    series in `plot.colors` (the paper's colours) or tab10."""
    fig_id = str(fig_id)
    plot_spec(study, "figures", fig_id)
    spec = study.config["figures"][fig_id]
    paper = load_paper() if paper is None else paper
    rows = [r for r in study.rows if r.source == "figure" and r.table == fig_id]
    ours = _interval_frame(rows, metrics, lambda r: {"series": r.series, "K": r.K})
    pts = paper_points_for_series(study, fig_id, paper)
    series = list(dict.fromkeys(r.series for r in rows))
    colours = series_colours(study, fig_id) or sns.color_palette("tab10", len(series))
    palette = dict(zip(series, colours, strict=True))
    datasets, mets = list(spec["datasets"]), list(spec["metrics"])
    ks = sorted({r.K for r in rows if r.K is not None})

    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(len(datasets), len(mets), figsize=(4.2 * len(mets), 3.2 * len(datasets)),
                             squeeze=False)
    for i, d in enumerate(datasets):
        for j, m in enumerate(mets):
            ax = axes[i][j]
            sub = ours[(ours["dataset"] == d) & (ours["metric"] == m)] if len(ours) else ours
            _k_sweep_panel(ax, sub, pts[(pts["dataset"] == d) & (pts["metric"] == m)], series, palette)
            letter = "abcdefghijklmnopqrstuvwxyz"[(i * len(mets) + j) % 26]
            _ax_labels(ax, f"({letter}) {DATASET_NAMES.get(d, d)} - {METRIC_NAMES.get(m, m)}", "K (heads)", m)
            if ks:
                ax.set_xticks(ks)
    mean = interval_label(ours)
    handles = [plt.Line2D([], [], color=palette[s], marker="o", label=f"{s} (ours, {mean})") for s in series]
    handles += [_star(palette[s], f"{s} (paper)") for s in series]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, bbox_to_anchor=(0.5, 0.045))
    fig.text(0.5, 0.008, textwrap.fill(star_note(fig_id, series, ks, pts), 150), ha="center", va="bottom",
             fontsize=7, color="#333")
    _suptitle(fig, f"Fig. {fig_id}: {spec.get('title', '')}", study)
    fig.tight_layout(rect=(0, 0.16 * 2 / max(len(datasets), 1), 1, 1))
    return save_figure(fig, out_path)


# ----------------------------------------------------------------------------- parameter sweeps (tables)


def sweep_file_name(study: Study, table_id: str) -> str:
    """'table_<n>_<x knobs of the panels>.png'."""
    xs = dict.fromkeys(p["x"] for p in plot_spec(study, "tables", table_id)["panels"])
    return f"table_{table_number(table_id)}_{'_'.join(xs)}.png"


def _sweep_axis(ax, table_id: str, panel: SweepPanel, dataset: str, metric: str, ctx: dict) -> None:
    """One panel x data set x metric: ours per group (line), the paper's sweep (dashed stars) and
    the reference rows (horizontal lines)."""
    info, palette, pv, metrics, ours = ctx["info"], ctx["palette"], ctx["paper"], ctx["metrics"], ctx["ours"]
    sub = ours[(ours["metric"] == metric) & (ours["dataset"] == dataset)] if len(ours) else ours
    if len(sub):
        _interval_lines(ax, sub, "x", "group", palette)
    for g, color in palette.items():
        pts = sorted((info(r)["x"], pv.get((table_id, r.row, r.dataset, metric)))
                     for r in panel.rows if info(r)["group"] == g and r.dataset == dataset)
        pts = [(x, v) for x, v in pts if v is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), linestyle="--", marker="*", markersize=10, color=color, alpha=0.8)
        for r in (r for r in panel.reference if info(r)["group"] == g and r.dataset == dataset):
            v = pv.get((table_id, r.row, r.dataset, metric))
            if v is not None:
                ax.axhline(v, color=color, linestyle=":", linewidth=1)
            vals = seed_values(metrics, r.cells, r.dataset, r.mode, metric)
            if vals:
                ax.axhline(float(np.mean(vals)), color=color, linestyle="-", linewidth=0.8, alpha=0.5)
    ax.set_xscale(panel.scale)
    _ax_labels(ax, f"{DATASET_NAMES.get(dataset, dataset)} {METRIC_NAMES.get(metric, metric)}", panel.label, metric)


def _sweep_legend(palette: dict, references: dict, with_paper: dict) -> list:
    """Handles per group of what the panel draws: ours; the paper's where it has numbers for the group
    (`with_paper`: group -> bool); the group's reference rows by name where it has any (`references`: group ->
    the row names drawn as horizontal lines, e.g. "Baseline+MHSAM")."""
    handles = []
    for g, color in palette.items():
        label = "" if g == "ours" else f"{g} "
        handles.append(plt.Line2D([], [], color=color, marker="o", label=f"{label}ours"))
        if with_paper.get(g):
            handles.append(plt.Line2D([], [], color=color, marker="*", linestyle="--", label=f"{label}paper"))
        if references.get(g):
            ref = " / ".join(references[g])
            handles += [plt.Line2D([], [], color=color, linestyle=":", label=f"{ref} (paper)"),
                        plt.Line2D([], [], color=color, linestyle="-", linewidth=0.8, alpha=0.5, label=f"{ref} (ours)")]
    return handles


def group_names(study: Study, panel: SweepPanel) -> dict:
    """A sweep panel's group value -> its legend name: the rows' common name where every row of the group is
    named "<name>, <x>" (e.g. "Baseline, 35 %" -> "Baseline"), else "<knob>=<value>"."""
    if not panel.group:
        return {}
    rows: dict = {}
    for r in panel.rows + panel.reference:
        rows.setdefault(study.cells[r.cells[0]].knobs[panel.group], []).append(r.row)
    out = {}
    for value, names in rows.items():
        heads = {n.rsplit(", ", 1)[0] for n in names if ", " in n}
        whole = len(heads) == 1 and all(", " in n for n in names)
        out[value] = heads.pop() if whole else f"{panel.group}={value}"
    if len(set(out.values())) < len(out):  # two groups under one name: say the knob instead
        out = {value: f"{panel.group}={value}" for value in out}
    return out


def plot_param_sweep(
    study: Study, table_id: str, metrics: dict, paper: pd.DataFrame, out_path: str | Path
) -> Path:
    """A table's `plot: {kind: param_sweep}`: a panel per (panel entry) x (data set, metric) of the
    table, ours vs the paper's."""
    panels = sweep_panels(study, table_id)
    spec = study.config["tables"][table_id]
    cols = [(d, m) for d in spec["datasets"] for m in spec["metrics"]]
    width = 4.3 * len(cols) + 2.2  # 2.2 in for the legend on the right
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(len(panels), len(cols), figsize=(width, 3.2 * len(panels)), squeeze=False)
    handles: list = []
    frames = []
    for i, panel in enumerate(panels):

        names = group_names(study, panel)

        def info(r, panel=panel, names=names):
            k = study.cells[r.cells[0]].knobs
            return {"x": float(k[panel.x]), "group": names[k[panel.group]] if panel.group else "ours"}

        groups = list(dict.fromkeys(info(r)["group"] for r in panel.rows + panel.reference)) or ["ours"]
        ctx = {"info": info, "paper": _paper_lookup(paper), "metrics": metrics,
               "ours": _interval_frame(panel.rows, metrics, info),
               "palette": dict(zip(groups, sns.color_palette("tab10", len(groups)), strict=True))}
        frames.append(ctx["ours"])
        for j, (d, m) in enumerate(cols):
            _sweep_axis(axes[i][j], table_id, panel, d, m, ctx)
        references = {g: list(dict.fromkeys(r.row for r in panel.reference if info(r)["group"] == g))
                      for g in ctx["palette"]}
        with_paper = {g: any(ctx["paper"].get((table_id, r.row, r.dataset, m)) is not None
                             for r in panel.rows if info(r)["group"] == g for m in spec["metrics"])
                      for g in ctx["palette"]}
        labels = {h.get_label() for h in handles}
        handles += [h for h in _sweep_legend(ctx["palette"], references, with_paper) if h.get_label() not in labels]
    fig.legend(handles=handles, loc="center right", fontsize=7)
    ours = pd.concat([f for f in frames if len(f)]) if any(len(f) for f in frames) else frames[0]
    fig.text(0.01, 0.005, f"ours: {interval_label(ours)}", fontsize=7, color="#333", ha="left", va="bottom")
    _suptitle(fig, f"Table {table_id}: {spec.get('title', '')}", study)
    fig.tight_layout(rect=(0, 0.03, 1 - 2.2 / width, 1))
    return save_figure(fig, out_path)


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


@functools.lru_cache(maxsize=8)
def _colour_table(cmap: str) -> np.ndarray:
    """(256, 3) float RGB 0..255 of a matplotlib colormap (a colormap lookup rebuilds it each time)."""
    return matplotlib.colormaps[cmap](np.arange(256))[:, :3] * 255.0


def blend_attention(image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, cmap: str = "jet") -> np.ndarray:
    """uint8 (H,W,3): the image and the colour-mapped map (clipped to vmin..vmax) mixed half and half,
    as an `imshow(amap, alpha=0.5)` over the image draws it (same 256-colour binning)."""
    norm = np.clip((np.asarray(amap, np.float32) - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    rgb = _colour_table(cmap)[np.minimum((norm * 256).astype(np.int64), 255)]
    return np.clip(0.5 * image.astype(np.float32) + 0.5 * rgb, 0, 255).round().astype(np.uint8)


def _tile_grid(tiles: list, header: list, row_labels: list | None, min_height: int = 64) -> Image.Image:
    """Rows of equal-size uint8 tiles on white, enlarged (nearest) to >= min_height px, labelled.

    Small on purpose: PNG encoding is most of the cost, and the figures step draws one per cell."""
    h, w = tiles[0][0].shape[:2]
    s = max(1, math.ceil(min_height / h))
    gap, top = 2, 14
    font = ImageFont.load_default()
    left = 0 if not row_labels else 6 + max(int(font.getlength(str(t))) for t in row_labels)
    canvas = Image.new("RGB", (left + len(header) * (w * s + gap), top + len(tiles) * (h * s + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(header):
        draw.text((left + j * (w * s + gap), 1), str(label), fill="black", font=font)
    for i, row in enumerate(tiles):
        y = top + i * (h * s + gap)
        if row_labels:
            draw.text((2, y + h * s // 2 - 5), str(row_labels[i]), fill="black", font=font)
        for j, tile in enumerate(row):
            big = np.repeat(np.repeat(tile, s, axis=0), s, axis=1)
            canvas.paste(Image.fromarray(big), (left + j * (w * s + gap), y))
    return canvas


def _save_png(image: Image.Image, path: str | Path) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # fastest zlib level: one overlay per cell
    return atomic_write_bytes(path, buf.getvalue())


def save_attention_overlay(
    images, alpha, path: str | Path, titles: list | None = None, cmap: str = "jet"
) -> Path:
    """A grid, one row per image: the image (`img`), each head's alpha (`h<i>`, upsampled, overlaid),
    the max over heads (`max`), and `titles` left of the rows.

    images: uint8 (N,3,H,W) or (N,H,W,3); alpha: float (N,K,h,w). Heads of one image share a colour
    scale (0 .. the image's max over heads) so suppressed heads look suppressed. With K=1 the max
    column is omitted (it would repeat the head). Composed with numpy and Pillow (milliseconds per
    cell: the figures step draws one per trained cell).
    """
    imgs = _to_hwc(images)
    alpha = np.asarray(alpha, dtype=np.float32)
    if alpha.ndim == 3:
        alpha = alpha[:, None]
    if alpha.ndim != 4 or alpha.shape[0] != imgs.shape[0]:
        raise ValueError(f"alpha must be (N,K,h,w) with N={imgs.shape[0]}, got {alpha.shape}")
    k = alpha.shape[1]
    H, W = imgs.shape[1:3]
    up = upsample_bilinear(alpha, H, W)
    rows = []
    for i in range(imgs.shape[0]):
        vmax = float(up[i].max()) or 1.0
        vmin = min(float(up[i].min()), 0.0)
        maps = list(up[i]) + ([upsample_bilinear(alpha[i].max(axis=0), H, W)] if k > 1 else [])
        rows.append([imgs[i]] + [blend_attention(imgs[i], a, vmin, vmax, cmap) for a in maps])
    header = ["img"] + [f"h{h + 1}" for h in range(k)] + (["max"] if k > 1 else [])  # fit 32 px
    return _save_png(_tile_grid(rows, header, titles), path)


def overlay_from_npz(npz_path: str | Path, png_path: str | Path) -> Path:
    """A cell's `attention.npz` (images, alpha, pids) -> its overlay PNG (`save_attention_overlay`).
    A corrupt file is a ResultsError naming it (mhsa.run.results)."""
    z = read_attention(npz_path)
    titles = [f"id {p}" for p in z["pids"]] if "pids" in z else None
    return save_attention_overlay(z["images"], z["alpha"], png_path, titles=titles)


def attention_series(study: Study, fig_id: str, dataset: str) -> list:
    """[(series label, cell ids, one per seed)] of an attention-grid figure on `dataset`."""
    return [(r.row, list(r.cells)) for r in study.rows
            if r.source == "figure" and r.table == str(fig_id) and r.dataset == dataset]


def _load_attention(runs_dir: Path, cells: list):
    """(cell id, images, alpha, occluder masks or None) of the first of `cells` (seeds) that has an
    attention.npz, else None (`occluder`: written where the test set has label maps)."""
    for cid in cells:
        path = runs_dir / cid / "attention.npz"
        if path.is_file():
            z = read_attention(path)
            return cid, z["images"], np.asarray(z["alpha"], dtype=np.float32), z.get("occluder")
    return None


def mean_entropy(alpha: np.ndarray) -> float:
    """Mean over images and heads of each head's map entropy over its h*w positions, divided by
    log(h*w): 1 for a uniform map, lower for a focused one (as `diag/attention_entropy` in MLflow)."""
    positions = int(np.prod(alpha.shape[2:]))
    return float(attention_entropy(alpha).mean() / math.log(positions)) if positions > 1 else 1.0


def _column_label(study: Study, label: str, cid: str, alpha: np.ndarray) -> str:
    """The series, what its map is (the Baseline has no heads: its activation map), its mean entropy."""
    return f"{label}\n{attention_kind(study, cid, alpha.shape[1])}\nH = {mean_entropy(alpha):.2f}"


def plot_attention_grid(
    study: Study, fig_id: str, dataset: str, runs_dir: str | Path, out_path: str | Path, per_line: int = 3
) -> Path:
    """An attention-grid figure on one data set, laid out as the paper's: groups of (query image,
    one column per series' cell) side by side, `per_line` groups a line. A column is labelled with its
    series, what its map is (max over the heads, or the Baseline's activation map) and its mean
    attention entropy H over the images shown; one colour bar (each map scaled to its maximum). Series
    without attention.npz are skipped; none at all raises FileNotFoundError."""
    fig_id, runs_dir = str(fig_id), Path(runs_dir)
    plot = plot_spec(study, "figures", fig_id) or {}
    loaded = []
    for label, cells in attention_series(study, fig_id, dataset):
        found = _load_attention(runs_dir, cells)
        if found is None:
            log.info("no attention.npz for %s (%s); skipping it", label, cells)
            continue
        loaded.append((label, *found))
    if not loaded:
        raise FileNotFoundError(f"no attention.npz under {runs_dir} for the series of figure {fig_id} "
                                f"on {dataset!r} (expected e.g. {runs_dir}/<cell>/attention.npz)")
    imgs = _to_hwc(loaded[0][2])
    occluder = loaded[0][4]  # the same query images in every series' cell (one test set)
    n = min([plot.get("max_images", imgs.shape[0]), imgs.shape[0]] + [a.shape[0] for _, _, _, a, _ in loaded])
    H, W = imgs.shape[1:3]
    groups = max(1, min(per_line, n))
    lines = math.ceil(n / groups)
    cols = 1 + len(loaded)
    headers = ["query"] + [_column_label(study, label, cid, alpha[:n]) for label, cid, _, alpha, _ in loaded]
    tile_w = 0.85
    tile_h = tile_w * H / W
    # a narrow empty column between groups
    ratios = [r for g in range(groups) for r in ([1.0] * cols + ([0.25] if g < groups - 1 else []))]
    fig = plt.figure(figsize=(tile_w * sum(ratios) + 0.4, tile_h * lines + 2.3))
    grid = fig.add_gridspec(lines, len(ratios), width_ratios=ratios, left=0.02, right=0.98,
                            top=1 - 1.2 / (tile_h * lines + 2.3), bottom=0.95 / (tile_h * lines + 2.3),
                            wspace=0.05, hspace=0.08)
    for i in range(n):
        line, g = divmod(i, groups)
        for j in range(cols):
            ax = fig.add_subplot(grid[line, g * (cols + 1) + j])
            ax.imshow(imgs[i])
            if j:
                alpha = loaded[j - 1][3][i]
                # max over heads at feature resolution, then upsampled: the max of upsampled maps is
                # convex between feature pixels and paints stripes that are not in the attention
                amap = upsample_bilinear(alpha.max(axis=0), H, W)
                ax.imshow(amap / max(float(amap.max()), 1e-12), cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
            if occluder is not None and occluder[i].any():
                ax.contour(occluder[i].astype(float), levels=[0.5], colors="white", linewidths=0.9)
            ax.set_xticks([])
            ax.set_yticks([])
            if line == 0:
                ax.set_title(headers[j], fontsize=7)
    inch = 1.0 / (tile_h * lines + 2.3)  # figure fraction of an inch of height
    bar = fig.add_axes((0.3, 0.42 * inch, 0.4, 0.12 * inch))
    colorbar = fig.colorbar(matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0.0, 1.0), cmap="jet"),
                            cax=bar, orientation="horizontal")
    colorbar.set_label("attention, each map scaled to its maximum", fontsize=7)
    bar.xaxis.set_label_position("top")
    bar.tick_params(labelsize=6)
    outlined = "; white outline: the occluder (the generator's label map)" if occluder is not None else ""
    fig.text(0.5, 0.04 * inch, f"H: mean entropy of each head's map over its "
             f"positions / log(positions), over the {n} images (1 = uniform, lower = more focused){outlined}",
             ha="center", va="bottom", fontsize=6.5, color="#333")
    title = study.config["figures"][fig_id].get("title", "")
    name = DATASET_NAMES.get(dataset, dataset)
    _suptitle(fig, f"Fig. {fig_id}: {title}" + ("" if name in title else f" ({name})"), study)
    return save_figure(fig, out_path)


# ----------------------------------------------------------------------------- all figures


def _draw_k_sweep(study, fig_id, metrics, paper, runs_dir, out_dir) -> list:
    return [plot_k_sweep(study, fig_id, metrics, paper, Path(out_dir) / f"fig_{fig_id}.png")]


def _draw_attention_grids(study, fig_id, metrics, paper, runs_dir, out_dir) -> list:
    """One PNG per data set of the figure; a data set without attention maps yet is skipped."""
    out = []
    for ds in study.config["figures"][fig_id]["datasets"]:
        try:
            out.append(plot_attention_grid(study, fig_id, ds, runs_dir,
                                           Path(out_dir) / f"fig_{fig_id}_attention_{ds}.png"))
        except FileNotFoundError as err:
            log.warning("figure %s on %s not drawn: %s", fig_id, ds, err)
    return out


def _draw_param_sweep(study, table_id, metrics, paper, runs_dir, out_dir) -> list:
    return [plot_param_sweep(study, table_id, metrics, paper, Path(out_dir) / sweep_file_name(study, table_id))]


# `figures.<id>.plot.kind` / `tables.<id>.plot.kind` -> drawer(study, id, metrics, paper, runs_dir, out_dir)
# how each kind of the schema (mhsa.study.keys) is drawn (tests/study/test_plots.py: the same kinds)
FIGURE_PLOTS = {"k_sweep": _draw_k_sweep, "attention_grid": _draw_attention_grids}
TABLE_PLOTS = {"param_sweep": _draw_param_sweep}


def build_all_figures(
    study: Study, runs_dir: str | Path, out_dir: str | Path, paper_csv: str | Path | None = None
) -> list:
    """Every figure of `study.figure_ids()` and every table of the study that has a `plot:` entry."""
    paper = load_paper(paper_csv)
    metrics = load_metrics(runs_dir, study.cells)
    check_plot_specs(study)  # build_study checked them; a study built by hand is checked here
    paths: list = []
    for section, ids, draw in (("figures", study.figure_ids(), FIGURE_PLOTS),
                               ("tables", study.table_ids(), TABLE_PLOTS)):
        for entry_id in ids:
            plot = plot_spec(study, section, entry_id)
            if plot is not None:
                paths += draw[plot["kind"]](study, entry_id, metrics, paper, runs_dir, out_dir)
    return paths


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mhsa plots", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill("The study's figures from the finished cells: every figure of the preset (the "
                    "K sweeps and the attention grid), the parameter sweeps of the tables with a `plot:` entry, "
                    "and each cell's attention overlay (<runs>/<cell>/attention.png). See docs/tables.md, "
                    "\"Figures\".", 100),
        epilog="It draws figures only: `python -m mhsa tables` writes the tables.\n"
               "  python -m mhsa plots --preset ci           # results/ci/runs -> results/ci/figures")
    study_arguments(ap, argv, "figures", "figures")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with cli_errors():
        study = build_study(load_study_config(args.config), args.preset)
        runs, out = study_dirs(args, study, "figures")
        require_runs(study, runs, load_metrics(runs, study.cells))
        paths = build_all_figures(study, runs, out, args.paper)
        overlays = [overlay_from_npz(p, p.with_suffix(".png"))
                    for p in (runs / c / "attention.npz" for c in study.cells) if p.is_file()]
        print(f"wrote {len(paths)} figure(s) to {out} and {len(overlays)} attention overlay(s) under {runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the attention goes, per table row: the attention-share diagnostics of the cells behind each own
row (metrics.json's `diagnostics.attention_share`, written only where the test set has the synthetic
generator's label maps; docs/demo-study.md, "The paper's premise").

Per row: the mean over its seeds (and std, n) of the share of attention on background, visible body and
occluder (each head's share, averaged over the heads; the Baseline's activation map is its one head) and
the share an even spread would give (chance: the class's share of the feature-map positions), and the
occluder share against chance. Rows that evaluate the same cells (MHSA-Net and MHSA-Net*: one model,
two test modes) are listed once, under the first row's name.

The tables step writes it as `tables/attention_share.{csv,md}` when any cell has such diagnostics.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from mhsa.evaluation.attention_share import CLASSES
from mhsa.io import atomic_write_text
from mhsa.study.build import Study

COLUMNS = ["table", "row", "dataset", "n_seeds",
           *[f"{c}{s}" for c in CLASSES for s in ("", "_std", "_chance")], "occluder_minus_chance"]


def _shares(metrics: dict, cells: list) -> list[dict]:
    out = []
    for cid in cells:
        share = ((metrics.get(cid) or {}).get("diagnostics") or {}).get("attention_share")
        if share:
            out.append(share)
    return out


def attention_share_table(study: Study, metrics: dict) -> pd.DataFrame:
    """One line per own table row whose cells have attention-share diagnostics (columns `COLUMNS`)."""
    lines, seen = [], set()
    for ref in (r for r in study.rows if r.source == "table"):
        key = (tuple(ref.cells), ref.dataset)
        shares = _shares(metrics, ref.cells)
        if key in seen or not shares:
            continue
        seen.add(key)
        line = {"table": ref.table, "row": ref.row, "dataset": ref.dataset, "n_seeds": len(shares)}
        for i, cls in enumerate(CLASSES):
            vals = [100 * s["mean"][i] for s in shares]
            line[cls] = float(np.mean(vals))
            line[f"{cls}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
            line[f"{cls}_chance"] = float(np.mean([100 * s["chance"][i] for s in shares]))
        line["occluder_minus_chance"] = line["occluder"] - line["occluder_chance"]
        lines.append(line)
    return pd.DataFrame(lines, columns=COLUMNS)


def render_markdown(df: pd.DataFrame) -> str:
    """The table as Markdown: share % (mean ± std over seeds) with chance in brackets."""
    head = ["Table", "Row", "n", *[f"{c} % (chance)" for c in CLASSES], "occluder - chance"]
    out = ["# Where the attention goes (label-mapped synthetic test sets)", "",
           "Share of attention (mean over heads; the Baseline: its activation map) on each class of pixel, "
           "mean ± std over seeds; in brackets the share an even spread would give. "
           "mhsa.study.attention_table; docs/demo-study.md, \"The paper's premise\".", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        cells = []
        for c in CLASSES:
            std = "" if math.isnan(r[f"{c}_std"]) else f" ± {r[f'{c}_std']:.1f}"
            cells.append(f"{r[c]:.1f}{std} ({r[f'{c}_chance']:.1f})")
        out.append(f"| {r['table']} | {r['row']} | {int(r['n_seeds'])} | " + " | ".join(cells)
                   + f" | {r['occluder_minus_chance']:+.1f} |")
    return "\n".join(out) + "\n"


def write_attention_share(study: Study, metrics: dict, out_dir: str | Path) -> list[Path]:
    """`attention_share.csv` and `.md` under `out_dir` (atomically) when any cell has the diagnostics;
    returns the paths written (none otherwise)."""
    df = attention_share_table(study, metrics)
    if not len(df):
        return []
    out_dir = Path(out_dir)
    return [atomic_write_text(out_dir / "attention_share.csv", df.to_csv(index=False)),
            atomic_write_text(out_dir / "attention_share.md", render_markdown(df))]

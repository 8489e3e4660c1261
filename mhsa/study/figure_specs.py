"""What config.yaml asks to draw, checked when the study is built (a typo in a figure spec fails in
the first second, not after the last training job): each figure's and table's `plot:` entry, its kind
(the schema's, mhsa.study.keys) and, for parameter sweeps, the panels and the rows each one draws.

Matplotlib-free, and below mhsa.study.build (which calls `check_plot_specs` on the Study it built:
`study` here is that Study); mhsa.study.plots draws from the same specs.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from mhsa.errors import ConfigError
from mhsa.study.keys import FIGURE_PLOT_KINDS, KNOBS, TABLE_PLOT_KINDS

KINDS = {"figures": FIGURE_PLOT_KINDS, "tables": TABLE_PLOT_KINDS}
# `figures.<id>.plot.colors`: "#rrggbb" or a colour of matplotlib's tab10 (the schema repeats it)
COLOUR_PATTERN = r"^(#[0-9a-fA-F]{6}|tab:(blue|orange|green|red|purple|brown|pink|gray|olive|cyan))$"


def plot_spec(study, section: str, entry_id: str) -> dict | None:
    """`<section>.<id>.plot` of the resolved config (None when absent), its `kind` checked."""
    kinds = KINDS[section]
    spec = study.config.get(section, {}).get(entry_id)
    if spec is None:
        known = list(study.config.get(section, {}))
        raise KeyError(f"{section[:-1]} {entry_id!r} is not in this study ({section}: {known})")
    plot = spec.get("plot")
    if plot is not None and plot.get("kind") not in kinds:
        raise ConfigError(
            f"config.yaml: {section}.{entry_id}.plot.kind is {plot.get('kind')!r}; use one of {sorted(kinds)}"
        )
    return plot


class SweepPanel(NamedTuple):
    label: str  # x axis label
    x: str  # the knob on the x axis
    group: str | None  # knob whose values are separate series (None: one series)
    scale: str  # matplotlib x scale: log | linear
    rows: list  # row refs of the sweep
    reference: list  # row refs drawn as horizontal lines


def _knobs_match(knobs: dict, cond: dict) -> bool:
    for key, want in cond.items():
        have = knobs[key]
        if isinstance(want, bool) or not isinstance(want, int | float):
            if have != want:
                return False
        elif not math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=0.0):
            return False
    return True


def _check_knobs(where: str, keys) -> None:
    unknown = [k for k in keys if k not in KNOBS]
    if unknown:
        raise ConfigError(f"config.yaml: {where}: unknown knob(s) {unknown}; knobs are {list(KNOBS)}")


def sweep_panels(study, table_id: str) -> list[SweepPanel]:
    """The panels of `tables.<id>.plot`: each panel's sweep rows (`where` holds, `reference` does not)
    and reference rows (`reference` holds; default: the x knob is 0)."""
    plot = plot_spec(study, "tables", table_id)
    if not plot or not plot.get("panels"):
        raise ConfigError(f"config.yaml: tables.{table_id}.plot needs a non-empty `panels` list")
    rows = [r for r in study.rows if r.source == "table" and r.table == table_id]
    knobs = {id(r): study.cells[r.cells[0]].knobs for r in rows}
    out = []
    for i, p in enumerate(plot["panels"]):
        where = f"tables.{table_id}.plot.panels[{i}]"
        if "x" not in p:
            raise ConfigError(f"config.yaml: {where} has no `x` (the knob on the x axis)")
        reference, cond = p.get("reference", {p["x"]: 0}), p.get("where", {})
        _check_knobs(where, [p["x"], *(reference or {}), *cond, *([p["group"]] if p.get("group") else [])])
        ref = [] if reference is None else [r for r in rows if _knobs_match(knobs[id(r)], reference)]
        ref_ids = {id(r) for r in ref}
        swept = [r for r in rows if id(r) not in ref_ids and _knobs_match(knobs[id(r)], cond)]
        out.append(SweepPanel(p.get("label", p["x"]), p["x"], p.get("group"), p.get("scale", "linear"),
                              swept, ref))
    return out



def attention_kind(study, cell_id: str, heads: int) -> str:
    """What an attention grid's column shows for a cell: the Baseline (no MHSAM) has no heads, its map is
    the backbone's activation map (mhsa.run.train.attention_maps); with MHSAM, the max over its heads."""
    knobs = study.cells[cell_id].knobs if cell_id in study.cells else {}
    return f"max of {heads} heads" if knobs.get("mhsam", heads > 1) else "activation map"


def series_colours(study, fig_id: str) -> list | None:
    """`figures.<id>.plot.colors`, one per series (None: the plot's default palette); a ConfigError
    names a colour that is not `#rrggbb` or tab10's, or a count that is not the series'."""
    spec = study.config["figures"][fig_id]
    colours = (spec.get("plot") or {}).get("colors")
    if colours is None:
        return None
    where = f"config.yaml: figures.{fig_id}.plot.colors"
    bad = [c for c in colours if not isinstance(c, str) or not re.match(COLOUR_PATTERN, c)]
    if bad:
        raise ConfigError(f"{where}: {bad} are not colours; use '#rrggbb' or tab:blue, tab:orange, ...")
    n = len(spec.get("series") or [])
    if len(colours) != n:
        raise ConfigError(f"{where} has {len(colours)} colour(s) for {n} series; give one per series, in order")
    return list(colours)


def check_plot_specs(study) -> None:
    """Every figure has a `plot:` of a known kind, every table's `plot:` is of a known kind, and every
    parameter sweep's panels name knobs and an x axis; a ConfigError naming the entry otherwise."""
    for fid in study.figure_ids():
        plot = plot_spec(study, "figures", fid)
        if plot is None:
            raise ConfigError(f"config.yaml: figures.{fid} has no `plot: {{kind: ...}}`; kinds are "
                              f"{sorted(FIGURE_PLOT_KINDS)}")
        series_colours(study, fid)
    for tid in study.table_ids():
        plot = plot_spec(study, "tables", tid)
        if plot is not None and plot["kind"] == "param_sweep":
            sweep_panels(study, tid)

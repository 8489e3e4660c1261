"""Aggregate `results/runs/<cell>/metrics.json` into the paper's Tables I-XI and the
two-readings Tables XII-XIII.

Every table is first built as a *tidy* frame (one line per method row x data set x metric, with
`ours` (mean over seeds), `ours_std`, `n_seeds`, the `paper` value, `delta = ours - paper`, the
within-noise mark `within_noise`, the interval of `ours` and the comparison with the row's reference
row: difference, its interval, the test, its degrees of freedom and p-value), then rendered like the
paper's table (one line per method, a column group per data set) as CSV (tidy), Markdown, HTML and
LaTeX. Intervals and tests: `mhsa.study.uncertainty`. See docs/tables.md.

    python -m mhsa tables [--config config.yaml] [--preset ci] [--runs results/ci/runs] [--out results/ci/tables]
"""

from __future__ import annotations

import argparse
import html
import logging
import math
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from mhsa.config import build_run_config, config_diff, weights_config
from mhsa.errors import ResultsError, cli_errors
from mhsa.io import atomic_write_text
from mhsa.run.results import raise_all, read_metrics
from mhsa.study.attention_table import write_attention_share
from mhsa.study.build import Study, build_study, cell_overrides, load_study_config, table_number
from mhsa.study.uncertainty import LEVEL, N_RESAMPLES, PAIRED, SEED, WELCH, Uncertainty
from mhsa.study.welch import welch

log = logging.getLogger(__name__)

PAPER_CSV = Path(__file__).with_name("paper_results.csv")
COLUMNS = ["row", "dataset", "metric", "ours", "ours_std", "n_seeds", "paper", "delta", "within_noise", "own",
           # the uncertainty (docs/tables.md, "Uncertainty"): the interval of `ours` and how it was obtained,
           # then the row against `vs_row`: ours - vs_row's ours, its interval, the test, df and p-value
           "ours_low", "ours_high", "interval", "vs_row", "diff", "diff_low", "diff_high", "test", "df", "p"]
PAPER_COLUMNS = ["table", "row", "dataset", "metric", "value", "own"]
TABLE_FORMATS = ("csv", "md", "html", "tex")  # results/tables/table_<N>.<format>

DATASET_NAMES = {
    "market1501": "Market-1501",
    "dukemtmc": "DukeMTMC-reID",
    "cuhk03_detected": "CUHK03-Detected",
    "cuhk03_labeled": "CUHK03-Labeled",
    "occluded_duke": "Occluded-DukeMTMC",
    "p_dukemtmc": "P-DukeMTMC-reID",
    "partial_reid": "Partial-REID",
    "partial_ilids": "Partial-iLIDS",
}
METRIC_NAMES = {"rank1": "Rank-1", "rank3": "Rank-3", "rank5": "Rank-5", "rank10": "Rank-10", "mAP": "mAP"}
NOISE_MARK = "≈"
MAX_PROBLEMS = 8  # problems of a malformed paper CSV listed by name
# which rows carry the mark (a table's `compare:`): where the paper claims an improvement, or every
# row with a reference row (docs/tables.md, "Marks")
COMPARE_RULES = ("claims", "all")


def synthetic_banner(preset: str = "demo") -> str:
    return (
        f"SYNTHETIC DATA: these are synthetic-data numbers from the {preset} preset, "
        "not comparable to the paper's."
    )


def _paper_problems(df: pd.DataFrame) -> list[str]:
    """Every line of the paper CSV that is not a finite number, an `own` flag other than 0/1, or a
    (table, row, dataset, metric) given twice (the last would win unseen); line numbers are the file's."""
    problems = []
    for i, rec in enumerate(df.to_dict("records")):
        line, key = i + 2, f"({rec['table']}, {rec['row']}, {rec['dataset']}, {rec['metric']})"
        try:
            ok = math.isfinite(float(rec["value"]))
        except ValueError:
            ok = False
        if not ok:
            problems.append(f"line {line}: value {rec['value']!r} of {key} is not a number "
                            "(percent without a % sign, e.g. 55.4)")
        if rec["own"] not in ("0", "1"):
            problems.append(f"line {line}: own {rec['own']!r} of {key} must be 0 or 1")
    keys = ["table", "row", "dataset", "metric"]
    dup = df[df.duplicated(keys, keep=False)]
    for key, group in dup.groupby(keys, sort=False):
        lines = ", ".join(str(i + 2) for i in group.index)
        problems.append(f"lines {lines}: ({', '.join(key)}) is given {len(group)} times; keep one")
    return problems


def load_paper(path: str | Path | None = None) -> pd.DataFrame:
    """The transcription of the paper's Tables I-XI (mhsa/study/paper_results.csv by default).

    A malformed file is a ResultsError naming the file and each bad line, all at once."""
    path = Path(path or PAPER_CSV)
    if not path.is_file():
        raise ResultsError(f"paper CSV {path} does not exist (--paper); leave it out for {PAPER_CSV}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError) as err:  # pandas' ParserError is a ValueError
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1]
        raise ResultsError(f"{path}: not a CSV table ({reason}); fix that line") from None
    missing = [c for c in PAPER_COLUMNS if c not in df.columns]
    if missing:
        raise ResultsError(f"{path}: missing column(s) {missing}; the header must be {','.join(PAPER_COLUMNS)}")
    problems = _paper_problems(df)
    if problems:
        more = f" and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
        raise ResultsError(f"{path}: {len(problems)} problem(s): " + "; ".join(problems[:MAX_PROBLEMS]) + more)
    df["value"] = df["value"].astype(float)
    df["own"] = df["own"].astype(int)
    return df[PAPER_COLUMNS]


def load_metrics(runs_dir: str | Path, cells=None) -> dict:
    """cell id -> parsed metrics.json under `runs_dir/<cell>/metrics.json`: of every folder there, or
    of `cells` only (a study's cell ids; other folders, e.g. of an older config, are not read).

    A cell without metrics.json is simply absent (tables show n/a, "not run yet"). A corrupt one is a
    ResultsError naming every such file at once (mhsa.run.results): the file is written atomically, so
    it never means "still being written", and Snakemake would never retrain it on its own.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return {}
    if cells is None:
        paths = sorted(runs_dir.glob("*/metrics.json"))
    else:
        paths = [p for p in (runs_dir / c / "metrics.json" for c in cells) if p.is_file()]
    out: dict = {}
    bad = []
    for path in paths:
        try:
            out[path.parent.name] = read_metrics(path, None if cells is None else path.parent.name)
        except ResultsError as err:
            bad.append(err)
    raise_all(bad)
    return out


def _stale(study: Study, metrics: dict) -> list[str]:
    """Finished cells trained under another weight-defining config than the study gives them now."""
    recipe = study.config.get("recipe", {})
    by_diff: dict[str, list[str]] = {}
    for cid, m in metrics.items():
        cell = study.cells.get(cid)
        if cell is None or not isinstance(m.get("config"), dict):
            continue
        wanted = build_run_config(recipe, cell_overrides(study, cell))
        shown = config_diff(weights_config(m["config"]), weights_config(wanted))
        if shown:
            by_diff.setdefault(shown, []).append(cid)
    out = []
    for shown, cids in by_diff.items():
        listed = ", ".join(cids[:3]) + (f" and {len(cids) - 3} more" if len(cids) > 3 else "")
        out.append(f"{len(cids)} cell(s) trained with another config ({shown}): {listed}")
    return out


def _unevaluated(study: Study, metrics: dict) -> list[str]:
    """Finished cells without the results (test set, test mode) one of the study's rows shows, or whose
    re-ranked results were fed other distances than the study gives the cell now (`eval.rerank_input`)."""
    out = []
    recipe = study.config.get("recipe", {})
    for ref in study.rows:
        for cid in ref.cells:
            if cid not in metrics:
                continue
            line = None
            if ref.mode not in metrics[cid]["eval"].get(ref.dataset, {}):
                line = f"{cid} has no {ref.mode!r} results on {ref.dataset}"
            elif ref.mode.endswith("_rerank") and isinstance(metrics[cid].get("config"), dict):
                # runs from before the setting existed re-ranked squared distances
                used = (metrics[cid]["config"].get("eval") or {}).get("rerank_input", "squared")
                wanted = build_run_config(recipe, cell_overrides(study, study.cells[cid])).eval.rerank_input
                if used != wanted:
                    line = f"{cid} re-ranked {used} distances, the study now feeds {wanted} ones (eval.rerank_input)"
            if line and line not in out:
                out.append(line)
    return out


def check_current(study: Study, metrics: dict, runs_dir: str | Path) -> None:
    """Each finished cell holds what the study asks of it now: its weight-defining config and every test
    mode its rows show. Snakemake reruns a changed cell first; `python -m mhsa tables` after an edit of
    config.yaml, or outputs accepted with `snakemake --touch`, would otherwise show other numbers under
    the row's name, or n/a (docs/reliability.md, "Corrupt results")."""
    problems = _stale(study, metrics) + _unevaluated(study, metrics)
    if problems:
        more = f" and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
        raise ResultsError(f"{runs_dir}: finished cells do not match config.yaml: "
                           + "; ".join(problems[:MAX_PROBLEMS]) + more + "; rerun Snakemake (it retrains or "
                           "re-evaluates them), or delete their metrics.json")


def require_runs(study: Study, runs_dir: str | Path, metrics: dict) -> None:
    """For the command line: a runs folder that does not exist, or holds no cell of the study, is a
    typo of --runs or --preset, not a study with nothing finished (which Snakemake never builds)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ResultsError(f"runs folder {runs_dir} does not exist (--runs); pass the folder that holds "
                           f"<cell>/metrics.json, e.g. {study.config.get('results_dir', 'results')}/runs")
    if not any(c in metrics for c in study.cells):
        example = next(iter(study.cells), "<cell>")
        raise ResultsError(f"no finished cell of preset {study.config.get('preset')!r} under {runs_dir} (expected "
                           f"e.g. {runs_dir / example / 'metrics.json'}); check --runs and --preset")


def metric_value(metrics: dict, cell: str, test_set: str, mode: str, metric: str) -> float | None:
    """metrics[cell]["eval"][test_set][mode][metric], or None when any level is missing."""
    try:
        value = metrics[cell]["eval"][test_set][mode][metric]
    except (KeyError, TypeError):
        return None
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def seed_values(metrics: dict, cells: list, test_set: str, mode: str, metric: str) -> list:
    """The values of one row ref's cells (one per seed) that exist."""
    vals = (metric_value(metrics, c, test_set, mode, metric) for c in cells)
    return [v for v in vals if v is not None]


# ----------------------------------------------------------------------------- tidy tables


def _norm_name(name: str) -> str:
    """Row name without K tokens: 'K=8 Baseline+MHSAM' -> 'Baseline+MHSAM', 'Baseline (K=8)' -> 'Baseline'."""
    name = re.sub(r"\(\s*K\s*=\s*\d+\s*\)", "", name)
    name = re.sub(r"\bK\s*=\s*\d+\b[,\s]*", "", name)
    return " ".join(name.split())


def reference_rows(own_rows: list) -> dict:
    """own row -> its reference row for the seed-noise check (None for a reference row itself).

    The reference is the nearest preceding row that contains 'Baseline' *and* is the same
    baseline as the first one up to K tokens (Table X: 'K=7 Baseline+MHSAM', 'K=8 Baseline+MHSAM');
    without any such row, the table's first row. So Table V's rows all compare with 'Baseline'
    (not with 'Baseline+MHSAM+...' rows), Tables IX/XI with 'Baseline+MHSAM', Table VIII with
    its first row 'MHSA-Net*'.
    """
    if not own_rows:
        return {}
    base = [r for r in own_rows if "Baseline" in r]
    first_key = _norm_name(base[0]) if base else None
    refs: dict = {}
    current = own_rows[0]
    for r in own_rows:
        if first_key is not None and "Baseline" in r and _norm_name(r) == first_key:
            current = r
            refs[r] = None
        elif r == own_rows[0]:
            refs[r] = None
        else:
            refs[r] = current
    return refs


def within_noise(a: list, b: list, level: float = LEVEL) -> bool | None:
    """Seed values `a` and `b` of two rows: True if Welch's t-test (two-sided, at `level`) finds no
    difference, False if it does; None with fewer than 2 values on a side."""
    result = welch(a, b, level)
    return None if result is None else not result.significant


def _table_spec(study: Study, table_id: str) -> dict:
    tables = study.config.get("tables", {})
    if table_id not in tables:
        raise KeyError(f"table {table_id!r} is not in this study (tables: {list(tables)})")
    return tables[table_id]


_NO_UNCERTAINTY = {"ours_low": np.nan, "ours_high": np.nan, "interval": "", "vs_row": "", "diff": np.nan,
                   "diff_low": np.nan, "diff_high": np.nan, "test": "", "df": np.nan, "p": np.nan}


def _reference_line(row: str, d: str, m: str, paper_val: dict) -> dict:
    """A method of another paper: the paper's number only."""
    return {"row": row, "dataset": d, "metric": m, "ours": np.nan, "ours_std": np.nan, "n_seeds": 0,
            "paper": paper_val.get((row, d, m), np.nan), "delta": np.nan, "within_noise": None, "own": 0,
            **_NO_UNCERTAINTY}


def _own_line(row: str, d: str, m: str, refs: dict, paper_val: dict, ref: str | None, rule: str,
              unc: Uncertainty) -> dict:
    """One of our rows: the mean over seeds and its interval, the paper's number, and the comparison with
    the reference row `ref`; the mark where `rule` asks for it (docs/tables.md, "Marks")."""
    rr = refs.get((row, d))
    iv = unc.interval(rr.cells, d, rr.mode, m) if rr else None
    pv = paper_val.get((row, d, m), np.nan)
    ours = iv.value if iv else np.nan
    line = {"row": row, "dataset": d, "metric": m, "ours": ours, "ours_std": iv.std if iv else np.nan,
            "n_seeds": iv.n_seeds if iv else 0, "paper": pv, "delta": ours - pv, "within_noise": None, "own": 1,
            **_NO_UNCERTAINTY}
    if iv:
        line.update(ours_low=iv.low, ours_high=iv.high, interval=iv.method)
    rref = refs.get((ref, d)) if ref is not None else None
    if rr is None or rref is None:
        return line
    line["vs_row"] = ref
    cmp = unc.compare((rr.cells, d, rr.mode), (rref.cells, d, rref.mode), m)
    if cmp is None:
        return line
    line.update(diff=cmp.diff, diff_low=cmp.low, diff_high=cmp.high, test=cmp.test, df=cmp.df, p=cmp.p)
    pref = paper_val.get((ref, d, m), np.nan)
    claims = not (math.isnan(pv) or math.isnan(pref)) and pv > pref
    if rule == "all" or claims:
        line["within_noise"] = cmp.within_noise
    return line


def _row_refs(study: Study, table_id: str) -> dict:
    """(row, data set) -> its RowRef (cells, test mode) in table `table_id`."""
    return {(r.row, r.dataset): r for r in study.rows if r.source == "table" and r.table == table_id}


def _borrowed_paper_values(study: Study, table_id: str, spec: dict, paper: pd.DataFrame) -> dict:
    """(row, data set, metric) -> the paper's number for rows with a `paper_row`: the paper has no
    table of its own for them (XII, XIII), so the value is looked up in the paper table that
    `spec["paper_tables"][data set]` names (e.g. Market-1501 -> Table I), under the row `paper_row`."""
    sources = spec.get("paper_tables") or {}
    index = {(t, r, d, m): v for t, r, d, m, v in
             zip(paper["table"], paper["row"], paper["dataset"], paper["metric"], paper["value"], strict=True)}
    out = {}
    for ref in study.rows:
        if ref.source != "table" or ref.table != table_id or not ref.paper_row or ref.dataset not in sources:
            continue
        for m in ref.metrics:
            value = index.get((str(sources[ref.dataset]), ref.paper_row, ref.dataset, m))
            if value is not None:
                out[(ref.row, ref.dataset, m)] = value
    return out


def tidy_table(study: Study, table_id: str, metrics: dict, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """One line per (row, data set, metric) of table `table_id`, in the paper's order.

    Reference methods (own=0, from the paper CSV) come first with `ours` NaN; then the own rows in
    config order. Columns: `COLUMNS` (docs/tables.md, "Tidy tables").
    """
    if paper is None:
        paper = load_paper()
    spec = _table_spec(study, table_id)
    datasets, metric_names = list(spec["datasets"]), list(spec["metrics"])
    own_rows = list(dict.fromkeys(r.row for r in study.rows if r.source == "table" and r.table == table_id))
    tp = paper[paper["table"] == table_id]
    paper_val = {
        (r, d, m): v for r, d, m, v in zip(tp["row"], tp["dataset"], tp["metric"], tp["value"], strict=True)
    }
    paper_val.update(_borrowed_paper_values(study, table_id, spec, paper))
    other_rows = [r for r in dict.fromkeys(tp.loc[tp["own"] == 0, "row"]) if r not in own_rows]
    refs = _row_refs(study, table_id)
    ref_of = compared_rows(study, table_id)
    rule = spec.get("compare", COMPARE_RULES[0])
    unc = Uncertainty(metrics)
    cells = [(d, m) for d in datasets for m in metric_names]
    lines = [_reference_line(row, d, m, paper_val) for row in other_rows for d, m in cells]
    lines += [_own_line(row, d, m, refs, paper_val, ref_of.get(row), rule, unc) for row in own_rows for d, m in cells]
    df = pd.DataFrame(lines, columns=COLUMNS)
    df["n_seeds"] = df["n_seeds"].astype(int)
    df["own"] = df["own"].astype(int)
    df["within_noise"] = df["within_noise"].astype(object)
    df.attrs["compare"] = rule  # the footnote says which rows carry the mark
    return df


def compared_rows(study: Study, table_id: str) -> dict:
    """own row of table `table_id` -> the row it is compared with (None for a reference row): a row's
    `compare_to` where config.yaml gives one, else `reference_rows`' rule."""
    own_rows = list(dict.fromkeys(r.row for r in study.rows if r.source == "table" and r.table == table_id))
    ref_of = reference_rows(own_rows)
    for r in study.rows:
        if r.source == "table" and r.table == table_id and r.compare_to:
            ref_of[r.row] = r.compare_to
    return ref_of


# ----------------------------------------------------------------------------- rendering


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def format_cell(line: dict) -> str:
    """Text of one table cell: paper only (reference rows); `ours [low, high] (paper, delta)` with one seed
    (`ours (paper, delta)` without an interval); `mean ± std n=<seeds> (paper)` with several; `≈` after it
    where the mark says within noise."""
    paper, ours, n = line["paper"], line["ours"], int(line["n_seeds"])
    has_paper = not pd.isna(paper)
    if not int(line["own"]):
        return _fmt(paper) if has_paper else "-"
    if n == 0 or pd.isna(ours):
        return f"n/a ({_fmt(paper)})" if has_paper else "n/a"
    if n >= 2:
        text = f"{_fmt(ours)} ± {_fmt(line['ours_std'])} n={n}" + (f" ({_fmt(paper)})" if has_paper else "")
    else:
        low, high = line.get("ours_low", np.nan), line.get("ours_high", np.nan)
        text = _fmt(ours) + ("" if pd.isna(low) or pd.isna(high) else f" [{_fmt(low)}, {_fmt(high)}]")
        text += f" ({_fmt(paper)}, {line['delta']:+.1f})" if has_paper else ""
    if line.get("within_noise") is True:
        text += f" {NOISE_MARK}"
    return text


def wide_table(df: pd.DataFrame) -> tuple[list, list, list]:
    """(column groups [(dataset, [metrics])], row names, cells[row][col]) in the tidy frame's order."""
    datasets = list(dict.fromkeys(df["dataset"]))
    groups = [(d, list(dict.fromkeys(df.loc[df["dataset"] == d, "metric"]))) for d in datasets]
    rows = list(dict.fromkeys(df["row"]))
    index = {(r["row"], r["dataset"], r["metric"]): r for r in df.to_dict("records")}
    cells = []
    for row in rows:
        line = []
        for d, ms in groups:
            for m in ms:
                rec = index.get((row, d, m))
                line.append(format_cell(rec) if rec else "")
        cells.append(line)
    return groups, rows, cells


def _legend(df: pd.DataFrame) -> str:
    """The table's footnote: what a cell shows, which test each mark comes from and at what level."""
    own = df[df["own"] == 1]
    n = int(own["n_seeds"].max()) if len(own) else 0
    level = f"{LEVEL:.0%}"
    cells = (f"Cells: `ours [low, high] (paper, delta)` with one seed, [low, high] the {level} percentile bootstrap "
             f"interval over the test set's query identities ({N_RESAMPLES:,} resamples, seed {SEED}; a one-seed cell "
             "without it predates per-query results); `mean ± std n=<seeds> (paper)` with several (max seeds: "
             f"{n}; the CSV's ours_low/ours_high: the t interval over seeds widened by the test-set bootstrap); "
             "reference methods show the paper's number only; `n/a` = not run yet.")
    what = ("the paper's improvement over the reference row" if df.attrs.get("compare", COMPARE_RULES[0]) == "claims"
            else "the row's difference from the row it is compared with (the CSV's vs_row)")
    tests = set(own["test"]) - {""}
    how = []
    if PAIRED in tests:
        how.append(f"paired bootstrap (one seed a side): the {level} interval of the difference over the same "
                   "resampled query identities covers 0")
    if WELCH in tests:
        dfs = own.loc[own["test"] == WELCH, "df"].dropna()
        span = f"{dfs.min():.1f}-{dfs.max():.1f}" if len(dfs) else "n/a"
        how.append(f"Welch's t-test over seeds (several seeds a side), two-sided, alpha = {1 - LEVEL:.2f}, not "
                   f"significant (df {span}, per cell in the CSV; the test set is the same for both rows and "
                   "its sampling is not in the test)")
    if how:
        mark = f"`{NOISE_MARK}` = {what} is within our noise: " + "; ".join(how) + "."
    else:
        mark = (f"`{NOISE_MARK}` would mark {what} within our noise; no row here could be tested (one seed "
                "without per-query results, or one seed against several).")
    return f"{cells} {mark} See docs/tables.md, section Uncertainty."


def render_markdown(
    df: pd.DataFrame, table_id: str, title: str, synthetic: bool, preset: str = "demo"
) -> str:
    groups, rows, cells = wide_table(df)
    header = ["Method"] + [
        f"{DATASET_NAMES.get(d, d)} {METRIC_NAMES.get(m, m)}" for d, ms in groups for m in ms
    ]
    body = [[r] + c for r, c in zip(rows, cells, strict=True)]
    table = pd.DataFrame(body, columns=header).to_markdown(index=False, disable_numparse=True)
    parts = [f"# Table {table_id}: {title}", ""]
    if synthetic:
        parts += [f"> **{synthetic_banner(preset)}**", ""]
    parts += [table, "", _legend(df), ""]
    return "\n".join(parts)


def render_html(df: pd.DataFrame, table_id: str, title: str, synthetic: bool, preset: str = "demo") -> str:
    groups, rows, cells = wide_table(df)
    own = dict(zip(df["row"], df["own"], strict=True))
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>Table {e(table_id)}: {e(title)}</title>",
        "<style>table{border-collapse:collapse;font-family:sans-serif;font-size:13px}"
        "td,th{border:1px solid #bbb;padding:3px 6px;text-align:center}td:first-child{text-align:left}"
        "tr.ref td{color:#555}.banner{background:#fde2e2;border:2px solid #c00;padding:6px;font-weight:bold}"
        "</style></head><body>",
    ]
    if synthetic:
        out.append(f'<p class="banner">{e(synthetic_banner(preset))}</p>')
    out.append(f"<table><caption>Table {e(table_id)}: {e(title)}</caption><thead>")
    out.append(
        '<tr><th rowspan="2">Method</th>'
        + "".join(f'<th colspan="{len(ms)}">{e(DATASET_NAMES.get(d, d))}</th>' for d, ms in groups)
        + "</tr>"
    )
    out.append(
        "<tr>" + "".join(f"<th>{e(METRIC_NAMES.get(m, m))}</th>" for _, ms in groups for m in ms) + "</tr>"
    )
    out.append("</thead><tbody>")
    for r, c in zip(rows, cells, strict=True):
        cls = "" if own.get(r, 0) else ' class="ref"'
        out.append(f"<tr{cls}><td>{e(r)}</td>" + "".join(f"<td>{e(x)}</td>" for x in c) + "</tr>")
    out.append("</tbody></table>")
    out.append(f"<p>{e(_legend(df).replace('`', ''))}</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "†": r"$^{\dagger}$",
    "±": r"$\pm$",
    NOISE_MARK: r"$\approx$",
    "*": r"$^{*}$",
    "`": "",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def render_latex(df: pd.DataFrame, table_id: str, title: str, synthetic: bool, preset: str = "demo") -> str:
    groups, rows, cells = wide_table(df)
    own = dict(zip(df["row"], df["own"], strict=True))
    ncols = sum(len(ms) for _, ms in groups)
    out = []
    if synthetic:
        out.append(f"% {synthetic_banner(preset)}")
    out += [
        r"% needs \usepackage{booktabs}",
        r"\begin{table*}[t]",
        r"\centering",
        rf"\caption{{Table {table_id}: {tex_escape(title)}}}",
    ]
    if synthetic:
        out.append(rf"\textbf{{{tex_escape(synthetic_banner(preset))}}}\par\smallskip")
    out.append(r"\begin{tabular}{l" + "c" * ncols + "}")
    out.append(r"\toprule")
    out.append(
        "Method & "
        + " & ".join(
            rf"\multicolumn{{{len(ms)}}}{{c}}{{{tex_escape(DATASET_NAMES.get(d, d))}}}" for d, ms in groups
        )
        + r" \\"
    )
    col, rules = 2, []
    for _, ms in groups:
        rules.append(rf"\cmidrule(lr){{{col}-{col + len(ms) - 1}}}")
        col += len(ms)
    out.append(" ".join(rules))
    out.append(
        " & " + " & ".join(tex_escape(METRIC_NAMES.get(m, m)) for _, ms in groups for m in ms) + r" \\"
    )
    out.append(r"\midrule")
    seen_own = False
    for r, c in zip(rows, cells, strict=True):
        if own.get(r, 0) and not seen_own and any(not own.get(x, 0) for x in rows):
            out.append(r"\midrule")
        seen_own = seen_own or bool(own.get(r, 0))
        out.append(tex_escape(r) + " & " + " & ".join(tex_escape(x) for x in c) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", "", tex_escape(_legend(df)), r"\end{table*}", ""]
    return "\n".join(out)


def write_table(
    df: pd.DataFrame, table_id: str, title: str, out_dir: str | Path, synthetic: bool, preset: str = "demo"
) -> list:
    """Write table_<N>.<format> for each of TABLE_FORMATS atomically (N = arabic table number);
    returns the paths."""
    out_dir = Path(out_dir)
    stem = f"table_{table_number(table_id)}"
    text = {
        # the CSV has no banner: its last column says where the numbers come from (`synthetic` or `real`)
        "csv": lambda: df.assign(data="synthetic" if synthetic else "real").to_csv(index=False),
        "md": lambda: render_markdown(df, table_id, title, synthetic, preset),
        "html": lambda: render_html(df, table_id, title, synthetic, preset),
        "tex": lambda: render_latex(df, table_id, title, synthetic, preset),
    }
    return [atomic_write_text(out_dir / f"{stem}.{ext}", text[ext]()) for ext in TABLE_FORMATS]


# ----------------------------------------------------------------------------- all tables


def build_all(
    study: Study, runs_dir: str | Path, out_dir: str | Path, paper_csv: str | Path | None = None
) -> dict:
    """All tables of `study.table_ids()` -> results files + summary.md; returns {table id: tidy frame}."""
    paper = load_paper(paper_csv)
    metrics = load_metrics(runs_dir, study.cells)
    check_current(study, metrics, runs_dir)
    synthetic = study.config.get("data_source") == "synthetic"
    preset = str(study.config.get("preset", "demo"))
    out_dir = Path(out_dir)
    frames: dict = {}
    summary = ["# MHSA-Net reproduction: tables", ""]
    if synthetic:
        summary += [f"> **{synthetic_banner(preset)}**", ""]
    summary += [
        f"Preset `{preset}`, {len(metrics)} finished cell(s) found under `{runs_dir}`.",
        "",
        "| Table | Title | rows with results | marked within noise / cells with a mark | files |",
        "|---|---|---|---|---|",
    ]
    for tid in study.table_ids():
        spec = _table_spec(study, tid)
        title = spec.get("title", f"Table {tid}")
        df = tidy_table(study, tid, metrics, paper)
        write_table(df, tid, title, out_dir, synthetic, preset)
        frames[tid] = df
        own = df[df["own"] == 1]
        done = own.groupby("row", sort=False)["n_seeds"].max()
        flags = own["within_noise"].dropna()
        noise = f"{int(sum(flags))}/{len(flags)}" if len(flags) else "n/a"
        n = table_number(tid)
        files = " ".join(f"[{ext}](table_{n}.{ext})" for ext in TABLE_FORMATS)
        summary.append(f"| {tid} | {title} | {int((done > 0).sum())}/{len(done)} | {noise} | {files} |")
    if write_attention_share(study, metrics, out_dir):  # label-mapped synthetic test sets only
        summary += ["", "Where the attention goes (background / body / occluder, per row): "
                    "[md](attention_share.md) [csv](attention_share.csv)"]
    summary.append("")
    atomic_write_text(out_dir / "summary.md", "\n".join(summary))
    return frames


def _presets_of(argv: list | None) -> tuple[str, list, str | None]:
    """(config path, its presets, its default preset) for the help text: the --config of the command
    line (or config.yaml), read leniently; an unreadable file gives no list (the run itself says why)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default="config.yaml")
    path = pre.parse_known_args(argv)[0].config
    try:
        config = load_study_config(path)
        return path, list(config.get("presets") or {}), config.get("preset")
    except Exception:  # noqa: BLE001  the help must print whatever the file holds
        return path, [], None


def study_arguments(ap: argparse.ArgumentParser, argv: list | None, what: str, out_dir: str) -> None:
    """The options `python -m mhsa tables` and `python -m mhsa plots` share, each with its help."""
    path, presets, default = _presets_of(argv)
    listed = f"one of {', '.join(presets)} (the presets of {path})" if presets else f"a preset of {path}"
    ap.add_argument("--config", default="config.yaml", metavar="YAML",
                    help="the study's config (default: config.yaml): its tables, figures, rows and presets")
    ap.add_argument("--preset", default=None, metavar="NAME",
                    help=f"{listed}; default: the config's `preset:`" + (f" ({default})" if default else ""))
    ap.add_argument("--runs", default=None, metavar="DIR",
                    help="the finished cells, DIR/<cell>/metrics.json (default: the preset's results folder + "
                         "/runs: results/runs for demo, results/<preset>/runs for the others)")
    ap.add_argument("--out", default=None, metavar="DIR",
                    help=f"where the {what} go (default: the preset's results folder + /{out_dir})")
    ap.add_argument("--paper", default=None, metavar="CSV",
                    help="the paper's numbers (default: mhsa/study/paper_results.csv)")


def study_dirs(args: argparse.Namespace, study: Study, out_dir: str) -> tuple[Path, Path]:
    """(runs, out) of the command line, else under the preset's results folder."""
    results = Path(str(study.config.get("results_dir", "results")))
    return Path(args.runs or results / "runs"), Path(args.out or results / out_dir)


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mhsa tables", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill("The paper's tables beside ours, from the finished cells' metrics.json: for each "
                                  "table of "
                    "the preset, table_<N>.csv (tidy), .md, .html and .tex (N = the table's arabic number), "
                    "summary.md and summary.html (every table on one page). See docs/tables.md.", 100),
        epilog="It writes tables only: `python -m mhsa plots` draws the figures, and the workflow's tables step "
               "(snakemake tables) does both and logs them to the study's MLflow run.\n"
               "  python -m mhsa tables --preset ci          # results/ci/runs -> results/ci/tables")
    study_arguments(ap, argv, "tables", "tables")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with cli_errors():
        from mhsa.study.report import write_summary_page  # it reads the tables this module writes

        study = build_study(load_study_config(args.config), args.preset)
        runs, out = study_dirs(args, study, "tables")
        require_runs(study, runs, load_metrics(runs, study.cells))
        frames = build_all(study, runs, out, args.paper)
        write_summary_page(study, out)
        print(f"wrote {len(frames)} table(s) and summary.md/.html to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""mhsa.study.tables on a fake runs dir: the ci study with three seeds and metrics.json files of known values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from mhsa.study import tables as T
from mhsa.study.build import build_study, load_study_config

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [0, 1, 2]
SEED_OFFSET = {0: 0.0, 1: 1.0, 2: 5.0}  # per-seed values base+{0,1,5}: mean base+2, sample std sqrt(7)
METRIC_OFFSET = {"rank1": 0.0, "rank3": 5.0, "rank5": 10.0, "rank10": 15.0, "mAP": -10.0}
STD = math.sqrt(7.0)


def base_value(cell_id: str, mode: str) -> float:
    arch = cell_id.split("__")[1]
    if arch == "baseline":
        return 40.0
    if arch.endswith("-noce"):
        return 55.0
    if arch.endswith("-concat"):
        return 30.0
    if arch.endswith("-sum"):
        return 35.0
    if arch.endswith("-norlm"):
        return 38.0
    return {"local": 43.0, "concat": 60.0}.get(mode, 50.0)  # head<i>: 50


def expected(cell_base: float, metric: str, seeds=SEEDS) -> list:
    return [cell_base + METRIC_OFFSET[metric] + SEED_OFFSET[s] for s in seeds]


@pytest.fixture(scope="module")
def config() -> dict:
    cfg = load_study_config(ROOT / "config.yaml")
    cfg["seeds"] = list(SEEDS)
    return cfg


@pytest.fixture(scope="module")
def study(config):
    return build_study(config, "ci")


@pytest.fixture(scope="module")
def paper():
    return T.load_paper()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, study) -> Path:
    """metrics.json for every ci cell except: Market-1501 cells (Table IV) missing; the MHSA-Net† cells
    only for seed 0; one corrupt file of a cell the study does not have (not read)."""
    root = tmp_path_factory.mktemp("runs")
    for cid, cell in study.cells.items():
        if cell.dataset == "market1501":
            continue
        if cid.split("__")[1].endswith("-noce") and cell.seed != 0:
            continue
        ev = {
            t: {
                m: {k: base_value(cid, m) + off + SEED_OFFSET[cell.seed] for k, off in METRIC_OFFSET.items()}
                for m in sorted(modes)
            }
            for t, modes in cell.targets.items()
        }
        (root / cid).mkdir()
        (root / cid / "metrics.json").write_text(json.dumps({"cell": cid, "eval": ev, "train": {}}))
    (root / "broken__cell__s0").mkdir()
    (root / "broken__cell__s0" / "metrics.json").write_text("{not json")
    return root


@pytest.fixture(scope="module")
def metrics(runs, study):
    return T.load_metrics(runs, study.cells)


def line(df, row, dataset, metric) -> dict:
    hit = df[(df.row == row) & (df.dataset == dataset) & (df.metric == metric)]
    assert len(hit) == 1, (row, dataset, metric)
    return hit.iloc[0].to_dict()


def test_load_metrics(metrics, study, runs):
    assert "broken__cell__s0" not in metrics  # not a cell of the study: not read
    with pytest.raises(T.ResultsError, match="broken__cell__s0/metrics.json: corrupt"):
        T.load_metrics(runs)  # every folder: the corrupt file is named, not skipped
    assert "occluded_duke__baseline__s2" in metrics
    assert not any(c.startswith("market1501__") for c in metrics)
    assert metrics["occluded_duke__baseline__s1"]["eval"]["occluded_duke"]["global"]["rank1"] == 41.0
    assert T.load_metrics("/nonexistent/runs") == {}


def test_tidy_columns_and_order(study, metrics, paper):
    df = T.tidy_table(study, "II", metrics, paper)
    assert list(df.columns) == T.COLUMNS
    # the columns tables had before the intervals come first, in their order; the uncertainty follows
    assert T.COLUMNS[:10] == ["row", "dataset", "metric", "ours", "ours_std", "n_seeds", "paper", "delta",
                              "within_noise", "own"]
    assert T.COLUMNS[10:] == ["ours_low", "ours_high", "interval", "vs_row", "diff", "diff_low", "diff_high",
                              "test", "df", "p"]
    rows = list(dict.fromkeys(df.row))
    refs = list(dict.fromkeys(paper[(paper.table == "II") & (paper.own == 0)].row))
    own = ["Baseline", "MHSA-Net* (K=8)", "MHSA-Net (K=8)", "MHSA-Net† (K=8)"]
    assert rows == refs + own and rows[0] == "Random Erasing [80]"
    assert len(df) == len(rows) * 4
    assert list(df.metric[:4]) == ["rank1", "rank5", "rank10", "mAP"]
    assert (df[df.row.isin(refs)].own == 0).all() and (df[df.row.isin(own)].own == 1).all()
    ref = df[df.own == 0]
    assert ref.ours.isna().all() and (ref.n_seeds == 0).all() and ref.within_noise.isna().all()
    # a '-' in the paper is a NaN paper value on a reference row
    assert math.isnan(line(df, "Part Bilinear [65]", "occluded_duke", "mAP")["paper"])
    assert line(df, "HOReID [18]", "occluded_duke", "rank1")["paper"] == 55.1


def test_means_stds_delta(study, metrics, paper):
    df = T.tidy_table(study, "II", metrics, paper)
    b = line(df, "Baseline", "occluded_duke", "rank1")
    assert b["n_seeds"] == 3
    assert b["ours"] == pytest.approx(np.mean([40, 41, 45]))
    assert b["ours_std"] == pytest.approx(STD)
    assert b["paper"] == 38.9 and b["delta"] == pytest.approx(42.0 - 38.9)
    s = line(df, "MHSA-Net* (K=8)", "occluded_duke", "mAP")  # local mode: 43 - 10 + {0,1,5}
    assert (
        s["ours"] == pytest.approx(35.0) and s["paper"] == 44.8 and s["delta"] == pytest.approx(35.0 - 44.8)
    )
    c = line(df, "MHSA-Net (K=8)", "occluded_duke", "rank10")  # same cell, concat mode
    assert c["ours"] == pytest.approx(np.mean(expected(60.0, "rank10")))
    d = line(df, "MHSA-Net† (K=8)", "occluded_duke", "rank1")  # one seed only
    assert d["n_seeds"] == 1 and d["ours"] == 55.0 and math.isnan(d["ours_std"])


def test_within_noise_cases(study, metrics, paper):
    df = T.tidy_table(study, "II", metrics, paper)
    # paper: 59.7 > 38.9; ours 45 vs 42 with std sqrt(7) a side: Welch t = 1.39 at df 4 -> within noise
    assert line(df, "MHSA-Net* (K=8)", "occluded_duke", "rank1")["within_noise"] is True
    # ours 62 vs 42 -> a real difference
    assert line(df, "MHSA-Net (K=8)", "occluded_duke", "rank1")["within_noise"] is False
    # the CSV carries the test: Welch's over the seeds, as scipy computes it
    for row in ("MHSA-Net* (K=8)", "MHSA-Net (K=8)"):
        got = line(df, row, "occluded_duke", "rank1")
        mode_base = 43.0 if row.startswith("MHSA-Net*") else 60.0
        ref = stats.ttest_ind(expected(mode_base, "rank1"), expected(40.0, "rank1"), equal_var=False)
        ci = ref.confidence_interval(0.95)
        assert got["test"] == "Welch" and got["vs_row"] == "Baseline"
        assert got["df"] == pytest.approx(ref.df) and got["p"] == pytest.approx(ref.pvalue)
        assert (got["diff_low"], got["diff_high"]) == pytest.approx((ci.low, ci.high))
        assert got["diff"] == pytest.approx(got["ours"] - line(df, "Baseline", "occluded_duke", "rank1")["ours"])
        assert got["within_noise"] is bool(ref.pvalue >= 0.05)
    # one seed against three -> cannot judge: no test
    d = line(df, "MHSA-Net† (K=8)", "occluded_duke", "rank1")
    assert d["within_noise"] is None and d["test"] == "" and math.isnan(d["p"])
    # the reference row itself is never judged
    assert line(df, "Baseline", "occluded_duke", "rank1")["within_noise"] is None
    # Table VIII: the paper reads no improvement over the first row (MHSA-Net*) -> None despite 3 seeds
    d8 = T.tidy_table(study, "VIII", metrics, paper)
    own8 = d8[d8.row != "MHSA-Net*"]
    assert (own8.n_seeds == 3).all() and own8.within_noise.isna().all()
    # Table VI: heads (50) vs Baseline (40) on Occluded-Duke -> outside noise
    d6 = T.tidy_table(study, "VI", metrics, paper)
    assert line(d6, "P_3", "occluded_duke", "mAP")["within_noise"] is False


def test_within_noise_function():
    """Welch's test at 95 %, not a 2-standard-error rule: 2.8 SE at ~2 degrees of freedom is within noise."""
    assert T.within_noise([62.0, 60.4, 63.6], [66.6, 73.4, 80.2]) is True
    assert stats.ttest_ind([62.0, 60.4, 63.6], [66.6, 73.4, 80.2], equal_var=False).pvalue > 0.05
    assert T.within_noise([1, 2, 3], [1.5, 2.5, 3.5]) is True
    assert T.within_noise([1, 1.1, 0.9], [5, 5.1, 4.9]) is False
    assert T.within_noise([1], [1, 2]) is None
    assert T.within_noise([], []) is None


def test_reference_rows_of_all_tables(config):
    full = build_study(config, "demo")
    refs = {
        t: T.reference_rows(
            list(dict.fromkeys(r.row for r in full.rows if r.source == "table" and r.table == t))
        )
        for t in full.table_ids()
    }
    assert set(refs["V"].values()) == {None, "Baseline"}
    assert refs["V"]["Baseline+MHSAM+IHTL+FDRT (K=8)"] == "Baseline"
    assert refs["X"]["K=7, lambda2=1.0"] == "K=7 Baseline+MHSAM"
    assert refs["X"]["K=8, lambda2=1e-2"] == "K=8 Baseline+MHSAM"
    assert refs["X"]["K=8 Baseline+MHSAM"] is None
    assert refs["XI"]["lambda3=1, gamma=1e-3"] == "Baseline+MHSAM"
    assert refs["VIII"]["MHSA-Net* (SUM)"] == "MHSA-Net*"


def test_missing_cells_give_nan(study, metrics, paper):
    df = T.tidy_table(study, "IV", metrics, paper)  # Market-1501-trained cells were never written
    own = df[df.own == 1]
    assert len(own) == 4 * 2 * 2
    assert own.ours.isna().all() and (own.n_seeds == 0).all() and own.delta.isna().all()
    assert own.within_noise.isna().all()
    assert line(df, "Baseline", "partial_reid", "rank1")["paper"] == 68.8
    empty = T.tidy_table(study, "II", {}, paper)
    assert empty[empty.own == 1].ours.isna().all()


def test_format_cell():
    base = {
        "own": 1,
        "paper": 59.7,
        "ours": 45.0,
        "ours_std": STD,
        "n_seeds": 3,
        "delta": -14.7,
        "within_noise": True,
        "ours_low": 38.04,
        "ours_high": 51.96,
    }
    assert T.format_cell(base) == f"45.0 ± 2.6 n=3 (59.7) {T.NOISE_MARK}"
    one = {**base, "n_seeds": 1, "ours_std": np.nan, "within_noise": None}
    assert T.format_cell(one) == "45.0 [38.0, 52.0] (59.7, -14.7)"
    assert T.format_cell({**one, "ours_low": np.nan, "ours_high": np.nan}) == "45.0 (59.7, -14.7)"  # no per-query
    assert T.format_cell({**one, "paper": np.nan, "within_noise": False}) == "45.0 [38.0, 52.0]"
    assert T.format_cell({**base, "n_seeds": 0, "ours": np.nan}) == "n/a (59.7)"
    assert T.format_cell({**base, "own": 0, "ours": np.nan}) == "59.7"
    assert T.format_cell({**base, "own": 0, "paper": np.nan}) == "-"


def test_write_table_files(tmp_path, study, metrics, paper):
    df = T.tidy_table(study, "II", metrics, paper)
    paths = T.write_table(df, "II", "Comparison on Occluded-DukeMTMC", tmp_path, synthetic=True, preset="ci")
    assert sorted(p.name for p in paths) == ["table_2.csv", "table_2.html", "table_2.md", "table_2.tex"]
    back = pd.read_csv(tmp_path / "table_2.csv")
    assert list(back.columns) == [*df.columns, "data"] and len(back) == len(df)
    assert set(back["data"]) == {"synthetic"}  # the CSV's mark (md/html/tex carry the banner)
    T.write_table(df, "II", "Comparison on Occluded-DukeMTMC", tmp_path / "real", synthetic=False, preset="paper")
    assert set(pd.read_csv(tmp_path / "real" / "table_2.csv")["data"]) == {"real"}
    md = (tmp_path / "table_2.md").read_text()
    html = (tmp_path / "table_2.html").read_text()
    tex = (tmp_path / "table_2.tex").read_text()
    for row in dict.fromkeys(df.row):
        assert row in md, row
        assert T.html.escape(row) in html, row
        assert T.tex_escape(row) in tex, row
    for text in (md, html, tex):
        assert "synthetic-data numbers from the ci preset" in text
        assert "Occluded-DukeMTMC" in text
    assert f"45.0 ± 2.6 n=3 (59.7) {T.NOISE_MARK}" in md
    assert "55.0 (58.2, -3.2)" in md  # single-seed MHSA-Net† cell
    assert "| 40.5 " in md  # reference row: paper value only
    assert 'colspan="4"' in html and r"\multicolumn{4}{c}{Occluded-DukeMTMC}" in tex
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]
    T.write_table(df, "II", "t", tmp_path, synthetic=False)
    assert "synthetic" not in (tmp_path / "table_2.md").read_text().lower()


def test_build_all_and_cli(tmp_path, config, study, runs):
    out = tmp_path / "tables"
    frames = T.build_all(study, runs, out)
    assert list(frames) == ["II", "IV", "VI", "VIII"]
    names = {p.name for p in out.iterdir()}
    for n in (2, 4, 6, 8):
        assert {f"table_{n}.{e}" for e in ("csv", "md", "html", "tex")} <= names
    summary = (out / "summary.md").read_text()
    assert "synthetic-data numbers" in summary and "| VIII |" in summary
    assert not [n for n in names if n.startswith(".")]

    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config, allow_unicode=True))
    out2 = tmp_path / "cli"
    assert T.main(["--config", str(cfg_path), "--preset", "ci", "--runs", str(runs), "--out", str(out2)]) == 0
    assert (out2 / "table_6.html").is_file()
    assert (out2 / "table_2.csv").read_text() == (out / "table_2.csv").read_text()


def test_unknown_table(study, paper):
    with pytest.raises(KeyError):
        T.tidy_table(study, "I", {}, paper)  # not in the ci preset


# ---------------------------------------------------- two readings (docs/paper-to-code.md "Two readings")


@pytest.fixture(scope="module")
def readings(tmp_path_factory):
    """The demo study with one seed and a metrics.json for every cell of Tables XII and XIII whose value
    encodes the cell: rank1 = 10 + its index in the study's cell list, mAP = rank1 / 2."""
    cfg = load_study_config(ROOT / "config.yaml")
    study = build_study(cfg, "demo")
    ids = list(study.cells)
    root = tmp_path_factory.mktemp("runs_readings")
    for r in study.rows:
        if r.table not in ("XII", "XIII"):
            continue
        for cid in r.cells:
            v = 10.0 + ids.index(cid)
            ev = {t: {m: {"rank1": v, "rank5": v + 1, "rank10": v + 2, "mAP": v / 2} for m in modes}
                  for t, modes in study.cells[cid].targets.items()}
            (root / cid).mkdir(exist_ok=True)
            (root / cid / "metrics.json").write_text(json.dumps({"cell": cid, "eval": ev}))
    return study, ids, root


def test_paper_text_vs_public_code_table(readings, paper, tmp_path):
    study, ids, root = readings
    df = T.tidy_table(study, "XII", T.load_metrics(root), paper)
    assert (df.own == 1).all()  # the paper has no Table XII: no reference methods
    assert list(dict.fromkeys(df.row)) == [
        "Baseline (paper text)", "MHSA-Net (K=8) (paper text)", "MHSA-Net† (K=8) (paper text)",
        "Baseline (public code)", "MHSA-Net (K=8) (public code)", "MHSA-Net† (K=8) (public code)"]
    cells = {
        ("Baseline (paper text)", "market1501"): "market1501__baseline__s0",
        ("Baseline (public code)", "occluded_duke"): "occluded_duke__baseline-a.f.k.m.ls.co.sa.in__s0",
        ("MHSA-Net (K=8) (paper text)", "occluded_duke"):
            "occluded_duke__mhsam-K8-fdrt0.0001-ihtl1-acm0.001g0.001__s0",
        ("MHSA-Net† (K=8) (public code)", "market1501"):
            "market1501__mhsam-K8-fdrt0.0001-ihtl1-acm0.0001g0.001-noce-authors__s0",
    }
    for (row, d), cid in cells.items():
        assert line(df, row, d, "rank1")["ours"] == 10.0 + ids.index(cid)
        assert line(df, row, d, "mAP")["ours"] == (10.0 + ids.index(cid)) / 2
    # the paper's numbers: Table I on Market-1501, Table II on Occluded-DukeMTMC, the same for both readings
    for reading in ("paper text", "public code"):
        assert line(df, f"Baseline ({reading})", "market1501", "rank1")["paper"] == 92.0
        assert line(df, f"Baseline ({reading})", "market1501", "mAP")["paper"] == 78.8
        assert line(df, f"MHSA-Net (K=8) ({reading})", "occluded_duke", "rank1")["paper"] == 55.4
        assert line(df, f"MHSA-Net† (K=8) ({reading})", "occluded_duke", "mAP")["paper"] == 43.1
        assert line(df, f"MHSA-Net† (K=8) ({reading})", "market1501", "rank1")["paper"] == 94.3
    d = line(df, "Baseline (public code)", "market1501", "rank1")
    assert d["delta"] == pytest.approx(d["ours"] - 92.0)
    paths = T.write_table(df, "XII", "Paper text vs public code", tmp_path, True, "demo")
    assert [p.name for p in paths] == [f"table_12.{e}" for e in T.TABLE_FORMATS]
    assert "MHSA-Net† (K=8) (public code)" in (tmp_path / "table_12.md").read_text()


def test_one_difference_at_a_time_table(readings, paper):
    study, ids, root = readings
    df = T.tidy_table(study, "XIII", T.load_metrics(root), paper)
    rows = list(dict.fromkeys(df.row))
    assert len(rows) == 21 and rows[0] == "paper text" and (df.n_seeds == 1).all()
    base = "occluded_duke__mhsam-K8-fdrt0.0001-ihtl1-acm0.001g0.001"
    for row, cid in [("paper text", f"{base}__s0"), ("+ (a) alpha softmax over positions", f"{base}-a.a__s0"),
                     ("+ (h) Euclidean distances in the triplets", f"{base}-a.h__s0"),
                     ("+ (j2) competition of utils/loss.py",
                      "occluded_duke__mhsam-K8-fdrt0.0001-ihtl1-acm1e-06g0.001-a.j2__s0")]:
        assert line(df, row, "occluded_duke", "rank10")["ours"] == 12.0 + ids.index(cid)
    # every row stands beside the paper's MHSA-Net (K=8) on Occluded-DukeMTMC (Table II)
    assert set(df.loc[df.metric == "rank1", "paper"]) == {55.4}
    assert set(df.loc[df.metric == "rank5", "paper"]) == {70.2}
    assert set(df.loc[df.metric == "mAP", "paper"]) == {42.4}

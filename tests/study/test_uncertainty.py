"""Intervals and marks of the tables from per-query results (docs/tables.md, "Uncertainty"), on hand-made
metrics.json sets, against independent computations: each resample rebuilt by a loop from the same seeded
draws, scipy.stats for the t quantiles.

The demo study with one seed: every cell of Tables XII and XIII gets a metrics.json whose per-query results
are made by hand (its `eval` holds their means), some identical to the row they are compared with, some
clearly better, some a little different."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mhsa.evaluation.bootstrap import N_RESAMPLES, SEED
from mhsa.study import tables as T
from mhsa.study.build import build_study, load_study_config
from mhsa.study.uncertainty import SEEDS, SEEDS_BOOTSTRAP, Uncertainty, cell_interval, table_intervals

ROOT = Path(__file__).resolve().parents[2]
# per test set: query identities (pids of the valid queries)
QUERY_PIDS = {"occluded_duke": np.repeat(np.arange(20), 2), "market1501": np.repeat(np.arange(30), 3)}


def base_results(n: int) -> dict:
    """A middling model: every other query finds its match at rank 1, the rest at rank 4."""
    first_hit = np.where(np.arange(n) % 2 == 0, 0, 3)
    ap = np.where(first_hit == 0, 0.8, 0.3) - 0.01 * (np.arange(n) % 5)
    return {"first_hit": first_hit, "AP": ap, "INP": ap / 2, "AP@50": ap}


def results_of(kind: str, n: int) -> dict:
    r = {k: np.array(v, dtype=float if k != "first_hit" else int) for k, v in base_results(n).items()}
    if kind == "better":  # every query at rank 1
        r["first_hit"][:] = 0
        r["AP"][:] = r["AP@50"][:] = 0.95
    elif kind == "slightly":  # one query of the base gains rank 1
        r["first_hit"][1] = 0
        r["AP"][1] = r["AP@50"][1] = 0.8
    return r


# what each row's cell scores (cells not named: "base")
KIND = {
    ("XIII", "+ (h) Euclidean distances in the triplets"): "better",
    ("XIII", "+ (a) alpha softmax over positions"): "slightly",
    ("XII", "MHSA-Net† (K=8) (public code)"): "better",
    ("XII", "MHSA-Net (K=8) (public code)"): "slightly",
    ("XIII", "public code (all on; CE on q*)"): "slightly",  # the same cell as the row above
}


def metrics_json(cid: str, targets: dict, kind: str) -> dict:
    ev, pq = {}, {}
    for test_set, modes in targets.items():
        pids = QUERY_PIDS.get(test_set, np.repeat(np.arange(10), 2))
        r = results_of(kind, len(pids))
        ev[test_set] = {m: {"rank1": 100 * np.mean(r["first_hit"] < 1), "rank5": 100 * np.mean(r["first_hit"] < 5),
                            "rank10": 100 * np.mean(r["first_hit"] < 10), "mAP": 100 * np.mean(r["AP"])}
                        for m in modes}
        pq[test_set] = {"index": list(range(len(pids))), "pids": [int(p) for p in pids],
                        "modes": {m: {k: v.tolist() for k, v in r.items()} for m in modes}}
    return {"cell": cid, "eval": ev, "per_query": pq}


@pytest.fixture(scope="module")
def readings(tmp_path_factory):
    study = build_study(load_study_config(ROOT / "config.yaml"), "demo")
    root = tmp_path_factory.mktemp("runs_pq")
    kinds: dict = {}
    for r in study.rows:
        if r.table in ("XII", "XIII") and r.source == "table":
            for cid in r.cells:
                kind = KIND.get((r.table, r.row), "base")
                assert kinds.setdefault(cid, kind) == kind  # a cell shared by two rows scores one way
    for cid, kind in kinds.items():
        (root / cid).mkdir()
        (root / cid / "metrics.json").write_text(json.dumps(metrics_json(cid, study.cells[cid].targets, kind)))
    return study, T.load_metrics(root, study.cells)


def loop_resamples(pids, values) -> np.ndarray:
    """The bootstrap by hand: the study's seeded draws of identities, each resample's queries gathered and
    averaged one by one."""
    ids = np.unique(pids)
    draws = np.random.default_rng(SEED).integers(0, len(ids), size=(N_RESAMPLES, len(ids)))
    return np.array([np.concatenate([values[pids == ids[i]] for i in d]).mean() for d in draws])


def line(df, row, dataset, metric) -> dict:
    hit = df[(df.row == row) & (df.dataset == dataset) & (df.metric == metric)]
    assert len(hit) == 1, (row, dataset, metric)
    return hit.iloc[0].to_dict()


def test_every_one_seed_cell_has_the_bootstrap_interval_of_its_test_set(readings):
    study, metrics = readings
    df = T.tidy_table(study, "XIII", metrics, T.load_paper())
    pids = QUERY_PIDS["occluded_duke"]
    own = df[df.own == 1]
    assert (own.interval == "bootstrap").all() and own.ours_low.notna().all() and own.ours_high.notna().all()
    for kind, row in (("base", "paper text"), ("slightly", "+ (a) alpha softmax over positions")):
        r = results_of(kind, len(pids))
        for metric, values in (("rank1", 100.0 * (r["first_hit"] < 1)), ("mAP", 100 * r["AP"])):
            got = line(df, row, "occluded_duke", metric)
            lo, hi = np.percentile(loop_resamples(pids, values), [2.5, 97.5])
            assert (got["ours_low"], got["ours_high"]) == pytest.approx((lo, hi)), (row, metric)
            assert got["ours"] == pytest.approx(values.mean())


def test_table_xiii_compares_every_row_with_the_paper_text_cell_paired(readings):
    study, metrics = readings
    df = T.tidy_table(study, "XIII", metrics, T.load_paper())
    rows = list(dict.fromkeys(df.row))
    compared = df[df.row != "paper text"]
    assert set(compared.vs_row) == {"paper text"} and (compared.test == "paired bootstrap").all()
    assert line(df, "paper text", "occluded_duke", "rank1")["vs_row"] == ""
    # the same model as the paper text: no difference in any resample, within noise
    same = line(df, "+ (b) attention MLP C-1024-256-K", "occluded_duke", "rank1")
    assert (same["diff"], same["diff_low"], same["diff_high"], same["p"]) == (0.0, 0.0, 0.0, 1.0)
    assert same["within_noise"] is True
    # every query at rank 1 against half of them: beyond noise, marked as such (no `≈`)
    better = line(df, "+ (h) Euclidean distances in the triplets", "occluded_duke", "rank1")
    assert better["diff"] == pytest.approx(50.0) and better["within_noise"] is False and better["diff_low"] > 0
    # one query of 40 better: the paired interval by hand, over the same resampled identities
    pids = QUERY_PIDS["occluded_duke"]
    a = 100.0 * (results_of("slightly", 40)["first_hit"] < 1)
    b = 100.0 * (results_of("base", 40)["first_hit"] < 1)
    diffs = loop_resamples(pids, a) - loop_resamples(pids, b)
    slight = line(df, "+ (a) alpha softmax over positions", "occluded_duke", "rank1")
    assert (slight["diff_low"], slight["diff_high"]) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
    assert slight["diff"] == pytest.approx(2.5) and slight["within_noise"] is True
    assert slight["p"] == pytest.approx(min(1, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0))))
    # the paper claims no difference between these rows (one paper number): the mark is there anyway
    assert set(df.loc[df.metric == "rank1", "paper"]) == {55.4}
    assert df[(df.own == 1) & (df.row != "paper text")].within_noise.notna().all()
    assert len(rows) == len(set(rows))


def test_table_xii_compares_public_code_rows_with_the_public_code_baseline(readings):
    study, metrics = readings
    df = T.tidy_table(study, "XII", metrics, T.load_paper())
    vs = {r: line(df, r, "market1501", "rank1")["vs_row"] for r in dict.fromkeys(df.row)}
    assert vs == {"Baseline (paper text)": "", "MHSA-Net (K=8) (paper text)": "Baseline (paper text)",
                  "MHSA-Net† (K=8) (paper text)": "Baseline (paper text)",
                  "Baseline (public code)": "Baseline (paper text)",
                  "MHSA-Net (K=8) (public code)": "Baseline (public code)",
                  "MHSA-Net† (K=8) (public code)": "Baseline (public code)"}
    for d, n in (("market1501", 90), ("occluded_duke", 40)):
        dagger = line(df, "MHSA-Net† (K=8) (public code)", d, "rank1")
        assert dagger["within_noise"] is False and dagger["diff"] == pytest.approx(50.0)
        net = line(df, "MHSA-Net (K=8) (public code)", d, "rank1")
        assert net["diff"] == pytest.approx(100 / n) and net["within_noise"] is True
        assert line(df, "Baseline (public code)", d, "mAP")["within_noise"] is True  # same numbers as paper text


def test_marks_and_footnotes_in_every_format(readings, tmp_path):
    study, metrics = readings
    df = T.tidy_table(study, "XIII", metrics, T.load_paper())
    T.write_table(df, "XIII", "t", tmp_path, synthetic=True)
    md, html, tex = ((tmp_path / f"table_13.{e}").read_text() for e in ("md", "html", "tex"))
    base = line(df, "paper text", "occluded_duke", "rank1")
    cell = f"{base['ours']:.1f} [{base['ours_low']:.1f}, {base['ours_high']:.1f}] (55.4, {base['delta']:+.1f})"
    assert cell in md and cell in html and cell in tex
    assert f"[{base['ours_low']:.1f}, {base['ours_high']:.1f}] (55.4, {base['delta']:+.1f}) {T.NOISE_MARK}" in md
    for text in (md, html):
        assert "paired bootstrap" in text and "95%" in text and "1,000 resamples" in text
        assert "Welch" not in text  # no row of this table was tested over seeds
        assert "difference from the row it is compared with" in text
    assert "paired bootstrap" in tex and r"$\approx$" in tex
    back = pd.read_csv(tmp_path / "table_13.csv")
    assert list(back.columns) == [*T.COLUMNS, "data"] and back.ours_low.notna().sum() == (back.own == 1).sum()


def test_several_seeds_combine_seed_noise_and_the_test_set():
    """Two seeds of one row with per-query results: the t interval over seeds, widened by the bootstrap of
    the seed-averaged per-query results (half-widths in quadrature); without per-query results, the t
    interval alone."""
    pids = np.repeat(np.arange(15), 2)
    n = len(pids)
    r0, r1 = results_of("base", n), results_of("slightly", n)
    metrics = {}
    for cid, r in (("c0", r0), ("c1", r1)):
        metrics[cid] = {"eval": {"t": {"global": {"rank1": 100 * np.mean(r["first_hit"] < 1)}}},
                        "per_query": {"t": {"index": list(range(n)), "pids": pids.tolist(),
                                            "modes": {"global": {k: v.tolist() for k, v in r.items()}}}}}
    got = cell_interval(metrics, ["c0", "c1"], "t", "global", "rank1")
    vals = [100 * np.mean(r0["first_hit"] < 1), 100 * np.mean(r1["first_hit"] < 1)]
    averaged = (100.0 * (r0["first_hit"] < 1) + 100.0 * (r1["first_hit"] < 1)) / 2
    test_se = loop_resamples(pids, averaged).std(ddof=1)
    half = math.hypot(stats.t.ppf(0.975, 1) * stats.sem(vals), stats.norm.ppf(0.975) * test_se)
    assert got.method == SEEDS_BOOTSTRAP and got.n_seeds == 2 and got.std == pytest.approx(np.std(vals, ddof=1))
    assert (got.low, got.high) == pytest.approx((np.mean(vals) - half, np.mean(vals) + half))
    for cid in metrics:
        del metrics[cid]["per_query"]
    plain = Uncertainty(metrics).interval(["c0", "c1"], "t", "global", "rank1")
    ref = stats.t.interval(0.95, 1, loc=np.mean(vals), scale=stats.sem(vals))
    assert plain.method == SEEDS and (plain.low, plain.high) == pytest.approx(ref)
    assert plain.high - plain.low < got.high - got.low


def test_the_figures_read_intervals_per_row(readings):
    study, metrics = readings
    frame = table_intervals(study, "XIII", metrics)
    tidy = T.tidy_table(study, "XIII", metrics, T.load_paper())
    assert list(frame.columns) == ["row", "dataset", "metric", "value", "low", "high", "method", "n_seeds", "std"]
    merged = frame.merge(tidy, on=["row", "dataset", "metric"])
    assert len(merged) == len(frame) == (tidy.own == 1).sum()
    assert np.allclose(merged.value, merged.ours) and np.allclose(merged.low, merged.ours_low)
    assert np.allclose(merged.high, merged.ours_high) and (merged.method == merged.interval).all()

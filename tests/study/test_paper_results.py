"""Shape and spot checks of mhsa/study/paper_results.csv (the transcription of the paper's Tables I-XI)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mhsa.study.build import load_study_config
from mhsa.study.tables import PAPER_CSV, load_paper

ROOT = Path(__file__).resolve().parents[2]
METRICS = {"rank1", "rank3", "rank5", "rank10", "mAP"}
# Method rows per table in the paper (reference methods + the paper's own rows).
ROW_COUNTS = {
    "I": 26,
    "II": 15,
    "III": 9,
    "IV": 12,
    "V": 13,
    "VI": 9,
    "VII": 10,
    "VIII": 4,
    "IX": 7,
    "X": 12,
    "XI": 12,
}


@pytest.fixture(scope="module")
def paper() -> pd.DataFrame:
    return load_paper()


@pytest.fixture(scope="module")
def tables() -> dict:
    """The paper's own tables (I-XI); XII and XIII (docs/paper-to-code.md "Two readings") borrow their paper
    numbers (`paper_tables`), XIV (the premise preset's occlusion sweep) is ours alone: the paper has none."""
    config = load_study_config(ROOT / "config.yaml")["tables"]
    beyond = {t for t in config if t not in ROW_COUNTS}
    assert beyond == {"XII", "XIII", "XIV"} and all("paper_tables" not in config[t] for t in ROW_COUNTS)
    return {t: s for t, s in config.items() if t in ROW_COUNTS}


def test_a_table_of_our_own_has_no_paper_numbers(paper):
    assert not (paper.table == "XIV").any()
    assert "paper_tables" not in load_study_config(ROOT / "config.yaml")["tables"]["XIV"]


def test_borrowed_paper_rows_exist_for_every_metric(paper):
    """Each `paper_row` of Tables XII/XIII names a row of the paper table it borrows from, with a value
    for every metric of the borrowing table on that data set."""
    borrowing = {t: s for t, s in load_study_config(ROOT / "config.yaml")["tables"].items() if "paper_tables" in s}
    assert set(borrowing) == {"XII", "XIII"}
    for t, spec in borrowing.items():
        assert not (paper.table == t).any(), t  # the CSV stays a transcription of the paper
        for r in spec["rows"]:
            for d, source in spec["paper_tables"].items():
                for m in spec["metrics"]:
                    value(paper, source, r["paper_row"], d, m)


def value(paper, table, row, dataset, metric):
    hit = paper[
        (paper.table == table) & (paper.row == row) & (paper.dataset == dataset) & (paper.metric == metric)
    ]
    assert len(hit) == 1, (table, row, dataset, metric)
    return float(hit.value.iloc[0])


def test_columns_and_types(paper):
    raw = pd.read_csv(PAPER_CSV, keep_default_na=False)
    assert list(raw.columns) == ["table", "row", "dataset", "metric", "value", "own"]
    assert raw["value"].dtype.kind == "f"
    assert set(raw["own"]) == {0, 1}
    assert paper["value"].between(0, 100).all()
    assert (paper["row"].str.strip() == paper["row"]).all() and (paper["row"] != "").all()
    assert set(paper["metric"]) <= METRICS
    assert set(paper["table"]) == set(ROW_COUNTS)
    assert not paper.duplicated(["table", "row", "dataset", "metric"]).any()


def test_datasets_and_metrics_belong_to_their_table(paper, tables):
    for t, spec in tables.items():
        sub = paper[paper.table == t]
        assert set(sub.dataset) <= set(spec["datasets"]), t
        assert set(sub.metric) <= set(spec["metrics"]), t


def test_row_counts_and_own_rows_match_config(paper, tables):
    assert set(tables) == set(ROW_COUNTS)
    for t, n in ROW_COUNTS.items():
        sub = paper[paper.table == t]
        assert sub.row.nunique() == n, t
        own = list(dict.fromkeys(sub.loc[sub.own == 1, "row"]))
        assert own == [r["row"] for r in tables[t]["rows"]], t  # same set, same (paper) order
        # a row is either the paper's own or a reference method, never both
        assert not set(own) & set(sub.loc[sub.own == 0, "row"]), t


def test_own_rows_are_complete(paper, tables):
    for t, spec in tables.items():
        for r in spec["rows"]:
            sub = paper[(paper.table == t) & (paper.row == r["row"])]
            got = set(zip(sub.dataset, sub.metric, strict=True))
            want = {(d, m) for d in spec["datasets"] for m in spec["metrics"]}
            assert got == want, (t, r["row"], want - got)
    assert len(paper[(paper.table == "I") & (paper.own == 1)]) == 6 * 4 * 2


def test_reference_rows_first_and_missing_values_absent(paper):
    t1 = paper[paper.table == "I"]
    rows = list(dict.fromkeys(t1.row))
    assert rows[0] == "MLFN [59]" and rows[19] == "RGA-SC [66]" and rows[20] == "Baseline"
    for name in ("Mancs [7]", "CAMA [56]", "PCB+RPP [63]"):  # no CUHK03-Labeled numbers
        assert not ((t1.row == name) & (t1.dataset == "cuhk03_labeled")).any()
    assert not ((t1.row == "PGFA [29]") & t1.dataset.str.startswith("cuhk03")).any()
    assert not ((t1.row == "FANN [48]") & (t1.dataset == "dukemtmc")).any()
    part = paper[(paper.table == "II") & (paper.row == "Part Bilinear [65]")]
    assert list(part.metric) == ["rank1"]
    assert len(paper) == 560


@pytest.mark.parametrize(
    "table,row,dataset,metric,expected",
    [
        ("I", "SCSN (4-stage) [6]", "market1501", "mAP", 88.3),
        ("I", "HA-CNN [54]", "cuhk03_labeled", "rank1", 44.4),
        ("I", "Mancs [7]", "cuhk03_detected", "mAP", 60.5),
        ("I", "MHSA-Net (K=5)", "cuhk03_detected", "rank1", 73.4),  # column order: Market, Duke, CUHK03-D, -L
        ("I", "MHSA-Net (K=5)", "cuhk03_labeled", "rank1", 75.8),
        ("I", "MHSA-Net+Re-ranking (K=8)", "dukemtmc", "mAP", 87.2),
        ("I", "MHSA-Net† (K=8)", "market1501", "rank1", 94.3),
        ("II", "MHSA-Net* (K=8)", "occluded_duke", "rank1", 59.7),
        ("II", "MHSA-Net* (K=8)", "occluded_duke", "mAP", 44.8),
        ("III", "Baseline", "p_dukemtmc", "rank10", 78.4),
        ("IV", "FPR [40]", "partial_ilids", "rank1", 68.1),
        ("IV", "MHSA-Net (K=8)", "partial_reid", "rank3", 87.7),
        ("V", "Baseline+MHSAM+FDRT+ACM (K=8)", "cuhk03_labeled", "mAP", 68.9),
        ("V", "MHSA-Net (K=6)", "market1501", "mAP", 84.1),
        ("VI", "P_7", "cuhk03_detected", "mAP", 67.7),
        ("VII", "K=7", "market1501", "rank1", 93.3),
        ("VIII", "MHSA-Net* w/o RLM", "occluded_duke", "rank5", 72.4),
        ("IX", "K=8, lambda1=1e-4", "cuhk03_detected", "rank1", 70.0),
        ("X", "K=7, lambda2=1.0", "cuhk03_detected", "mAP", 67.5),
        ("XI", "lambda3=1, gamma=1e-3", "cuhk03_detected", "rank1", 58.4),
        ("XI", "lambda3=1e-3, gamma=5e-1", "cuhk03_detected", "mAP", 64.2),
    ],
)
def test_spot_values(paper, table, row, dataset, metric, expected):
    assert value(paper, table, row, dataset, metric) == pytest.approx(expected)


def test_rows_shared_between_tables_agree(paper):
    """Rows that are the same experiment in several tables carry the same numbers."""
    pairs = [
        (("I", "Baseline"), ("V", "Baseline")),
        (("I", "MHSA-Net (K=8)"), ("V", "MHSA-Net (K=8)")),
        (("V", "Baseline+MHSAM (K=8)"), ("VII", "K=8")),
        (("IX", "Baseline+MHSAM"), ("VII", "K=8")),
        (("X", "K=7 Baseline+MHSAM"), ("VII", "K=7")),
        (("IX", "K=8, lambda1=1e-4"), ("V", "Baseline+MHSAM+FDRT (K=8)")),
        (("X", "K=8, lambda2=1.0"), ("V", "Baseline+MHSAM+IHTL (K=8)")),
        (("II", "MHSA-Net* (K=8)"), ("VIII", "MHSA-Net*")),
    ]
    for (ta, ra), (tb, rb) in pairs:
        a = paper[(paper.table == ta) & (paper.row == ra)].set_index(["dataset", "metric"])["value"]
        b = paper[(paper.table == tb) & (paper.row == rb)].set_index(["dataset", "metric"])["value"]
        common = a.index.intersection(b.index)
        assert len(common) > 0, (ta, ra, tb, rb)
        assert (a[common] == b[common]).all(), (ta, ra, tb, rb)

"""mhsa.study.attention_table on the premise preset's study with hand-made attention-share diagnostics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from mhsa.study import tables as T
from mhsa.study.attention_table import attention_share_table, render_markdown
from mhsa.study.build import build_study, load_study_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study():
    return build_study(load_study_config(ROOT / "config.yaml"), "premise")


def _share(seed: int, occluder: float) -> dict:
    body = 0.5 + 0.01 * seed
    return {"classes": ["background", "body", "occluder"], "mean": [1 - body - occluder, body, occluder],
            "chance": [0.5, 0.3, 0.2], "heads": [], "images": 10}


def test_one_line_per_model_with_the_mean_std_and_chance_over_its_seeds(study):
    metrics = {}
    for cid, cell in study.cells.items():
        occluder = 0.1 if cell.knobs["mhsam"] else 0.3
        metrics[cid] = {"diagnostics": {"attention_share": _share(cell.seed, occluder)}}
    df = attention_share_table(study, metrics)
    # rows of one model (e.g. two test modes of Table II's cells) are listed once, under the first row's name
    t2_refs = [r for r in study.rows if r.source == "table" and r.table == "II"]
    t2 = df[df["table"] == "II"]
    assert len(t2) == len({tuple(r.cells) for r in t2_refs}) < len({r.row for r in t2_refs})
    assert list(t2["row"]) == list(dict.fromkeys(
        next(r.row for r in t2_refs if tuple(r.cells) == cells) for cells in dict.fromkeys(tuple(r.cells)
                                                                                        for r in t2_refs)))
    base = df[(df["table"] == "XIV") & (df["row"] == "Baseline, 35 %")].iloc[0]
    assert base["n_seeds"] == 3
    assert base["body"] == pytest.approx(100 * (0.50 + 0.51 + 0.52) / 3)
    assert base["body_std"] == pytest.approx(1.0)  # 50, 51, 52 %
    assert base["occluder"] == pytest.approx(30.0) and base["occluder_std"] == pytest.approx(0.0, abs=1e-9)
    assert base["occluder_chance"] == pytest.approx(20.0)
    assert base["occluder_minus_chance"] == pytest.approx(10.0)
    net = df[(df["table"] == "XIV") & (df["row"] == "MHSA-Net (K=8), 35 %")].iloc[0]
    assert net["occluder_minus_chance"] == pytest.approx(-10.0)
    md = render_markdown(df)
    assert "| XIV | Baseline, 35 % | 3 | " in md and "30.0 ± 0.0 (20.0)" in md and "| +10.0 |" in md


def test_one_seed_has_no_std_and_cells_without_label_maps_give_no_line(study):
    cid = next(iter(study.cells))
    df = attention_share_table(study, {cid: {"diagnostics": {"attention_share": _share(0, 0.2)}}})
    assert len(df) >= 1 and set(df["n_seeds"]) == {1} and all(math.isnan(v) for v in df["body_std"])
    assert not [line for line in render_markdown(df).splitlines() if line.startswith("| II") and "±" in line]
    assert not len(attention_share_table(study, {cid: {"diagnostics": {}}}))


def test_the_tables_step_writes_it_beside_the_tables_when_cells_have_it(tmp_path, study):
    runs = tmp_path / "runs"
    for cid, cell in study.cells.items():
        (runs / cid).mkdir(parents=True)
        ev = {t: {m: {"rank1": 50.0, "mAP": 40.0} for m in modes} for t, modes in cell.targets.items()}
        (runs / cid / "metrics.json").write_text(json.dumps(
            {"cell": cid, "eval": ev, "diagnostics": {"attention_share": _share(cell.seed, 0.25)}}))
    out = tmp_path / "tables"
    T.build_all(study, runs, out)
    back = pd.read_csv(out / "attention_share.csv")
    assert list(back.columns)[:4] == ["table", "row", "dataset", "n_seeds"] and len(back) >= 6
    assert "(attention_share.md)" in (out / "summary.md").read_text()

"""What the study writes into MLflow (mhsa.study.tracking) and the run's closing lines."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mhsa.run.tracking import UI_PORT
from mhsa.study import tracking as T
from mhsa.study.build import build_study, load_study_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ci():
    return build_study(load_study_config(ROOT / "config.yaml"), "ci")


def _metrics(run_dir: Path, cell: str, eval_: dict, run_id: str = "r" * 32) -> Path:
    run_dir.mkdir(parents=True)
    path = run_dir / "metrics.json"
    path.write_text(json.dumps({"cell": cell, "eval": eval_, "train": {"epochs": 2, "mlflow_run_id": run_id}}))
    return path


def test_every_cell_gets_the_headline_of_the_first_row_that_reports_it(tmp_path, ci):
    """A Baseline and an MHSA-Net run both carry headline/rank1 and headline/mAP: the numbers of the mode
    their first table row reports (Table VIII reports MHSA-Net* only: p*, mode local)."""
    fusion = next(c for c in ci.cells if c.endswith("-sum__s0"))
    base = "occluded_duke__baseline__s0"
    ev = {"occluded_duke": {"global": {"rank1": 10.0, "mAP": 11.0}, "local": {"rank1": 20.0, "mAP": 21.0},
                            "concat": {"rank1": 30.0, "mAP": 31.0}}}
    files = [_metrics(tmp_path / c, c, ev) for c in (base, fusion)]
    updates = list(T.cell_updates(ci, files, [tmp_path / c / "attention.png" for c in (base, fusion)]))
    (_, _, base_tags, base_values), (_, _, fusion_tags, fusion_values) = updates
    assert base_values == {"headline/rank1": (10.0, 2), "headline/mAP": (11.0, 2)}
    assert base_tags["headline"] == "occluded_duke / global (Table II / Baseline)"
    assert fusion_values == {"headline/rank1": (20.0, 2), "headline/mAP": (21.0, 2)}
    assert fusion_tags["headline"] == "occluded_duke / local (Table VIII / MHSA-Net* (SUM))"
    assert fusion_tags["table.VIII"] == "1" and fusion_tags["feeds"] == "Table VIII / MHSA-Net* (SUM)"
    with pytest.raises(RuntimeError, match="same cell order"):
        list(T.cell_updates(ci, files, [tmp_path / "x" / "attention.png"] * 2))


def test_study_params_summary_and_description(ci, tmp_path):
    params = T.parent_params(ci)
    assert params == {"preset": "ci", "data_source": "synthetic", "seeds": "0", "config_digest": ci.digest(),
                      "cells": len(ci.cells), "tables": "II,IV,VI,VIII", "figures": "7"}
    frames = {"II": pd.DataFrame({"row": ["Baseline", "Baseline", "Ref"], "own": [1, 1, 0], "n_seeds": [1, 1, 0],
                                  "delta": [-2.0, 4.0, float("nan")]})}
    metrics = {"a": {"train": {"seconds": 60.0}}, "b": {"train": {"seconds": 120.0}}}
    assert T.summary_metrics(ci, metrics, frames) == {
        "study/cells_finished": 2.0, "study/train_minutes": 3.0,
        "tables/II.rows_with_results": 1.0, "tables/II.mean_delta": 1.0}
    note = T.parent_tags(ci, tmp_path, finished=2)[T.NOTE]
    assert "Synthetic data" in note and f"2 of {len(ci.cells)} cells finished" in note and ci.digest() in note
    assert T.parent_tags(ci, tmp_path)["mlflow.source.name"] == "Snakefile: snakemake tables --config preset=ci"
    assert "study ci" in T.experiment_note(ci)


def test_the_config_digest_follows_the_study(ci):
    cfg = load_study_config(ROOT / "config.yaml")
    assert build_study(cfg, "ci").digest() == ci.digest()  # the same config, the same digest
    cfg["tables"]["II"]["title"] = "another title"
    assert build_study(cfg, "ci").digest() != ci.digest()


def test_closing_lines_say_where_to_look(ci):
    db = "sqlite:////abs/results/ci/mlflow.db"
    lines = T.closing_lines(ci, "results/ci", db, "4")
    text = "\n".join(lines)
    assert "results/ci/tables/" in text and "results/ci/figures/" in text
    assert "snakemake --report results/ci/report.html --config preset=ci" in text
    assert f"mlflow ui --backend-store-uri {db} --port {UI_PORT}" in text
    assert f"http://127.0.0.1:{UI_PORT}/#/experiments/4/runs?workflowType=machine_learning" in text
    assert f"holds the {len(ci.cells)} cell runs" in text
    server = "\n".join(T.closing_lines(ci, "results/ci", "http://h:5000", "4"))
    assert "mlflow ui" not in server
    assert "open http://h:5000/#/experiments/4/runs?workflowType=machine_learning" in server
    down = "\n".join(T.closing_lines(ci, "results/ci", db, None, store_problem="refused"))
    assert "not reachable (refused)" in down and "python -m mhsa sync-mlflow results/ci" in down

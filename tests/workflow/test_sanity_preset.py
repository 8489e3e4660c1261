"""The `sanity` preset (docs/demo-study.md): Table II only, the study's setting, its seeds."""

from __future__ import annotations

from pathlib import Path

import yaml

from mhsa.study.build import build_study

REPO = Path(__file__).resolve().parents[2]


def test_sanity_preset_is_table_ii_with_three_seeds_at_the_study_setting():
    study = build_study(yaml.safe_load((REPO / "config.yaml").read_text()), "sanity")
    assert list(study.config["tables"]) == ["II"] and study.config["figures"] == {}
    assert study.config["results_dir"] == "results/sanity"
    # Baseline, MHSA-Net (also MHSA-Net*, another test mode of the same cell), MHSA-Net dagger
    assert len(study.cells) == 3 * 3
    assert sorted({c.seed for c in study.cells.values()}) == [0, 1, 2]
    assert {c.dataset for c in study.cells.values()} == {"occluded_duke"}
    recipe = study.config["recipe"]
    assert (recipe["data"]["height"], recipe["data"]["width"], recipe["optim"]["epochs"]) == (64, 32, 5)
    assert study.config["synthetic"]["num_ids"] == 128  # the study's "ids128_e5" setting
    assert recipe["model"] == {"backbone": "resnet18", "pretrained": False, "last_stride": 1}


def test_snakemake_dry_run_of_the_sanity_preset(tmp_path, copy_workflow):
    from test_workflow import job_counts, snakemake

    wf = copy_workflow(tmp_path)
    counts = job_counts(snakemake(wf, "-n", "tables", "--config", "preset=sanity"))
    assert counts == {"train_cell": 9, "mlflow_store": 1, "study": 1, "tables": 1, "synthetic_dataset": 1}

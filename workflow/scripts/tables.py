"""Snakemake adapter: the paper's tables and figures from the finished cells' metrics.json."""

# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script directive)
from wf_common import add_repo_to_path, log_to

add_repo_to_path(__file__)

import os  # noqa: E402
from pathlib import Path  # noqa: E402

from mhsa.plots import build_all_figures  # noqa: E402
from mhsa.study import build_study, cell_overrides  # noqa: E402
from mhsa.tables import build_all  # noqa: E402
from mhsa.tracking import log_study_outputs, study_tags  # noqa: E402

with log_to(snakemake.log[0]) as log:
    study = build_study(snakemake.config, snakemake.config.get("preset"))
    runs_dir = Path(snakemake.input.metrics[0]).parents[1]  # <results>/runs/<cell>/metrics.json
    figures_dir = Path(snakemake.output.figures)  # <results>/figures
    tables_dir = figures_dir.parent / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    build_all(study, runs_dir, tables_dir)
    build_all_figures(study, runs_dir, figures_dir)
    missing = [f for f in snakemake.output if not Path(f).exists()]
    if missing:
        raise RuntimeError(f"mhsa.tables/mhsa.plots did not write {missing}")
    log.info("tables in %s, figures in %s", tables_dir, figures_dir)
    experiments = sorted({cell_overrides(study, c)["tracking"]["experiment"] for c in study.cells.values()})
    parents = log_study_outputs(os.environ.get("MLFLOW_TRACKING_URI"), experiments,
                                study_tags(study.config["preset"], tables_dir.parent),
                                {"tables": tables_dir, "figures": figures_dir})
    log.info("tables and figures logged to the study's MLflow parent run(s) %s", parents)

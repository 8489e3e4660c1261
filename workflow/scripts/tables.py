"""Snakemake adapter: the paper's tables and figures from the finished cells' metrics.json, and each
cell's attention overlay (logged to the cell's MLflow run, with the table rows it feeds and its headline
pair as mhsa.study.tracking says).

Everything comes by name from the rule: the study that common.smk built (input.study, its plain data as
JSON), each cell's metrics.json and attention.npz (input, in the order of output.overlays), the runs and
tables directories (params), the figures directory and the overlays (output) and the MLflow store
(MLFLOW_TRACKING_URI, exported by common.smk).
"""

# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script directive)
from wf_common import add_repo_to_path

add_repo_to_path(__file__)

import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

from mhsa.run.job_log import log_to  # noqa: E402
from mhsa.run.results import check_cell_outputs  # noqa: E402
from mhsa.run.tracking import log_run_artifacts  # noqa: E402
from mhsa.study.build import Study  # noqa: E402
from mhsa.study.plots import build_all_figures, overlay_from_npz  # noqa: E402
from mhsa.study.report import write_summary_page  # noqa: E402
from mhsa.study.tables import build_all, load_metrics  # noqa: E402
from mhsa.study.tracking import cell_updates, log_study  # noqa: E402


def overlays_to_mlflow(study: Study, attention: list, overlays: list, metrics_files: list) -> tuple:
    """Draw each cell's overlay, then log it to the cell's MLflow run: (overlays, runs updated, s)."""
    t0 = time.time()
    for npz, png in zip(attention, overlays, strict=True):
        overlay_from_npz(npz, png)
    n = log_run_artifacts(os.environ.get("MLFLOW_TRACKING_URI"), cell_updates(study, metrics_files, overlays))
    return len(overlays), n, time.time() - t0


with log_to(snakemake.log[0]) as log:
    # Every cell's outputs read, or one line naming each corrupt file (delete it: Snakemake retrains
    # the cell), before anything is drawn (docs/reliability.md, "Corrupt results").
    check_cell_outputs(snakemake.input.metrics, snakemake.input.attention)
    study = Study.from_data(json.loads(Path(snakemake.input.study).read_text()))
    runs_dir, tables_dir = Path(snakemake.params.runs_dir), Path(snakemake.params.tables_dir)
    figures_dir = Path(snakemake.output.figures)
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # The overlays and MLflow (its import, the store's start-up, a write per run: seconds) run in a
    # second process, forked before any thread exists, while this one renders tables and figures.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        side = pool.submit(overlays_to_mlflow, study, list(snakemake.input.attention),
                           list(snakemake.output.overlays), list(snakemake.input.metrics))
        frames = build_all(study, runs_dir, tables_dir)
        write_summary_page(study, tables_dir)  # every table on one page, for the report
        build_all_figures(study, runs_dir, figures_dir)
        t1 = time.time()
        n_overlays, n_runs, seconds = side.result()
    log.info("tables and figures in %.1f s; beside them, %d attention overlays drawn and %d MLflow run(s) "
             "of %s updated in %.1f s; %.1f s in all", t1 - t0, n_overlays, n_runs,
             os.environ.get("MLFLOW_TRACKING_URI"), seconds, time.time() - t0)
    missing = [f for f in snakemake.output if not Path(f).exists()]
    if missing:
        raise RuntimeError(f"mhsa.study.tables/mhsa.study.plots did not write {missing}")
    log.info("tables in %s, figures in %s", tables_dir, figures_dir)
    parents = log_study(os.environ.get("MLFLOW_TRACKING_URI"), study, tables_dir.parent,
                        {"tables": tables_dir, "figures": figures_dir}, load_metrics(runs_dir, study.cells), frames)
    log.info("tables and figures logged to the study's MLflow parent run(s) %s", parents)

"""Snakemake adapter: train one cell (build the run config, take a GPU slot, call train_cell).

Everything comes by name from the rule: the cell's overrides and the recipe (params), the
checkpoint directory (param), the run directory (that of output.metrics, where train_cell writes
metrics.json and attention.npz), the GPU lock directory (resources.gpu_locks) and the MLflow store
(MLFLOW_TRACKING_URI, exported by common.smk). The runs' `feeds` tag is set by the tables rule.
"""

# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script directive)
from wf_common import add_repo_to_path, log_to

add_repo_to_path(__file__)

import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from mhsa.cell_lock import cell_lock  # noqa: E402
from mhsa.config import build_run_config  # noqa: E402
from mhsa.gpu_slots import gpu_slot  # noqa: E402
from mhsa.tracking import log_job_log, study_tags  # noqa: E402
from mhsa.train import train_cell  # noqa: E402

cell = snakemake.wildcards.cell
# Runtime settings, read here rather than passed as params: changing them must not retrain a cell.
wf = snakemake.config.get("workflow") or {}
run_dir = Path(snakemake.output.metrics).parent
if Path(snakemake.output.attention).parent != run_dir:
    raise RuntimeError(f"train_cell writes metrics.json and attention.npz into one directory; the rule "
                       f"declares {snakemake.output.metrics} and {snakemake.output.attention}")

with log_to(snakemake.log[0]) as log:
    overrides = dict(snakemake.params.overrides)
    # Tags that name the study (its parent run); the rows a cell feeds (`feeds`, `table.<N>`) are set by
    # the tables rule, not here: as params they would retrain a cell whenever a row reuses it.
    tracking = dict(overrides.get("tracking") or {})
    tracking["tags"] = {**(tracking.get("tags") or {}),
                        **study_tags(snakemake.config["preset"], run_dir.parent.parent),
                        "mlflow.source.name": "workflow/rules/train.smk:train_cell"}
    overrides["tracking"] = tracking
    overrides["threads"] = snakemake.threads  # torch CPU threads = the job's Snakemake threads

    cfg = build_run_config(dict(snakemake.params.recipe), overrides)
    ckpt_dir = Path(snakemake.params.ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(snakemake.output.metrics).parent
    # An orphaned job of a killed Snakemake may still train this cell: stop here, naming its PID.
    with cell_lock([run_dir, ckpt_dir], cell), gpu_slot(
        n_slots=wf.get("gpu_slots"),
        lock_dir=Path(snakemake.resources.gpu_locks),
        timeout=float(wf.get("gpu_wait_s", 86400)),
    ) as slot:
        log.info("cell %s: device slot %s, %d thread(s), checkpoints in %s",
                 cell, "cpu" if slot is None else slot, snakemake.threads, ckpt_dir)
        t0 = time.time()
        metrics = train_cell(cfg, run_dir, ckpt_dir=ckpt_dir, tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"))
        log.info("cell %s done in %.1f s", cell, time.time() - t0)
    log_job_log(os.environ.get("MLFLOW_TRACKING_URI"), metrics["train"].get("mlflow_run_id"), snakemake.log[0])

"""Snakemake adapter: one training job (mhsa.run.job), run in a process forked from the warm
worker when the workflow started one (mhsa.run.warm_worker), else here.

Everything comes by name from the rule: the cell's overrides and the recipe (params), the
checkpoint directory (param), the run directory (that of output.metrics, where train_cell writes
metrics.json and attention.npz) and the MLflow store
(MLFLOW_TRACKING_URI, exported by common.smk). The runs' `feeds` tag is set by the tables rule.
This file imports no torch: a forked job pays no import.
"""

# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script directive)
from wf_common import add_repo_to_path

add_repo_to_path(__file__)

import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from mhsa.run.job import TrainJob  # noqa: E402
from mhsa.run.warm_worker import run_job  # noqa: E402

run_dir = Path(snakemake.output.metrics).parent
if Path(snakemake.output.attention).parent != run_dir:
    raise RuntimeError(f"train_cell writes metrics.json and attention.npz into one directory; the rule "
                       f"declares {snakemake.output.metrics} and {snakemake.output.attention}")
# Runtime settings, read here rather than passed as params: changing them must not retrain a cell.
wf = snakemake.config.get("workflow") or {}
job = TrainJob(
    cell=snakemake.wildcards.cell,
    run_dir=str(run_dir),
    ckpt_dir=str(snakemake.params.ckpt_dir),
    log=str(snakemake.log[0]),
    recipe=dict(snakemake.params.recipe),
    overrides=dict(snakemake.params.overrides),
    threads=int(snakemake.threads),
    preset=str(snakemake.config["preset"]),
    tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"),
    gpu_slots=wf.get("gpu_slots"),
    gpu_wait_s=float(wf.get("gpu_wait_s", 86400)),
    tags={"mlflow.source.name": "workflow/rules/train.smk:train_cell"},
)
sys.exit(run_job(job, results_dir=run_dir.parent.parent))

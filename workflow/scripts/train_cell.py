"""Snakemake adapter: train one cell (build the run config, take a GPU slot, call train_cell)."""

# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script directive)
from wf_common import add_repo_to_path, log_to

add_repo_to_path(__file__)

import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from mhsa.cell_lock import cell_lock  # noqa: E402
from mhsa.config import build_run_config  # noqa: E402
from mhsa.gpu_slots import gpu_slot  # noqa: E402
from mhsa.study import build_study  # noqa: E402
from mhsa.train import train_cell  # noqa: E402

cell = snakemake.wildcards.cell
wf = snakemake.config.get("workflow") or {}
results_dir = Path(snakemake.output.metrics).parents[2]

with log_to(snakemake.log[0]) as log:
    overrides = dict(snakemake.params.overrides)
    # The `feeds` tag is not a param (it would retrain a cell whenever a row reuses it).
    study = build_study(snakemake.config, snakemake.config.get("preset"))
    feeds = "; ".join(study.cells[cell].feeds) if cell in study.cells else ""
    tracking = dict(overrides.get("tracking") or {})
    tracking["tags"] = {**(tracking.get("tags") or {}), "feeds": feeds}
    overrides["tracking"] = tracking
    overrides["threads"] = snakemake.threads  # torch CPU threads = the job's Snakemake threads

    cfg = build_run_config(dict(snakemake.params.recipe), overrides)
    ckpt_dir = Path(snakemake.params.ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(snakemake.output.metrics).parent
    # An orphaned job of a killed Snakemake may still train this cell: stop here, naming its PID.
    with cell_lock([run_dir, ckpt_dir], cell), gpu_slot(
        n_slots=wf.get("gpu_slots"),
        lock_dir=results_dir / ".gpu_locks",
        timeout=float(wf.get("gpu_wait_s", 86400)),
    ) as slot:
        log.info("cell %s: device slot %s, %d thread(s), checkpoints in %s",
                 cell, "cpu" if slot is None else slot, snakemake.threads, ckpt_dir)
        t0 = time.time()
        train_cell(cfg, run_dir, ckpt_dir=ckpt_dir,
                   tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"))
        log.info("cell %s done in %.1f s", cell, time.time() - t0)

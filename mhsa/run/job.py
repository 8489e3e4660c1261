"""One training job of the workflow: what the `train_cell` rule asks for, as plain data.

The Snakemake adapter (workflow/scripts/train_cell.py) builds a `TrainJob` from its `snakemake`
object and hands it to `mhsa.run.warm_worker.run_job`, which runs `run` in a process forked from the
warm worker or, when there is none, in the adapter's own process. Either way the job goes through
JSON first (`from_json(to_json(job))`), so both paths see identical inputs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TrainJob:
    cell: str
    run_dir: str  # metrics.json and attention.npz are written here
    ckpt_dir: str
    log: str  # the Snakemake log file
    recipe: dict
    overrides: dict
    threads: int
    preset: str
    tracking_uri: str | None = None
    gpu_lock_dir: str | None = None  # None: this user's locks on this machine (mhsa.run.gpu_slots)
    gpu_slots: int | None = None
    gpu_wait_s: float = 86400.0
    tags: dict = field(default_factory=dict)  # extra MLflow tags of the cell's run

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainJob:
        return cls(**json.loads(text))


def run(job: TrainJob) -> None:
    """Train (or resume, or re-evaluate) one cell under its locks, logging into job.log.

    A failure prints one line naming the cause and the log file, and exits 1 (mhsa.run.job_log).
    """
    from mhsa.run.job_log import log_to

    with log_to(job.log) as log:
        _train(job, log)


def _train(job: TrainJob, log) -> None:
    from mhsa.config import build_run_config
    from mhsa.run.cell_lock import cell_lock
    from mhsa.run.gpu_slots import check_assigned_gpu, gpu_slot
    from mhsa.run.tracking import log_job_log, study_tags
    from mhsa.run.train import train_cell

    run_dir, ckpt_dir = Path(job.run_dir), Path(job.ckpt_dir)
    overrides = dict(job.overrides)
    # Tags that name the study (its parent run); the rows a cell feeds (`feeds`, `table.<N>`) are set
    # by the tables rule, not here: as params they would retrain a cell whenever a row reuses it.
    tracking = dict(overrides.get("tracking") or {})
    tracking["tags"] = {**(tracking.get("tags") or {}), **study_tags(job.preset, run_dir.parent.parent),
                        **job.tags}
    overrides["tracking"] = tracking
    overrides["threads"] = job.threads  # torch CPU threads = the job's Snakemake threads

    cfg = build_run_config(dict(job.recipe), overrides)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # An orphaned job of a killed Snakemake may still train this cell: stop here, naming its PID.
    with cell_lock([run_dir, ckpt_dir], job.cell), gpu_slot(
        n_slots=job.gpu_slots,
        lock_dir=Path(job.gpu_lock_dir) if job.gpu_lock_dir else None,
        timeout=float(job.gpu_wait_s),
    ) as slot:
        check_assigned_gpu(slot)  # a slot this job was given is a GPU it can use, or a one-line error
        log.info("cell %s: device slot %s, %d thread(s), checkpoints in %s",
                 job.cell, "cpu" if slot is None else slot, job.threads, ckpt_dir)
        t0 = time.time()
        metrics = train_cell(cfg, run_dir, ckpt_dir=ckpt_dir, tracking_uri=job.tracking_uri)
        log.info("cell %s done in %.1f s", job.cell, time.time() - t0)
    log_job_log(job.tracking_uri, metrics["train"].get("mlflow_run_id"), job.log)

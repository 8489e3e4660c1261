"""A cell's life: one training job from its config to its metrics.json and MLflow run.

`train` (the loop: set-up, resume, epochs, evaluation, `metrics.json`), `checkpoint` (resumable state),
`optim` (optimiser, schedule), `tracking` (MLflow: one run per cell), `sync` (replay finished cells into
MLflow), `job` (a Snakemake job as data, under its locks), `cell_lock` and `gpu_slots` (one trainer per
cell, one GPU per job), `job_log` (a job's log and its one-line errors), `warm_worker` (jobs forked from
one process that imported torch once), `cpu_kernels` (the kernels' instruction set), `provenance` and
`progress`.

Imports the science layers (`mhsa.model`, `losses`, `data`, `evaluation`) and the foundations, never
`mhsa.study` (docs/architecture.md "Layers").
"""

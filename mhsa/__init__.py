"""MHSA-Net reproducibility harness (Tan et al., Multi-Head Self-Attention Network for Occluded Re-ID).

The package in layers, each importing only those below it (docs/architecture.md "Layers"):

- `mhsa.study`: the study as data (config.yaml -> cells and table rows) and its outputs: tables, figures.
- `mhsa.run`: a cell's life: training, checkpoints, MLflow, the Snakemake job, the warm worker.
- `mhsa.config`: the run config of one cell (dataclasses, validation).
- `mhsa.model`, `mhsa.losses`, `mhsa.data`, `mhsa.evaluation`: the science: MHSA-Net, its losses, the
  data sets and the Re-ID protocol.
- `mhsa.switches`, `mhsa.errors`, `mhsa.io`: foundations (allowed values, user errors, files and locks).

Entry points: `python -m mhsa` (train, sync-mlflow, tables, diagnostic-plots).
"""

__version__ = "0.1.0"

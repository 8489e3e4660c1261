"""Snakemake adapter: the backbone a preset's cells start from (mhsa.run.pretrain), logged to MLflow as
the study's `pretrain` run when the store is reachable."""

# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script directive)
from wf_common import add_repo_to_path

add_repo_to_path(__file__)

import os  # noqa: E402

from mhsa.config import PretrainSpec  # noqa: E402
from mhsa.run.job_log import log_to  # noqa: E402
from mhsa.run.pretrain import pretrain  # noqa: E402
from mhsa.run.tracking import CellTracker  # noqa: E402

with log_to(snakemake.log[0]) as log:
    spec = PretrainSpec.parse(dict(snakemake.params.spec))
    record = pretrain(spec, snakemake.params.data, snakemake.output[0], snakemake.params.cache_dir,
                      threads=snakemake.threads)
    log.info("pretrained %s in %.0f s: last epoch %s", snakemake.output[0], record["seconds"], record["history"][-1])
    tracker = CellTracker(os.environ.get("MLFLOW_TRACKING_URI"), f"mhsa-{snakemake.config['preset']}")
    if tracker.start("pretrain", record["spec"], {"mhsa.role": "pretrain"}):
        for row in record["history"]:
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
        tracker.log_artifact(os.path.splitext(snakemake.output[0])[0] + ".json")
        tracker.finish()

"""Snakemake adapter: create the MLflow store and experiments once, before parallel jobs."""

# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script directive)
from wf_common import add_repo_to_path, log_to

add_repo_to_path(__file__)

from pathlib import Path  # noqa: E402

from mhsa.tracking import init_store  # noqa: E402

with log_to(snakemake.log[0]) as log:
    uri, experiments = snakemake.params.uri, list(snakemake.params.experiments)
    init_store(uri, experiments)
    Path(snakemake.output[0]).write_text(f"{uri}\n" + "".join(f"{e}\n" for e in experiments))
    log.info("MLflow store %s ready with experiments %s", uri, experiments)

"""Snakemake adapter: one synthetic stand-in data set (layout = the config data set name)."""

# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script directive)
from wf_common import add_repo_to_path

add_repo_to_path(__file__)

from pathlib import Path  # noqa: E402

from mhsa.data.synthetic import generate  # noqa: E402
from mhsa.run.job_log import log_to  # noqa: E402

with log_to(snakemake.log[0]) as log:
    params = dict(snakemake.params.synthetic or {})
    root = generate(snakemake.params.root, snakemake.params.layout, seed=snakemake.params.seed, **params)
    marker = Path(snakemake.output[0])
    if not marker.exists():
        raise RuntimeError(f"generate() returned {root} but did not write {marker}")
    log.info("synthetic %s at %s (seed %s, %s)", snakemake.params.layout, root, snakemake.params.seed, params)

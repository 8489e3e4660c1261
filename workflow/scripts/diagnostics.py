"""Snakemake adapter: one diagnostics figure per cell family (a cell's seeds) from their metrics.json."""

# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script directive)
from wf_common import add_repo_to_path

add_repo_to_path(__file__)

from pathlib import Path  # noqa: E402

from mhsa.run.job_log import log_to  # noqa: E402
from mhsa.study.diagnostic_plots import cell_families, diagnostics_of_run, family_figure  # noqa: E402

with log_to(snakemake.log[0]) as log:
    out = Path(snakemake.output[0])
    out.mkdir(parents=True, exist_ok=True)
    run_dirs = [Path(m).parent for m in snakemake.input.metrics]
    for family, dirs in cell_families(run_dirs).items():
        family_figure([diagnostics_of_run(d) for d in dirs], out / f"{family}.png", title=family)
    log.info("diagnostics of %d cell(s) drawn into %s", len(run_dirs), out)

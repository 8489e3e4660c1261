"""Snakemake adapter: create the MLflow store, the experiments and the study's parent run once,
before parallel jobs. A store that cannot be reached is reported once; the cells then train
without tracking (replayed later by `python -m mhsa sync-mlflow RESULTS_DIR`)."""

# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script directive)
from wf_common import add_repo_to_path

add_repo_to_path(__file__)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from mhsa.run.job_log import log_to  # noqa: E402
from mhsa.run.tracking import SYNC_HINT, check_store, init_store, study_tags  # noqa: E402

with log_to(snakemake.log[0]) as log:
    uri, experiments = snakemake.params.uri, list(snakemake.params.experiments)
    study = study_tags(snakemake.params.preset, snakemake.params.results)
    problem = check_store(uri)
    if problem:
        msg = (f"MLflow store {uri} is not reachable ({problem}): the cells train WITHOUT tracking "
               f"(metrics.json is written as usual); replay them later with `{SYNC_HINT}`.")
        log.warning(msg)
        print(f"WARNING: {msg}", file=sys.__stderr__, flush=True)  # once, on the Snakemake console
        lines = [f"{uri}\n", f"unreachable: {problem}\n"]
    else:
        made = init_store(uri, experiments, study=study, results_dir=snakemake.params.results,
                          parent_tags=dict(snakemake.params.parent_tags), experiment_note=snakemake.params.note)
        # the experiment ids: the run's closing lines point at the runs table (common.smk, where_to_look)
        lines = [f"{uri}\n"] + [f"{e} parent={p} experiment={i}\n" for e, (i, p) in made.items()]
        log.info("MLflow store %s ready: experiments and study parent runs %s", uri, made)
    Path(snakemake.output[0]).write_text("".join(lines))

"""What the study writes into MLflow (docs/workflow.md, "MLflow"): the one module that knows both the
study's rows and the store (mhsa.run.tracking talks to the store, mhsa.run.run_metrics names what a cell
logs while it trains).

* The experiment: a description (`mlflow.note.content`) saying what its runs are.
* The study's parent run (created by the workflow's `mlflow_store` step, completed by the tables step):
  a description, a source naming the command, the git commit, params (preset, data source, seeds,
  config digest, cell count, tables, figures), summary metrics (`study/...`: cells finished, training
  time; `tables/<N>.<...>`: rows with results and the mean difference to the paper per table) and the
  tables and figures as artifacts.
* Each cell's run (the tables step): the rows it feeds (`feeds`, `table.<N>` / `figure.<N>` tags), its
  headline pair (`headline/rank1`, `headline/mAP`: the test set and mode of the first row that reports
  it, so that every run carries the same two comparable names) and its attention overlay.
"""

from __future__ import annotations

import math
from pathlib import Path

from mhsa.run.results import read_metrics
from mhsa.run.run_metrics import headline_metrics
from mhsa.run.tracking import (
    NOTE,
    feed_tags,
    git_sha,
    log_study_outputs,
    standard_tags,
    study_tags,
    ui_pointer,
)
from mhsa.study.build import RowRef, Study


def _label(row: RowRef) -> str:
    return f"{'Table' if row.source == 'table' else 'Fig.'} {row.table} / {row.row}"


def _synthetic(study: Study) -> bool:
    return study.config.get("data_source") == "synthetic"


def _warning(study: Study) -> str:
    return ("Synthetic data: pipeline numbers, not comparable to the paper's. " if _synthetic(study) else "")


def experiment_note(study: Study) -> str:
    """The experiment's description."""
    preset = study.config["preset"]
    return (f"MHSA-Net reproducibility harness (Tan et al., occluded person Re-ID), preset `{preset}`. "
            f"{_warning(study)}Each study (one results folder) is a parent run named `study {preset}`; its "
            "children are the trained cells (a model: training set, variant, seed), tagged `table.<N>` / "
            "`figure.<N>` by the tables and figures they feed. Compare cells by `headline/rank1` and "
            "`headline/mAP`; the study run holds the tables and figures.")


def _source(study: Study) -> str:
    return f"Snakefile: snakemake tables --config preset={study.config['preset']}"


def creation_tags(study: Study) -> dict:
    """The study run's source and first description, when the workflow's `mlflow_store` step creates it
    (they depend on the preset only: that step is not rerun by an edit of the study)."""
    preset = study.config["preset"]
    return {"mlflow.source.name": _source(study),
            NOTE: (f"**MHSA-Net reproduction, preset `{preset}`**: the study run. Its children are the cells as "
                   "they train; the tables step adds its params, summary metrics, tables and figures.")}


def parent_tags(study: Study, results_dir: str | Path, finished: int | None = None) -> dict:
    """The study run's source (the command that makes it) and description."""
    preset = study.config["preset"]
    cfg = study.config
    done = "" if finished is None else f"{finished} of {len(study.cells)} cells finished; "
    note = "\n\n".join([
        f"**MHSA-Net reproduction, preset `{preset}`** (results folder `{Path(results_dir).resolve()}`). "
        f"{_warning(study)}",
        "Each child run is one trained cell; its `headline/rank1` and `headline/mAP` are the Rank-1 and mAP "
        "of the first table row that reports it (tag `headline`), `Train/` its loss curves.",
        f"Tables {', '.join(study.table_ids()) or 'none'} (artifacts `tables/`: ours beside the paper's numbers), "
        f"figures {', '.join(study.figure_ids()) or 'none'} (artifacts `figures/`). {done}seeds "
        f"{', '.join(map(str, cfg.get('seeds', [])))}; config digest `{study.digest()}`.",
        f"Rebuild the tables: `snakemake tables --config preset={preset} --forcerun tables`; the report: "
        f"`snakemake --report {Path(str(cfg.get('results_dir', 'results'))) / 'report.html'} "
        f"--config preset={preset}`.",
    ])
    return {"mlflow.source.name": _source(study), NOTE: note}


def parent_params(study: Study) -> dict:
    """What defines the study (MLflow params; the digest changes with any edit of its tables or cells)."""
    cfg = study.config
    return {"preset": cfg["preset"], "data_source": cfg.get("data_source", ""),
            "seeds": ",".join(map(str, cfg.get("seeds", []))), "config_digest": study.digest(),
            "cells": len(study.cells), "tables": ",".join(study.table_ids()),
            "figures": ",".join(study.figure_ids())}


def summary_metrics(study: Study, metrics: dict, frames: dict) -> dict[str, float]:
    """`study/cells_finished`, `study/train_minutes`, and per table (`frames`: tidy tables by id)
    `tables/<N>.rows_with_results` and `tables/<N>.mean_delta` (ours - paper, percentage points, mean
    over the table's own numbers that have both)."""
    seconds = [float((m.get("train") or {}).get("seconds") or 0.0) for m in metrics.values()]
    out = {"study/cells_finished": float(len(metrics)), "study/train_minutes": sum(seconds) / 60.0}
    for tid, df in frames.items():
        own = df[df["own"] == 1]
        out[f"tables/{tid}.rows_with_results"] = float((own.groupby("row", sort=False)["n_seeds"].max() > 0).sum())
        delta = own["delta"].dropna()
        if len(delta):
            out[f"tables/{tid}.mean_delta"] = float(delta.mean())
    return {k: v for k, v in out.items() if math.isfinite(v)}


def cell_updates(study: Study, metrics_files: list, overlays: list):
    """(run id, [overlay], tags, {headline metric: (value, step)}) per cell, for
    mhsa.run.tracking.log_run_artifacts; the run id is the one training recorded in metrics.json."""
    for metrics_file, overlay in zip(metrics_files, overlays, strict=True):
        if Path(metrics_file).parent != Path(overlay).parent:
            raise RuntimeError(f"metrics files and overlays are not in the same cell order: {metrics_file} vs "
                               f"{overlay}")
        m = read_metrics(metrics_file)
        cell = study.cells.get(m.get("cell"))
        run_id = (m.get("train") or {}).get("mlflow_run_id")
        if cell is None:
            yield run_id, [overlay], {}, {}
            continue
        tags, values = {"feeds": "; ".join(cell.feeds), **feed_tags(cell.feeds)}, {}
        row = study.headline(cell.id)
        if row is not None:
            tags["headline"] = f"{row.dataset} / {row.mode} ({_label(row)})"
            step = int((m.get("train") or {}).get("epochs") or 0)
            values = {k: (v, step) for k, v in headline_metrics(m, row.dataset, row.mode).items()}
        yield run_id, [overlay], tags, values


def log_study(uri: str | None, study: Study, results_dir: str | Path, dirs: dict, metrics: dict,
              frames: dict) -> list[str]:
    """The study run's params, summary metrics, description and the tables and figures (`dirs`:
    {artifact path: local dir}); returns the parent run ids (none when the store is down: said once)."""
    study_key = study_tags(study.config["preset"], results_dir)
    tags = {**standard_tags({"git_sha": git_sha()}), **parent_tags(study, results_dir, finished=len(metrics)),
            "mhsa.config_digest": study.digest()}
    return log_study_outputs(uri, study.experiments(), study_key, dirs, params=parent_params(study),
                             metrics=summary_metrics(study, metrics, frames), tags=tags)



def closing_lines(study: Study, results_dir: str, uri: str, experiment_id: str | None, from_env: bool = False,
                  store_problem: str | None = None, report_args: str = "") -> list[str]:
    """Where to look once a run is done (the workflow prints them last; docs/workflow.md "Where to look"):
    the tables and figures folders, the report command and the MLflow runs table (`ui_pointer`)."""
    preset, results = study.config["preset"], str(results_dir).rstrip("/")
    args = report_args or f"--config preset={preset}"
    lines = [f"Done (preset {preset}). Where to look:",
             f"  tables   {results}/tables/   (summary.html shows them all; table_<N>.csv|md|html|tex)",
             f"  figures  {results}/figures/",
             f"  report   snakemake --report {results}/report.html {args}   then open {results}/report.html"]
    if store_problem:
        return lines + [f"  MLflow   the store was not reachable ({store_problem}); once it is up: "
                        f"python -m mhsa sync-mlflow {results}, then snakemake tables {args} --forcerun tables"]
    command, url = ui_pointer(uri, experiment_id, from_env)
    cells = f"the run 'study {preset}' holds the {len(study.cells)} cell runs: its + shows them"
    if command:
        return lines + [f"  MLflow   {command}", f"           then open {url}", f"           ({cells})"]
    return lines + [f"  MLflow   open {url}", f"           ({cells})"]

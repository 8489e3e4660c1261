"""Replay finished cells into the MLflow store: `python -m mhsa sync-mlflow RESULTS_DIR`.

A cell that trained while the store was down (or with tracking off) still has everything in its
run directory: `metrics.json` (config, per-epoch history, final metrics, diagnostics, environment),
`config.yaml` and `attention.png`. This module writes them into the store as the cell's run, the
same params, names, steps, description and `diagnostics.json` artifact `mhsa.run.train` logs (both take
them from mhsa.run.run_metrics). The rows a cell feeds and its headline pair are the tables step's
(`snakemake --forcerun tables` once the store is up). It is idempotent: the cell's run is found by the run id in
metrics.json, else by experiment + tag `cell=<cell id>` (the tag training runs carry), and only
missing params, metric points and artifacts are added, so running it twice changes nothing.
A cell being trained right now (its run dir is locked) is skipped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mhsa.config import flatten
from mhsa.errors import ResultsError
from mhsa.run.cell_lock import is_locked
from mhsa.run.results import corrupt, raise_all, read_metrics
from mhsa.run.run_metrics import DIAGNOSTICS_ARTIFACT, cell_note, effective_config, metric_points
from mhsa.run.tracking import default_uri, init_store

log = logging.getLogger("mhsa.run.sync")

ARTIFACTS = ("config.yaml", "metrics.json", "attention.png")


def _find_run(client, exp_id: str, cell: str, run_id: str | None):
    if run_id:
        try:
            run = client.get_run(run_id)
            if run.info.lifecycle_stage == "active" and run.info.experiment_id == exp_id:
                return run
        except Exception:  # the id is from another store (MLFLOW_TRACKING_URI changed)
            pass
    runs = client.search_runs([exp_id], filter_string=f"tags.cell = '{cell}'",
                              order_by=["attributes.start_time DESC"], max_results=50)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    return (finished or runs or [None])[0]


def _tags(metrics: dict, run_dir: Path) -> dict[str, str]:
    cfg, train = metrics["config"], metrics["train"]
    env = {k: str(v) for k, v in train.items() if isinstance(v, str)}
    return {"cell": metrics["cell"], "dataset": cfg["data"]["dataset"], **env,
            "mlflow.note.content": cell_note(cfg, str(train.get("device", "cpu"))),
            **{k: str(v) for k, v in (cfg.get("tracking", {}).get("tags") or {}).items()},
            "synced_from": str(run_dir.resolve())}


def _add_missing(client, run_id: str, metrics: dict, run_dir: Path) -> int:
    """Log the params, metric points and artifacts the run lacks; returns how many items were added."""
    from mlflow.entities import Metric, Param

    run = client.get_run(run_id)
    have, device = run.data.params, str(metrics["train"].get("device", "cpu"))
    note = "mlflow.note.content" not in run.data.tags  # a run whose tracking failed before it was described
    if note:
        client.set_tag(run_id, "mlflow.note.content", cell_note(metrics["config"], device))
    # As mhsa.run.train: the config as it ran; tracking settings are tags, not hyperparameters.
    ran = effective_config(metrics["config"], device)
    params = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(ran).items())
              if k not in have and not k.startswith("tracking.")]
    now, new = int(time.time() * 1000), []
    for key, steps in metric_points(metrics).items():
        logged = {m.step for m in client.get_metric_history(run_id, key)}
        new += [Metric(key, v, now, step) for step, v in sorted(steps.items()) if step not in logged]
    for i in range(0, len(params), 100):  # log_batch takes at most 100 params / 1000 metrics
        client.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(new), 1000):
        client.log_batch(run_id, metrics=new[i:i + 1000])
    stored = {a.path for a in client.list_artifacts(run_id)}
    files = [run_dir / n for n in ARTIFACTS if (run_dir / n).exists() and n not in stored]
    for f in files:
        client.log_artifact(run_id, str(f))
    diag = DIAGNOSTICS_ARTIFACT not in stored and metrics.get("diagnostics")
    if diag:
        client.log_dict(run_id, diag, DIAGNOSTICS_ARTIFACT)
    return len(params) + len(new) + len(files) + bool(diag) + note


def sync_cell(client, run_dir: Path, exp_ids: dict[str, str], metrics: dict | None = None) -> str:
    metrics = metrics if metrics is not None else finished_cell(run_dir / "metrics.json")
    cell, experiment = metrics["cell"], metrics["config"]["tracking"]["experiment"]
    exp_id = exp_ids[experiment]
    run = _find_run(client, exp_id, cell, metrics["train"].get("mlflow_run_id"))
    if run is None:
        run = client.create_run(exp_id, run_name=cell, tags=_tags(metrics, run_dir))
        created = True
    else:
        created = False
    added = _add_missing(client, run.info.run_id, metrics, run_dir)
    if created or run.info.status != "FINISHED":
        client.set_terminated(run.info.run_id, "FINISHED")
    what = "created" if created else ("completed" if added or run.info.status != "FINISHED" else "up to date")
    return f"{what} (run {run.info.run_id}, {added} item(s) added)"


def finished_cell(path: Path) -> dict:
    """A metrics.json with what a replay needs (its experiment, its epochs, its history); a corrupt one
    is a ResultsError naming the file (mhsa.run.results)."""
    metrics = read_metrics(path)
    try:
        str(metrics["config"]["tracking"]["experiment"])
        int(metrics["train"]["epochs"])
        rows = metrics.get("history", [])
        if not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in rows):
            raise TypeError("history")
    except (KeyError, TypeError, ValueError) as err:
        raise corrupt(path, f"no config.tracking.experiment, train.epochs or per-epoch history ({err})") from None
    return metrics


def sync_results(results_dir: str | Path, tracking_uri: str | None = None) -> dict[str, str]:
    """Replay every finished cell under `results_dir/runs/` into the store; cell -> what was done.

    A corrupt metrics.json does not stop the others: they are replayed first, then one ResultsError
    names every corrupt file (docs/reliability.md, "Corrupt results")."""

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ResultsError(f"results directory {results_dir} does not exist; pass the folder that holds "
                           "runs/<cell>/metrics.json (e.g. results, results/ci)")
    uri = tracking_uri or default_uri(results_dir)
    cells, bad = {}, []
    for path in sorted((results_dir / "runs").glob("*/metrics.json")):
        try:
            cells[path.parent] = finished_cell(path)
        except ResultsError as err:
            bad.append(err)
    done = _sync_cells(uri, cells) if cells else {}
    if not cells and not bad:
        log.warning("no finished cell (runs/*/metrics.json) under %s", results_dir)
    if done and bad:
        log.warning("replayed %d cell(s); %d could not be read", len(done), len(bad))
    raise_all(bad)
    return done


def _sync_cells(uri: str, cells: dict[Path, dict]) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    experiments = sorted({m["config"]["tracking"]["experiment"] for m in cells.values()})
    init_store(uri, experiments)
    client = MlflowClient(tracking_uri=uri)
    exp_ids = {e: client.get_experiment_by_name(e).experiment_id for e in experiments}
    done = {}
    for d, metrics in cells.items():
        if is_locked(d):
            done[d.name] = "skipped (being trained right now)"
            continue
        done[d.name] = sync_cell(client, d, exp_ids, metrics)
        log.info("%s: %s", d.name, done[d.name])
    return done

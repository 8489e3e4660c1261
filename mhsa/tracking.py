"""MLflow tracking of one cell: one run per cell, resumable, tolerant of a missing store.

The store is `MLFLOW_TRACKING_URI` when set (a server, PostgreSQL, ...), else an sqlite
database at an absolute path under results/ (never the deprecated ./mlruns file store).
Several jobs write the sqlite store at once: the database and experiments are created
before parallel jobs start (`init_store`), and every call retries on a locked database.
If the store is unreachable the cell still trains and writes metrics.json, and says so loudly.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mhsa.config import flatten

log = logging.getLogger("mhsa.tracking")

_RETRIES = 12


def default_uri(results_dir: str | Path = "results") -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + str((Path(results_dir) / "mlflow.db").resolve())


def _retry(fn: Callable, *args, **kwargs):
    """sqlite allows one writer: back off and retry when another job holds the lock."""
    for attempt in range(_RETRIES):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # mlflow wraps sqlite errors in several exception types
            transient = "locked" in str(err).lower() or "busy" in str(err).lower()
            if not transient or attempt == _RETRIES - 1:
                raise
            time.sleep(min(0.1 * 2**attempt, 5.0) * (0.5 + random.random()))


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def _artifact_root(uri: str, name: str) -> str | None:
    """Artifacts of an sqlite store go beside the database, not into ./mlruns of whatever cwd."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / name).resolve().as_uri()
    return None


def _experiment_id(client, name: str) -> str:
    exp = _retry(client.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    try:
        return _retry(client.create_experiment, name,
                      artifact_location=_artifact_root(client.tracking_uri, name))
    except Exception:  # another job created it between our two calls
        exp = _retry(client.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


def init_store(uri: str, experiment_names: list[str]) -> None:
    """Create the database (runs its migrations once) and the experiments, before parallel jobs."""
    client = _client(uri)
    for name in experiment_names:
        _experiment_id(client, name)


class CellTracker:
    """One MLflow run per cell. All calls are no-ops after the store failed once (warned loudly)."""

    def __init__(self, uri: str | None, experiment: str, enabled: bool = True):
        self.uri = uri or default_uri()
        self.experiment = experiment
        self.enabled = enabled
        self.run_id: str | None = None
        self._client = None

    def _fail(self, what: str, err: Exception) -> None:
        msg = (f"MLflow tracking store {self.uri!r} failed while {what}: {err}. "
               "The cell keeps training and still writes metrics.json; tracking is off for this run.")
        log.error(msg)
        print(f"WARNING: {msg}", file=sys.stderr, flush=True)
        self.enabled = False

    def _call(self, what: str, fn: Callable, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return _retry(fn, *args, **kwargs)
        except Exception as err:
            self._fail(what, err)
            return None

    def start(self, run_name: str, params: dict, tags: dict, resume_run_id: str | None = None) -> str | None:
        """Open the cell's run, or reopen `resume_run_id` so a resumed cell continues the same run."""
        if not self.enabled:
            return None
        try:
            self._client = _client(self.uri)
            if resume_run_id and self._run_exists(resume_run_id):
                _retry(self._client.update_run, resume_run_id, status="RUNNING")
                self.run_id = resume_run_id
                return self.run_id
            exp_id = _experiment_id(self._client, self.experiment)
            run = _retry(self._client.create_run, exp_id, run_name=run_name,
                         tags={k: str(v)[:5000] for k, v in tags.items()})
            self.run_id = run.info.run_id
        except Exception as err:
            self._fail("starting the run", err)
            return None
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(params).items())]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params
            self._call("logging params", self._client.log_batch, self.run_id, params=items[i:i + 100])
        return self.run_id

    def _run_exists(self, run_id: str) -> bool:
        """False when the store has no such run (e.g. MLFLOW_TRACKING_URI changed since the crash)."""
        try:
            run = _retry(self._client.get_run, run_id)
        except Exception as err:
            if "locked" in str(err).lower() or "busy" in str(err).lower():
                raise
            log.warning("MLflow run %s is not in %s: starting a new run", run_id, self.uri)
            return False
        if run.info.lifecycle_stage != "active":
            log.warning("MLflow run %s was deleted: starting a new run", run_id)
            return False
        return True

    def log_metrics(self, metrics: dict, step: int) -> None:
        if not self.enabled or self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # MLflow names allow [A-Za-z0-9_-. :/] only: "mAP@50" is logged as "mAP_at_50"
        items = [Metric(k.replace("@", "_at_"), float(v), now, step) for k, v in metrics.items() if v == v]
        self._call("logging metrics", self._client.log_batch, self.run_id, metrics=items)

    def log_artifact(self, path: str | Path) -> None:
        if self.enabled and self.run_id is not None and Path(path).exists():
            self._call(f"logging artifact {path}", self._client.log_artifact, self.run_id, str(path))

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id is not None:
            self._call("closing the run", self._client.set_terminated, self.run_id, status)


def log_run_artifacts(uri: str | None, runs) -> int:
    """Attach files and tags to finished runs: `runs` yields (run_id, paths, tags) (the figures step
    logs each cell's attention overlay and the rows it feeds). One client for all runs. Runs absent
    from the store are skipped and named in one warning; any other store failure is warned about
    once and the rest is skipped (a down server would cost its HTTP retries per call): figures
    never fail because tracking does. Returns the number of runs updated."""
    uri = uri or default_uri()
    done, missing = 0, []
    try:
        from mlflow.entities import RunTag
        from mlflow.exceptions import MlflowException

        client = _client(uri)
        for run_id, paths, tags in runs:
            if not run_id:
                continue
            try:
                if tags:
                    _retry(client.log_batch, run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])
                for path in paths:
                    _retry(client.log_artifact, run_id, str(path))
            except MlflowException as err:
                if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                missing.append(run_id)
                continue
            done += 1
    except Exception as err:
        msg = (f"MLflow tracking store {uri!r} failed while logging figures: {err}. "
               f"{done} run(s) updated; the figures are written, the remaining runs are not updated.")
        log.error(msg)
        print(f"WARNING: {msg}", file=sys.stderr, flush=True)
    if missing:
        log.warning("%d run(s) are not in %s (another store since training?), not updated: %s",
                    len(missing), uri, ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    return done

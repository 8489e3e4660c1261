"""MLflow tracking of one cell: one run per cell, resumable, tolerant of a missing store.

The store is `MLFLOW_TRACKING_URI` when set (a tracking server, PostgreSQL, ...), else an sqlite
database at an absolute path under results/ (never the deprecated ./mlruns file store).

Conventions (docs/workflow.md, "MLflow"):
- every run carries MLflow's standard tags (`mlflow.source.git.commit`, `mlflow.source.name`,
  `mlflow.user`), `cell=<cell id>` (how `sync-mlflow` and a resumed cell find it), `mhsa.run_key`
  (cell + weights digest + checkpoint dir) and `slurm_job_id` when it runs under SLURM;
- a study (preset + results dir) is one parent run; each cell is a child (`mlflow.parentRunId`)
  with one tag per table/figure it feeds (`table.V = "1"`, `figure.9 = "1"`);
- a new sqlite store is created under a file lock beside the database, so concurrent first use
  runs MLflow's schema migration once; every later call retries while sqlite is busy.

Policy for a store that cannot be reached: it is checked once, with a timeout of seconds; the cell
then trains without tracking, says so once, and `python -m mhsa sync-mlflow RESULTS_DIR` replays
finished cells into the store later.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import random
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from mhsa.config import flatten
from mhsa.io import held

log = logging.getLogger("mhsa.run.tracking")

_RETRIES = 12
CHECK_TIMEOUT_S = 5.0
SYNC_HINT = "python -m mhsa sync-mlflow RESULTS_DIR"
SERVER_HINT = (
    "start a tracking server on a machine the compute nodes reach, e.g.\n"
    "  mlflow server --backend-store-uri postgresql://USER:PASSWORD@DBHOST:5432/mlflow \\\n"
    "      --artifacts-destination /shared/mlflow-artifacts --host 0.0.0.0 --port 5000\n"
    "and export MLFLOW_TRACKING_URI=http://<that host>:5000 before running snakemake "
    "(docs/workflow.md, 'Running on a SLURM cluster')"
)
_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
_OPEN_STATUSES = ("RUNNING", "SCHEDULED", "KILLED", "FAILED")


def mlflow_name(key: str) -> str:
    """MLflow names allow [A-Za-z0-9_-. :/] only: "mAP@50" is logged as "mAP_at_50"."""
    return key.replace("@", "_at_")


# ------------------------------------------------------------------------------- the store
def store_failed(uri: str, what: str, err, consequence: str) -> None:
    """The one policy for a tracking store that fails: training and tables never stop for it; one
    WARNING line on stderr (and in the log) says what failed, what goes on, and how to catch up."""
    msg = (f"MLflow tracking store {uri!r} failed while {what}: {err}. {consequence}; nothing is lost: "
           f"`{SYNC_HINT}` (or `snakemake --forcerun tables` for the tables) replays it once the store is up.")
    log.warning(msg)
    print(f"WARNING: {msg}", file=sys.stderr, flush=True)


def default_uri(results_dir: str | Path = "results") -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + str((Path(results_dir) / "mlflow.db").resolve())


def uri_scheme(uri: str) -> str:
    """'sqlite', 'postgresql', 'http', ... ('postgresql+psycopg2' -> 'postgresql'); '' for a path."""
    scheme = urllib.parse.urlsplit(uri).scheme.split("+")[0].lower()
    return "" if len(scheme) <= 1 else scheme  # "C:\\..." is a path, not a scheme


def shared_store_problem(uri: str | None) -> str | None:
    """Why `uri` cannot serve jobs on many machines (None when it can): sqlite and file stores
    on a shared file system are not safe for concurrent writers on several nodes."""
    if not uri:
        return "MLFLOW_TRACKING_URI is not set (the default is an sqlite file under results/)"
    if uri_scheme(uri) in ("", "file", "sqlite"):
        return f"MLFLOW_TRACKING_URI={uri!r} is a local file/sqlite store"
    return None


def is_busy(err: BaseException) -> bool:
    """sqlite's "database is locked"/"busy", however mlflow and SQLAlchemy wrap it."""
    text = str(err).lower()
    return "locked" in text or "busy" in text


def _retry(fn: Callable, *args, **kwargs):
    """sqlite allows one writer: back off and retry when another job holds the lock."""
    for attempt in range(_RETRIES):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # mlflow wraps sqlite errors in several exception types
            if not is_busy(err) or attempt == _RETRIES - 1:
                raise
            time.sleep(min(0.1 * 2**attempt, 5.0) * (0.5 + random.random()))


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold `<db>.lock` (sqlite stores): MLflow's schema migration of a new database is not safe
    against a second process doing the same, so the first opener creates it while others wait."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    with held(db.with_name(db.name + ".lock")):
        yield


def check_store(uri: str, timeout: float = CHECK_TIMEOUT_S) -> str | None:
    """One quick reachability check (seconds, no retries); the reason when the store is down."""
    scheme = uri_scheme(uri)
    parts = urllib.parse.urlsplit(uri)
    try:
        if scheme in ("http", "https"):
            try:
                urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
            except urllib.error.HTTPError:
                pass  # the server answered: it is up (a store without /health)
        elif scheme in _DB_PORTS:
            socket.create_connection((parts.hostname or "localhost", parts.port or _DB_PORTS[scheme]),
                                     timeout=timeout).close()
        elif scheme == "sqlite":
            db = _sqlite_path(uri)
            if db is not None:
                db.parent.mkdir(parents=True, exist_ok=True)
                if not os.access(db.parent, os.W_OK):
                    return f"{db.parent} is not writable"
    except (OSError, ValueError) as err:
        return f"{type(err).__name__}: {getattr(err, 'reason', err)}"
    return None


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    if uri_scheme(uri) in ("http", "https"):
        # A server that dies mid-run costs seconds per call, not mlflow's minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    return MlflowClient(tracking_uri=uri)


def artifact_root(uri: str, experiment: str, results_dir: str | Path = "results") -> str | None:
    """Where a new experiment's artifacts go. sqlite: beside the database; PostgreSQL/MySQL used
    directly: <results_dir>/mlartifacts (absolute); a server (http) decides itself (its
    --artifacts-destination). Never None for a database: MLflow would fall back to ./mlruns of
    whatever directory the job happens to run in."""
    db = _sqlite_path(uri)
    if db is not None:
        return (db.parent / "mlartifacts" / experiment).resolve().as_uri()
    if uri_scheme(uri) in _DB_PORTS:
        return (Path(results_dir) / "mlartifacts" / experiment).resolve().as_uri()
    return None


def _experiment_id(client, name: str, results_dir: str | Path = "results") -> str:
    exp = _retry(client.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    try:
        return _retry(client.create_experiment, name,
                      artifact_location=artifact_root(client.tracking_uri, name, results_dir))
    except Exception:  # another job created it between our two calls
        exp = _retry(client.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


def open_store(uri: str, experiment: str, results_dir: str | Path = "results"):
    """(client, experiment id), creating the database and experiment under the store lock."""
    with store_lock(uri):
        client = _client(uri)
        return client, _experiment_id(client, experiment, results_dir)


# -------------------------------------------------------------------------------- tags
def study_tags(preset: str, results_dir: str | Path) -> dict:
    """Tags naming one study (a preset's cells under one results dir): its parent run's key."""
    where = str(Path(results_dir).resolve())
    key = hashlib.sha1(f"{preset}\n{where}".encode()).hexdigest()[:12]
    return {"mhsa.study": key, "mhsa.preset": str(preset), "mhsa.results_dir": where}


def feed_tags(feeds: list[str]) -> dict:
    """"Table V / row" -> {"table.V": "1"}, "Fig. 9 / row" -> {"figure.9": "1"} (search_runs-able)."""
    tags = {}
    for label in feeds:
        head = label.split(" / ", 1)[0].strip()
        kind, _, ident = head.partition(" ")
        if ident:
            tags[f"{'table' if kind == 'Table' else 'figure'}.{ident.strip()}"] = "1"
    return tags


def run_key(cfg, ckpt_dir: str | Path) -> str:
    """Cell + weights digest + checkpoint dir: the identity a resumed cell finds its run by."""
    from mhsa.config import weights_digest

    text = f"{cfg.name}\n{weights_digest(cfg)}\n{Path(ckpt_dir).resolve()}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def standard_tags(tags: dict) -> dict:
    """MLflow's standard tags and the scheduler's job id (SLURM_JOB_ID, CUDA_VISIBLE_DEVICES)."""
    argv0 = Path(sys.argv[0] if sys.argv and sys.argv[0] else "python")
    out = {
        "mlflow.user": _user(),
        "mlflow.source.type": "JOB" if os.environ.get("SLURM_JOB_ID") else "LOCAL",
        "mlflow.source.name": "python -m mhsa" if argv0.name == "__main__.py" else argv0.name,
    }
    sha = str(tags.get("git_sha", "")).removesuffix("-dirty")
    if sha and sha != "unknown":
        out["mlflow.source.git.commit"] = sha
    for var, tag in (("SLURM_JOB_ID", "slurm_job_id"), ("CUDA_VISIBLE_DEVICES", "cuda_visible_devices")):
        if os.environ.get(var) is not None:
            out[tag] = os.environ[var]
    return out


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


# --------------------------------------------------------------------- runs by their tags
def find_runs(client, exp_id: str, tags: dict, statuses: tuple | None = None) -> list:
    """Active runs of the experiment carrying all `tags`, newest first."""
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = _retry(client.search_runs, [exp_id], filter_string=where, max_results=1000,
                  order_by=["attributes.start_time DESC"])
    return [r for r in runs if statuses is None or r.info.status in statuses]


NOTE = "mlflow.note.content"  # the description of a run or an experiment that MLflow's UI shows


def study_run_name(study: dict) -> str:
    return f"study {study.get('mhsa.preset', '')}".strip()


def study_parent(client, exp_id: str, study: dict, create: bool = False, tags: dict | None = None) -> str | None:
    """The study's parent run id (created when asked and absent, with `tags` beside the study's own and
    MLflow's standard ones: the git commit, the user and `tags`' source name and description)."""
    runs = find_runs(client, exp_id, {"mhsa.study": study["mhsa.study"], "mhsa.role": "study"})
    if runs:
        return runs[-1].info.run_id  # the first one created, should two ever exist
    if not create:
        return None
    tags = {**study, "mhsa.role": "study", **standard_tags({"git_sha": git_sha()}), **(tags or {})}
    run = _retry(client.create_run, exp_id, run_name=study_run_name(study), tags=tags)
    return run.info.run_id


def git_sha() -> str:
    from mhsa.run.provenance import git_sha as sha

    return sha()


def init_store(uri: str, experiment_names: list[str], study: dict | None = None,
               results_dir: str | Path = "results", parent_tags: dict | None = None,
               experiment_note: str | None = None) -> dict:
    """Create the database (its migrations once), the experiments (with `experiment_note` as their
    description) and each one's study parent run (`parent_tags`: study_parent) before parallel jobs
    start. Returns {experiment: (experiment id, parent run id or None)}."""
    out = {}
    with store_lock(uri):
        client = _client(uri)
        for name in experiment_names:
            exp_id = _experiment_id(client, name, results_dir)
            if experiment_note:
                _retry(client.set_experiment_tag, exp_id, NOTE, experiment_note)
            out[name] = (exp_id, study_parent(client, exp_id, study, create=True, tags=parent_tags) if study else None)
    return out


def runs_table_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table in MLflow's UI, in its "Model training" mode: MLflow 3 opens the
    GenAI mode (an empty traces overview) unless the URL asks for `workflowType=machine_learning`."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


UI_PORT = 5000  # `mlflow ui`'s default, written out so that the command and the URL agree


def ui_pointer(uri: str, experiment_id: str | None, from_env: bool = False) -> list[str]:
    """How to open a store's runs table: (the command to start the UI, when one is needed) and the URL.

    A tracking server (http/https) is its own UI. Any other store is opened with `mlflow ui` on this
    machine; a URI that came from MLFLOW_TRACKING_URI (`from_env`) is referred to by the variable, not
    echoed (a database URI may hold a password)."""
    if uri_scheme(uri) in ("http", "https"):
        return ["", runs_table_url(uri, experiment_id) if experiment_id else uri]
    store = '"$MLFLOW_TRACKING_URI"' if from_env and uri_scheme(uri) != "sqlite" else uri
    base = f"http://127.0.0.1:{UI_PORT}"
    return [f"mlflow ui --backend-store-uri {store} --port {UI_PORT}",
            runs_table_url(base, experiment_id) if experiment_id else base]


def experiment_ids(uri: str, names: list[str]) -> dict:
    """{experiment name: id} of those that exist in the store ({} when it cannot be read)."""
    try:
        if check_store(uri):
            return {}
        client = _client(uri)
        exps = {n: _retry(client.get_experiment_by_name, n) for n in names}
        return {n: e.experiment_id for n, e in exps.items() if e is not None}
    except Exception as err:  # a pointer for the user: never fail a finished run for it
        log.warning("could not read the experiments of %s: %s", uri, err)
        return {}


def dataset_inputs(params: dict) -> list:
    """The cell's training set and test sets as MLflow dataset inputs (name, root, digest)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    data, targets = params.get("data") or {}, (params.get("eval") or {}).get("targets") or {}
    sets = [(data.get("dataset"), data.get("root"), "training")]
    sets += [(n, t.get("root"), "evaluation") for n, t in sorted(targets.items()) if n != data.get("dataset")]
    out = []
    for name, root, context in sets:
        if not name or not root:
            continue
        where = str(Path(root).resolve())
        digest = hashlib.sha1(f"{name}\n{where}".encode()).hexdigest()[:16]
        out.append(DatasetInput(Dataset(name, digest, "local", json.dumps({"uri": where})),
                                tags=[InputTag("mlflow.data.context", context)]))
    return out


# ----------------------------------------------------------------------------- one cell
class CellTracker:
    """One MLflow run per cell. All calls are no-ops after the store failed once (said once)."""

    def __init__(self, uri: str | None, experiment: str, enabled: bool = True):
        self.uri = uri or default_uri()
        self.experiment = experiment
        self.enabled = enabled
        self.run_id: str | None = None
        self._client = None

    def _fail(self, what: str, err: Exception | str) -> None:
        store_failed(self.uri, what, err, "The cell keeps training and writes metrics.json; tracking is off "
                     "for this run")
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
        """Open the cell's run: reopen `resume_run_id`, else adopt an unfinished run with the same
        `cell` and `mhsa.run_key` tags (a kill between creating the run and recording its id),
        else create one. Tags are (re)set each time (a resumed job has a new SLURM job id)."""
        if not self.enabled:
            return None
        problem = check_store(self.uri)
        if problem:
            self._fail("connecting", f"not reachable ({problem})")
            return None
        try:
            self._client, exp_id = open_store(self.uri, self.experiment)
            tags = self._all_tags(exp_id, {k: str(v)[:5000] for k, v in tags.items()})
            self.run_id, fresh = self._reopen(exp_id, run_name, tags, resume_run_id)
        except Exception as err:
            self._fail("starting the run", err)
            return None
        from mlflow.entities import Param

        if fresh:
            # Tracking settings are tags, not hyperparameters (and may change between resumes).
            items = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(params).items())
                     if not k.startswith("tracking.")]
            for i in range(0, len(items), 100):  # log_batch takes at most 100 params
                self._call("logging params", self._client.log_batch, self.run_id, params=items[i:i + 100])
        inputs = dataset_inputs(params)
        if inputs:
            self._call("logging inputs", self._client.log_inputs, self.run_id, datasets=inputs)
        return self.run_id

    def _all_tags(self, exp_id: str, tags: dict) -> dict:
        tags = {**standard_tags(tags), **tags}
        if "mhsa.study" in tags and "mlflow.parentRunId" not in tags:
            parent = study_parent(self._client, exp_id, {"mhsa.study": tags["mhsa.study"]})
            if parent:
                tags["mlflow.parentRunId"] = parent
        return tags

    def _reopen(self, exp_id: str, run_name: str, tags: dict, resume_run_id: str | None):
        """(run id, whether params still need logging)."""
        from mlflow.entities import RunTag

        run_id, fresh = None, False
        if resume_run_id and self._run_exists(resume_run_id):
            run_id = resume_run_id
        elif "cell" in tags and "mhsa.run_key" in tags:
            found = find_runs(self._client, exp_id, {"cell": tags["cell"], "mhsa.run_key": tags["mhsa.run_key"]},
                              statuses=_OPEN_STATUSES)
            if found:
                run_id, fresh = found[0].info.run_id, True  # params may be missing: log them (same values)
                log.warning("continuing MLflow run %s of cell %s (its id was not recorded)", run_id, tags["cell"])
        if run_id is None:
            run = _retry(self._client.create_run, exp_id, run_name=run_name, tags=tags)
            return run.info.run_id, True
        _retry(self._client.update_run, run_id, status="RUNNING")
        _retry(self._client.log_batch, run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        return run_id, fresh

    def _run_exists(self, run_id: str) -> bool:
        """False when the store has no such run (e.g. MLFLOW_TRACKING_URI changed since the crash)."""
        try:
            run = _retry(self._client.get_run, run_id)
        except Exception as err:
            if is_busy(err):
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
        items = [Metric(mlflow_name(k), float(v), now, step) for k, v in metrics.items() if v == v]
        self._call("logging metrics", self._client.log_batch, self.run_id, metrics=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled and self.run_id is not None and Path(path).exists():
            self._call(f"logging artifact {path}", self._client.log_artifact, self.run_id, str(path),
                       artifact_path)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        if self.enabled and self.run_id is not None:
            self._call(f"logging artifact {artifact_file}", self._client.log_dict, self.run_id, data, artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id is not None:
            self._call("closing the run", self._client.set_terminated, self.run_id, status)


def log_run_artifacts(uri: str | None, runs) -> int:
    """Attach files, tags and metrics to finished runs: `runs` yields (run_id, paths, tags) or (run_id,
    paths, tags, {metric: (value, step)}) (the figures step logs each cell's attention overlay, the rows it
    feeds and its headline pair). One client for all runs. Runs absent
    from the store are skipped and named in one warning; any other store failure is warned about
    once and the rest is skipped (a down server would cost its HTTP retries per call): figures
    never fail because tracking does. Returns the number of runs updated."""
    uri = uri or default_uri()
    done, missing = 0, []
    try:
        from mlflow.entities import Metric, RunTag
        from mlflow.exceptions import MlflowException

        client = _client(uri)
        for run_id, paths, tags, *rest in runs:
            if not run_id:
                continue
            now = int(time.time() * 1000)
            values = rest[0] if rest else {}
            metrics = [Metric(mlflow_name(k), float(v), now, step) for k, (v, step) in values.items()]
            try:
                if tags or metrics:
                    _retry(client.log_batch, run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()],
                           metrics=metrics)
                for path in paths:
                    _retry(client.log_artifact, run_id, str(path))
            except MlflowException as err:
                if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                missing.append(run_id)
                continue
            done += 1
    except Exception as err:
        store_failed(uri, "logging figures", err, f"The figures are written; {done} run(s) were updated, the "
                     "others not")
    if missing:
        log.warning("%d run(s) are not in %s (another store since training?), not updated: %s",
                    len(missing), uri, ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    return done


def log_job_log(uri: str | None, run_id: str | None, path: str | Path) -> None:
    """Attach a job's log file (the Snakemake log) to the cell's run, under logs/."""
    uri = uri or default_uri()
    if not run_id or not Path(path).exists():
        return
    try:
        problem = check_store(uri)
        if problem:
            raise ConnectionError(f"not reachable ({problem})")
        _retry(_client(uri).log_artifact, run_id, str(path), "logs")
    except Exception as err:  # the cell is finished: a log upload must not fail it
        store_failed(uri, f"attaching the job log {path} to run {run_id}", err, "The cell is finished")


def log_study_outputs(uri: str | None, experiments: list[str], study: dict, dirs: dict, params: dict | None = None,
                      metrics: dict | None = None, tags: dict | None = None) -> list[str]:
    """Log the tables and figures (dirs: {artifact path: local dir}), `params`, `metrics` and `tags` (the
    description, source, ...) to each study parent run and mark it FINISHED. MLflow params are written
    once: a param the run already holds with another value (the config changed since) keeps its first
    value, and the change is said in the log (`tags` carry the current ones). Returns the parent run ids;
    a store that is down is reported, not raised."""
    from mlflow.entities import Metric, Param, RunTag

    uri = uri or default_uri(study.get("mhsa.results_dir", "results"))
    parents = []
    try:
        problem = check_store(uri)
        if problem:
            raise ConnectionError(f"not reachable ({problem})")
        client, _ = open_store(uri, experiments[0], study.get("mhsa.results_dir", "results"))
        now = int(time.time() * 1000)
        for name in experiments:
            exp_id = _experiment_id(client, name, study.get("mhsa.results_dir", "results"))
            parent = study_parent(client, exp_id, study, create=True, tags=tags)
            have = _retry(client.get_run, parent).data.params
            changed = {k: (have[k], str(v)) for k, v in (params or {}).items() if k in have and have[k] != str(v)}
            if changed:
                log.warning("study run %s keeps its first params (MLflow params are written once); now: %s", parent,
                            ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
            _retry(client.log_batch, parent,
                   params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items() if k not in have],
                   metrics=[Metric(mlflow_name(k), float(v), now, 0) for k, v in (metrics or {}).items() if v == v],
                   tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()])
            for artifact_path, local in dirs.items():
                if Path(local).is_dir() and any(Path(local).iterdir()):
                    _retry(client.log_artifacts, parent, str(local), artifact_path)
            _retry(client.set_terminated, parent, "FINISHED")
            parents.append(parent)
    except Exception as err:  # the tables are built: MLflow mirrors them, it must not fail them
        store_failed(uri, "logging the tables and figures", err, "The tables and figures are written")
    return parents

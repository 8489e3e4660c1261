"""MLflow conventions of mhsa.run.tracking: store creation under a lock, quick store check, tags,
study parent run, one run per cell after a kill before its id was recorded; the job env file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mhsa.run import tracking

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]


def client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs_of(uri, experiment, where=""):
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], filter_string=where, max_results=1000)


# ------------------------------------------------------------------------------ pure rules
def test_feed_labels_become_one_tag_per_table_and_figure():
    feeds = ["Table V / MHSA-Net (K=8)", "Table I / MHSA-Net", "Fig. 9 / K=8", "Table V / other row"]
    assert tracking.feed_tags(feeds) == {"table.V": "1", "table.I": "1", "figure.9": "1"}
    assert tracking.feed_tags([]) == {}


@pytest.mark.parametrize("uri, refused", [
    (None, True), ("", True), ("sqlite:////shared/mlflow.db", True), ("file:///shared/mlruns", True),
    ("/shared/mlruns", True), ("http://login1:5000", False), ("https://mlflow.example.org", False),
    ("postgresql://u:p@db:5432/mlflow", False), ("postgresql+psycopg2://db/mlflow", False),
])
def test_cluster_runs_refuse_file_and_sqlite_stores(uri, refused):
    assert (tracking.shared_store_problem(uri) is not None) == refused


def test_artifacts_follow_the_store_never_the_cwd(tmp_path):
    db = tmp_path / "r" / "mlflow.db"
    assert tracking.artifact_root(f"sqlite:///{db}", "e") == (tmp_path / "r" / "mlartifacts" / "e").as_uri()
    pg = tracking.artifact_root("postgresql://db/mlflow", "e", results_dir=tmp_path / "res")
    assert pg == (tmp_path / "res" / "mlartifacts" / "e").as_uri()
    assert tracking.artifact_root("http://host:5000", "e") is None  # the server's --artifacts-destination


def test_busy_detection_matches_sqlite_lock_messages():
    assert tracking.is_busy(Exception("(sqlite3.OperationalError) database is locked"))
    assert tracking.is_busy(RuntimeError("SQLITE_BUSY: database busy"))
    assert not tracking.is_busy(ValueError("no such table: experiments"))


def test_a_down_server_is_detected_in_seconds():
    port = _closed_port()
    t0 = time.monotonic()
    assert tracking.check_store(f"http://127.0.0.1:{port}") is not None
    assert tracking.check_store(f"postgresql://u@127.0.0.1:{port}/db") is not None
    assert time.monotonic() - t0 < 2 * tracking.CHECK_TIMEOUT_S


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_tracker_on_a_down_server_trains_without_tracking_and_says_so_once(capsys):
    t = tracking.CellTracker(f"http://127.0.0.1:{_closed_port()}", "e")
    t0 = time.monotonic()
    assert t.start("cell", {"seed": 0}, {"cell": "c"}) is None
    t.log_metrics({"loss": 1.0}, step=1)
    t.finish()
    assert time.monotonic() - t0 < 2 * tracking.CHECK_TIMEOUT_S
    err = capsys.readouterr().err
    assert err.count("WARNING: MLflow tracking store") == 1 and "sync-mlflow" in err


# ------------------------------------------------------------------ runs, parents and tags
def test_study_parent_child_tags_and_table_search(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = tracking.study_tags("ci", tmp_path / "results")
    parents = tracking.init_store(uri, ["mhsa-ci"], study=study)
    assert tracking.init_store(uri, ["mhsa-ci"], study=study) == parents  # idempotent: one parent
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    cells = {"a": ["Table II / x", "Table IV / y"], "b": ["Table II / z"], "c": ["Fig. 9 / K=8"]}
    for cell, feeds in cells.items():
        t = tracking.CellTracker(uri, "mhsa-ci")
        tags = {"cell": cell, "git_sha": "abc123-dirty", **study, **tracking.feed_tags(feeds)}
        t.start(cell, {"seed": 0, "data": {"dataset": "market1501", "root": str(tmp_path / "m")}}, tags)
        t.finish()
    by_table = {r.data.tags["cell"] for r in runs_of(uri, "mhsa-ci", "tags.`table.II` = '1'")}
    assert by_table == {"a", "b"}
    assert {r.data.tags["cell"] for r in runs_of(uri, "mhsa-ci", "tags.`figure.9` = '1'")} == {"c"}
    children = runs_of(uri, "mhsa-ci", "tags.cell != ''")
    assert len(children) == 3
    for run in children:
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parents["mhsa-ci"][1]
        assert tags["mlflow.source.git.commit"] == "abc123"
        assert tags["slurm_job_id"] == "41" and tags["cuda_visible_devices"] == "1"
        assert tags["mlflow.user"] and tags["mlflow.source.name"]
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["market1501"]


def test_kill_before_the_run_id_is_recorded_leaves_one_finished_run(tmp_path, monkeypatch):
    """A job killed right after create_run: the rerun adopts that run (by cell + run key), updates
    its job tags, and the cell ends with exactly one run, FINISHED."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tags = {"cell": "c1", "mhsa.run_key": "k" * 16}
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    first = tracking.CellTracker(uri, "e").start("c1", {"seed": 0, "tracking": {"tags": {"x": 1}}}, tags)
    # ... killed here: nothing recorded the id, the run stays RUNNING
    monkeypatch.setenv("SLURM_JOB_ID", "8")
    again = tracking.CellTracker(uri, "e")
    assert again.start("c1", {"seed": 0, "tracking": {"tags": {"x": 2}}}, tags) == first
    again.finish()
    runs = runs_of(uri, "e")
    assert [(r.info.run_id, r.info.status) for r in runs] == [(first, "FINISHED")]
    assert runs[0].data.tags["slurm_job_id"] == "8"
    assert runs[0].data.params == {"seed": "0"}  # tracking settings are tags, not params
    # A finished run is never adopted: training the cell again from scratch is a new run.
    other = tracking.CellTracker(uri, "e").start("c1", {"seed": 0}, tags)
    assert other != first and len(runs_of(uri, "e")) == 2


_OPEN_AND_LOG = """
import sys
from mhsa.run.tracking import CellTracker
t = CellTracker(sys.argv[1], "race")
assert t.start(sys.argv[2], {"seed": 0}, {"cell": sys.argv[2]}) is not None, "store failed"
t.log_metrics({"loss": 1.0}, step=1)
t.finish()
"""


@pytest.mark.parametrize("attempt", [0, 1])
def test_concurrent_first_use_of_a_new_sqlite_store_records_every_run(tmp_path, attempt):
    """Four processes open a store that does not exist yet: the schema is created once (under
    the file lock beside the database) and all four runs are recorded."""
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AND_LOG, uri, f"cell{i}"], cwd=REPO,
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert all("WARNING" not in e for e in errors), errors
    runs = runs_of(uri, "race")
    assert sorted(r.data.tags["cell"] for r in runs) == [f"cell{i}" for i in range(4)]
    assert {r.info.status for r in runs} == {"FINISHED"}


TINY_CELL = ["--set", "optim.epochs=1", "--set", "data.synthetic.num_ids=4", "--set", "data.synthetic.images_per_id=4",
             "--set", "data.synthetic.height=32", "--set", "data.synthetic.width=16", "--set", "data.height=32",
             "--set", "data.width=16", "--set", "data.p=2", "--set", "data.k=2", "--set", "model.num_heads=2",
             "--set", "checkpoint_every=0"]


@pytest.mark.parametrize("attempt", [0, 1, 2])
def test_four_cli_cells_on_a_fresh_store_and_a_fresh_data_root(tmp_path, attempt):
    """The issue's repro: four `python -m mhsa train` of the smoke config started together, with a
    store and a synthetic data root that do not exist yet. One process generates the data set while
    the others wait for it (mhsa.data.synthetic's lock), the store is created once; every cell ends
    with metrics.json and exactly one FINISHED run, and the store stays readable."""
    uri, data = f"sqlite:///{tmp_path / 'fresh.db'}", str(tmp_path / "synthetic" / "market1501")
    where = ["--set", f"data.root={data}", "--set", f"eval.targets.market1501.root={data}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)}
    out = [tmp_path / "results" / "runs" / f"o{i}" for i in range(4)]
    procs = [subprocess.Popen([sys.executable, "-m", "mhsa", "train", "mhsa/configs/smoke.yaml", *TINY_CELL,
                               *where, "--out", str(out[i])], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(4)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert all("WARNING" not in e for e in errors), errors  # tracking never switched itself off
    runs = runs_of(uri, "smoke")
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4
    recorded = {json.loads((o / "metrics.json").read_text())["train"]["mlflow_run_id"] for o in out}
    assert recorded == {r.info.run_id for r in runs}  # one run per cell, each the one its cell names
    assert all(r.data.metrics.get("eval/market1501/global/mAP") is not None for r in runs)
    if attempt == 0:  # training logged every param, point and file that sync-mlflow would replay
        from mhsa.run.sync import sync_results

        done = sync_results(tmp_path / "results", uri)
        assert all(v.startswith("up to date") and "0 item(s)" in v for v in done.values()), done


# ------------------------------------------------------------------------ job environment
def _pins(requirements):
    return {re.split(r"[<>=!~ ]", r, maxsplit=1)[0].lower(): r.replace(" ", "") for r in requirements}


def test_job_conda_env_pins_equal_pyproject_and_need_no_repo_install():
    env = yaml.safe_load((REPO / "envs" / "mhsa.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert not any(p.startswith("-e") or p.strip() in (".", "..") for p in pip)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"] + project["optional-dependencies"]["tracking"])
    wanted.pop("snakemake")  # only the submitting process needs snakemake
    assert _pins(pip) == wanted
    assert "snakemake" not in " ".join(pip)
    assert any(str(d).startswith("python=") for d in env["dependencies"])


def test_extras_declare_the_slurm_plugin_and_postgres_driver():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("snakemake-executor-plugin-slurm") for r in extras["slurm"])
    assert any(r.startswith("psycopg2-binary") for r in extras["tracking"])


# ------------------------------------------------------------------ what a person opens
def test_ui_pointer_opens_the_runs_table_in_model_training_mode():
    """MLflow 3 opens an experiment in its GenAI mode (an empty traces overview) unless the URL asks for
    workflowType=machine_learning; the command and the URL name the same port."""
    db = "sqlite:////abs/results/ci/mlflow.db"
    command, url = tracking.ui_pointer(db, "3")
    assert command == f"mlflow ui --backend-store-uri {db} --port {tracking.UI_PORT}"
    assert url == f"http://127.0.0.1:{tracking.UI_PORT}/#/experiments/3/runs?workflowType=machine_learning"
    assert tracking.ui_pointer("http://host:5000/", "7") == [
        "", "http://host:5000/#/experiments/7/runs?workflowType=machine_learning"]
    # a database URI from the environment may hold a password: referred to, never echoed
    command, _ = tracking.ui_pointer("postgresql://u:secret@db/mlflow", "1", from_env=True)
    assert "secret" not in command and '"$MLFLOW_TRACKING_URI"' in command
    assert tracking.ui_pointer(db, None)[1] == f"http://127.0.0.1:{tracking.UI_PORT}"


def test_study_run_is_described_and_keeps_its_first_params(tmp_path, caplog):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = tracking.study_tags("ci", tmp_path / "results")
    made = tracking.init_store(uri, ["mhsa-ci"], study=study, experiment_note="what the runs are",
                               parent_tags={"mlflow.source.name": "Snakefile: x", tracking.NOTE: "first"})
    exp_id, parent = made["mhsa-ci"]
    client = MlflowClient(uri)
    assert client.get_experiment(exp_id).tags[tracking.NOTE] == "what the runs are"
    tags = client.get_run(parent).data.tags
    assert tags["mlflow.source.name"] == "Snakefile: x" and tags[tracking.NOTE] == "first"
    assert tags["mlflow.source.git.commit"]  # the code's commit (this checkout is a git repository)
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "table_2.csv").write_text("row\n")
    for digest, cells in (("aaa", 12), ("bbb", 13)):
        with caplog.at_level("WARNING", logger="mhsa.run.tracking"):
            got = tracking.log_study_outputs(uri, ["mhsa-ci"], study, {"tables": tmp_path / "tables"},
                                             params={"preset": "ci", "config_digest": digest},
                                             metrics={"study/cells_finished": cells}, tags={tracking.NOTE: digest})
        assert got == [parent]
    run = client.get_run(parent)
    assert run.data.params == {"preset": "ci", "config_digest": "aaa"}  # MLflow params are written once
    assert "config_digest aaa -> bbb" in caplog.text
    assert run.data.metrics["study/cells_finished"] == 13 and run.data.tags[tracking.NOTE] == "bbb"
    assert run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(parent, "tables")] == ["tables/table_2.csv"]

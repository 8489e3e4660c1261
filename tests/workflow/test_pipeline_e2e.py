"""The CI preset end to end, with a kill in the middle: real training, real tables, real MLflow.

One scenario (minutes on 2 cores), on a temporary copy of the workflow:
1. start `snakemake tables` on the ci preset and kill -9 the training jobs as soon as one cell has
   finished and another has written a checkpoint but no metrics.json yet;
2. rerun the same command: it finishes, finished cells are not retrained, the killed cell resumes
   from its checkpoint;
3. every table and figure exists, every own-row cell of every table is filled, and MLflow holds one
   FINISHED run per cell.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mhsa.study.build import build_study, load_study_config, table_number

pytestmark = pytest.mark.slow
SNAKEMAKE = [sys.executable, "-m", "snakemake", "tables", "--cores", "2", "--resources", "gpu=2",
             "--rerun-incomplete", "--config", "preset=ci"]


def _env(wd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{wd / 'mlflow.db'}"
    return env


def _training_jobs(wd: Path) -> list[int]:
    """PIDs of the train_cell job processes Snakemake started in `wd`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "train_cell.py" in cmd and str(wd) in cmd:
            pids.append(int(proc.name))
    return pids


def _kill_jobs_mid_run(wd: Path, results: Path, timeout: float = 600) -> int:
    """Run until one cell is done and another is mid-training, then kill -9 the training jobs.

    Snakemake sees the jobs die, stops and releases its lock, as after an OOM kill or a crash.
    """
    proc = subprocess.Popen(SNAKEMAKE, cwd=wd, env=_env(wd), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    killed = []
    try:
        while time.time() < deadline and proc.poll() is None and not killed:
            # finished = Snakemake wrote the job's benchmark file (metrics.json appears while the
            # job still logs its artifacts)
            done = {p.stem for p in (results / "benchmarks" / "train").glob("*.tsv")}
            running = [p for p in (results / "checkpoints").glob("*/*/last.pt")
                       if p.parent.parent.name not in done]
            if done and running:
                for pid in _training_jobs(wd):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)
        returncode = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert killed, "no training job was caught mid-run"
    return returncode


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory, copy_workflow):
    wd = copy_workflow(tmp_path_factory.mktemp("ci"))
    results = wd / "results" / "ci"
    assert _kill_jobs_mid_run(wd, results) != 0, "snakemake should report the killed jobs"
    finished_before = {p.parent.name: p.stat().st_mtime_ns for p in (results / "runs").glob("*/metrics.json")}
    killed = [p.parent.parent.name for p in (results / "checkpoints").glob("*/*/last.pt")
              if p.parent.parent.name not in finished_before]
    rerun = subprocess.run(SNAKEMAKE, cwd=wd, env=_env(wd), capture_output=True, text=True, timeout=1200)
    assert rerun.returncode == 0, rerun.stderr[-5000:]
    # the warm worker's decision is said in the run's first lines (docs/workflow.md "The warm worker")
    assert "warm worker: on (auto: preset 'ci' trains short synthetic cells" in rerun.stderr[:3000], rerun.stderr[:3000]
    (wd / "closing.txt").write_text(rerun.stderr[rerun.stderr.rfind("Where to look:"):])
    return wd, results, finished_before, killed


def test_the_run_ends_saying_where_to_look(ci_run):
    """Its last lines: the tables and figures folders, the report command, and the mlflow ui command with
    the URL of the study's runs table in Model-training mode (docs/workflow.md, "Where to look")."""
    from mlflow.tracking import MlflowClient

    wd, results, _, _ = ci_run
    closing = (wd / "closing.txt").read_text()
    exp = MlflowClient(f"sqlite:///{wd / 'mlflow.db'}").get_experiment_by_name("mhsa-ci")
    assert "tables   results/ci/tables/" in closing and "figures  results/ci/figures/" in closing
    assert "snakemake --report results/ci/report.html --config preset=ci" in closing
    assert f"mlflow ui --backend-store-uri sqlite:///{wd / 'mlflow.db'} --port 5000" in closing
    assert f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in closing


def test_rerun_after_kill_keeps_finished_cells_and_resumes_the_killed_one(ci_run):
    wd, results, finished_before, killed = ci_run
    assert finished_before, "the kill came before any cell finished"
    for cell, mtime in finished_before.items():
        assert (results / "runs" / cell / "metrics.json").stat().st_mtime_ns == mtime, f"{cell} was retrained"
    assert killed, "no cell was caught mid-training"
    for cell in killed:
        log = (results / "logs" / "train" / f"{cell}.log").read_text()
        assert "resuming" in log, f"{cell} did not resume from its checkpoint"


def test_every_table_and_figure_exists_and_every_own_cell_is_filled(ci_run):
    wd, results, _, _ = ci_run
    study = build_study(load_study_config(wd / "config.yaml"), "ci")
    for table in study.table_ids():
        n = table_number(table)
        for ext in ("csv", "md", "html", "tex"):
            assert (results / "tables" / f"table_{n}.{ext}").stat().st_size > 0
        df = pd.read_csv(results / "tables" / f"table_{n}.csv")
        own = df[df["own"].astype(bool)]
        assert len(own) > 0 and own["ours"].notna().all(), f"Table {table} has empty own cells"
        assert own["paper"].notna().all()
        assert ((own["ours"] >= 0) & (own["ours"] <= 100)).all()
    # the preset's figures (none in ci) and every cell's attention overlay, drawn by the tables rule
    figures = list((results / "figures").glob("*.png")) + [results / "runs" / c / "attention.png" for c in study.cells]
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)


def test_mlflow_has_one_finished_run_per_cell(ci_run):
    from mlflow.tracking import MlflowClient

    wd, results, _, _ = ci_run
    study = build_study(load_study_config(wd / "config.yaml"), "ci")
    client = MlflowClient(f"sqlite:///{wd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mhsa-ci")
    every = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in every if r.data.tags.get("mhsa.role") == "study"]  # the study's parent run
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    runs = [r for r in every if r not in parents]
    names = sorted(r.info.run_name for r in runs)
    assert names == sorted(study.cells), "one MLflow run per cell, no strays"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        metrics = json.loads((results / "runs" / r.info.run_name / "metrics.json").read_text())
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "Train/loss")]
        assert sorted(set(steps)) == list(range(1, metrics["train"]["epochs"] + 1))
        assert r.data.tags["feeds"] and r.data.tags["git_sha"]
        assert "attention.png" in [a.path for a in client.list_artifacts(r.info.run_id)]


def test_report_lists_each_table_as_a_page_in_the_papers_order(ci_run):
    """`snakemake --report`: a Tables entry per table (its html, which the report previews) ordered I, II, ...
    by its first label, the csv/md/tex under Downloads, the summary page; no entry carries the study."""
    import re

    wd, results, _, _ = ci_run
    report = results / "report.html"
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--report", str(report), "--config", "preset=ci"],
                          cwd=wd, env=_env(wd), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = report.read_text()
    categories = json.loads(re.search(r"var categories = (\{.*?\});\n", text, re.S).group(1))
    entries = json.loads(re.search(r"var results = (\{.*?\});\n", text, re.S).group(1))
    study = build_study(load_study_config(wd / "config.yaml"), "ci")
    tables = [entries[p] for p in next(iter(categories["Tables"].values()))]
    assert sorted((e["labels"]["no."], e["labels"]["table"], e["filename"]) for e in tables) == [
        (f"{table_number(t):02d}", t, f"table_{table_number(t)}.html") for t in study.table_ids()]
    assert {e["mime_type"] for e in tables} == {"text/html"}
    downloads = {entries[p]["filename"] for p in next(iter(categories["Downloads"].values()))}
    assert downloads == {f"table_{table_number(t)}.{x}" for t in study.table_ids() for x in ("csv", "md", "tex")} | {
        "summary.md"}
    assert [entries[p]["filename"] for p in next(iter(categories["Summary"].values()))] == ["summary.html"]
    assert all(len(e["job_properties"]["params"]) < 2000 for e in entries.values())


def test_ci_tables_equal_the_golden_copy(ci_run):
    """The numbers of the ci preset do not move under a refactoring (tests/golden/README.md)."""
    _, results, _, _ = ci_run
    golden = Path(__file__).parents[1] / "golden" / "ci_tables"
    files = sorted(golden.glob("table_*.*"))
    assert files, "no golden tables"
    differ = [f.name for f in files if (results / "tables" / f.name).read_bytes() != f.read_bytes()]
    assert not differ, f"ci tables differ from tests/golden/ci_tables: {differ} (see tests/golden/README.md)"


def test_the_cells_trained_in_the_warm_worker(ci_run):
    """The run above went through the warm worker (so the golden tables cover that path): it
    started in both runs, took every job it was offered, finished each cell once, and stopped."""
    wd, results, _, _ = ci_run
    log = (results / "logs" / "warm_worker.log").read_text()
    assert log.count(": ready on ") == 2 and log.count(": stopped") == 2, log
    assert "not taken" not in log and "imported after the fork" not in log, log
    cells = build_study(load_study_config(wd / "config.yaml"), "ci").cells
    for cell in cells:
        assert f": train_cell {cell}\n" in log, f"{cell} did not train in the warm worker"
    assert log.count(": exit 0\n") >= len(cells), log

"""The `ci` study on a real one-node SLURM cluster, tracked by an MLflow server on PostgreSQL.

Run by `.ci/cluster` (root; installs the Debian packages): `python -m pytest -m cluster tests/cluster`.
Excluded from the default test command by its marker. Nothing is mocked: munged, slurmctld, slurmd
(two fake GPUs as gres), PostgreSQL and `mlflow server` are started here and stopped by PID.
Logs, the screenshot of the report and the timings land in $MHSA_CLUSTER_OUT
(default results/cluster-test/).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from browser import check_page  # tests/cluster/conftest.py puts this folder on sys.path
from daemons import Daemons, missing_tools, start_mlflow, start_munge, start_postgres, start_slurm

from mhsa.study.build import build_study, table_number

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("MHSA_CLUSTER_OUT", REPO / "results" / "cluster-test"))
RUN_TIMEOUT = 900
TIMES: dict = {}


# --------------------------------------------------------------------------------- set-up
def copy_repo(dest: Path) -> str:
    """The checkout's files (tracked + untracked, not ignored) as a fresh git repo: the jobs
    work there, and its HEAD is the commit the runs must name."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "cluster test snapshot"]):
        subprocess.run([*git, *cmd], cwd=dest, check=True, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, check=True, capture_output=True,
                          text=True).stdout.strip()


def cluster_profile(dest: Path) -> Path:
    """The shipped SLURM profile with sizes for 2 CPUs, squeue status (no accounting daemon)."""
    prof = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    prof.update({"jobs": 4, "latency-wait": 10, "retries": 0, "keep-going": True,
                 "slurm-status-command": "squeue", "slurm-no-account": True,
                 "slurm-init-seconds-before-status-checks": 5, "slurm-keep-successful-logs": True})
    prof["default-resources"] = {"runtime": 20, "mem_mb": 1000, "cpus_per_task": 1}
    prof["set-threads"] = {"train_cell": 1}
    prof["set-resources"]["train_cell"].update({"runtime": 20, "mem_mb": 2000})
    prof["set-resources"]["tables"] = {"runtime": 20, "mem_mb": 2000}
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def cluster():
    missing = missing_tools()
    if missing:
        pytest.fail(f"cluster test needs {missing}: run it with .ci/cluster (installs them with apt)")
    if os.geteuid() != 0:
        pytest.fail("cluster test starts slurmctld/slurmd/postgres: run it as root (.ci/cluster)")
    OUT.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="mhsa-cluster-"))
    base.chmod(0o755)  # munge/postgres users must reach their dirs
    daemons = Daemons(base)
    t0 = time.monotonic()
    try:
        start_munge(daemons)
        host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
        slurm_env = start_slurm(daemons, host)
        uri = start_mlflow(daemons, start_postgres(daemons))
        repo = base / "repo"
        sha = copy_repo(repo)
        env = {**os.environ, **slurm_env, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(repo)}
        TIMES["daemons_s"] = round(time.monotonic() - t0, 1)
        yield SimpleNamespace(base=base, repo=repo, sha=sha, uri=uri, env=env, artifacts=base / "mlflow-artifacts",
                              profile=cluster_profile(base / "profile"), results=repo / "results" / "ci")
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env={**os.environ, **slurm_env}
                       if "slurm_env" in locals() else None, capture_output=True)
        time.sleep(2)
        forced = daemons.stop()
        for log in [*base.glob("*.out"), *base.glob("slurm/*.log")]:
            shutil.copy2(log, OUT / log.name)
        TIMES["total_s"] = round(time.monotonic() - t0, 1)
        TIMES["needed_sigkill"] = forced
        (OUT / "timings.json").write_text(json.dumps(TIMES, indent=1))
        left = subprocess.run(["pgrep", "-f", str(base)], capture_output=True, text=True).stdout.split()
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"processes left behind: {left}"


def snakemake(cl, *extra, env=None, log_name="snakemake.log") -> subprocess.Popen:
    log = open(OUT / log_name, "w")
    cmd = [sys.executable, "-m", "snakemake", "--profile", str(cl.profile), "tables", "--config", "preset=ci", *extra]
    log.write(" ".join(cmd) + "\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=cl.repo, env=env or cl.env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


@contextlib.contextmanager
def running(proc: subprocess.Popen):
    """Stop Snakemake (SIGTERM: it cancels its SLURM jobs) if the test fails while it runs."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def squeue(cl) -> list[tuple[str, str, str]]:
    """(job id, state, cell) of the queued/running train_cell jobs (the plugin's --comment)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k"], env=cl.env, capture_output=True, text=True).stdout
    jobs = []
    for line in out.splitlines():
        jobid, state, comment = line.split("|", 2)
        m = re.match(r"rule_train_cell_wildcards_(.+)", comment)
        if m:
            jobs.append((jobid, state, m.group(1)))
    return jobs


def kill_one_training_job(cl, proc) -> tuple[str, str]:
    """Catch a training job between its first checkpoint and its metrics.json: suspend it (so the
    check cannot race the job), then scancel it. A job caught too late is resumed and skipped."""
    tried, deadline = set(), time.monotonic() + RUN_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        for jobid, state, cell in squeue(cl):
            done = cl.results / "runs" / cell / "metrics.json"
            if jobid in tried or state != "RUNNING" or done.exists():
                continue
            if not list((cl.results / "checkpoints" / cell).glob("*/last.pt")):
                continue
            tried.add(jobid)
            suspended = subprocess.run(["scontrol", "suspend", jobid], env=cl.env, capture_output=True).returncode == 0
            time.sleep(1.0)
            if done.exists():  # finished in the meantime: let it go
                if suspended:
                    subprocess.run(["scontrol", "resume", jobid], env=cl.env, capture_output=True)
                continue
            subprocess.run(["scancel", jobid], env=cl.env, check=True, capture_output=True)
            return cell, jobid
        time.sleep(0.2)
    pytest.fail("no training job was caught between its first checkpoint and its end")


def losses(metrics: dict) -> list:
    return [{k: v for k, v in row.items() if k != "images_per_s"} for row in metrics["history"]]


@pytest.fixture(scope="module")
def ci_run(cluster):
    """Refused without a server; then run 1 (one training job scancelled mid-run), run 2 (same
    command) finishes the study; a reference run of the killed cell without any interruption."""
    cl = cluster
    t0 = time.monotonic()
    no_server = {k: v for k, v in cl.env.items() if k != "MLFLOW_TRACKING_URI"}
    with running(snakemake(cl, env=no_server, log_name="snakemake-refused.log")) as refused:
        assert refused.wait(timeout=300) != 0
    cl.refused_log = (OUT / "snakemake-refused.log").read_text()
    cl.jobs_after_refusal = squeue(cl)
    TIMES["refusal_s"] = round(time.monotonic() - t0, 1)

    t0 = time.monotonic()
    with running(snakemake(cl, log_name="snakemake-run1.log")) as first:
        cl.victim, cl.victim_job = kill_one_training_job(cl, first)
        rc1 = first.wait(timeout=RUN_TIMEOUT)
    TIMES["run1_s"] = round(time.monotonic() - t0, 1)
    assert rc1 != 0, "the run with a cancelled job should fail"
    assert not (cl.results / "runs" / cl.victim / "metrics.json").exists()
    cl.victim_status_after_kill = _runs_of_cell(cl, cl.victim)

    t0 = time.monotonic()
    with running(snakemake(cl, log_name="snakemake-run2.log")) as second:
        rc2 = second.wait(timeout=RUN_TIMEOUT)
    assert rc2 == 0, (OUT / "snakemake-run2.log").read_text()[-4000:]
    TIMES["run2_s"] = round(time.monotonic() - t0, 1)

    t0 = time.monotonic()
    ref = cl.base / "reference"
    subprocess.run([sys.executable, "-m", "mhsa", "train", str(cl.results / "runs" / cl.victim / "config.yaml"),
                    "--out", str(ref), "--set", "tracking.enabled=false"], cwd=cl.repo, env=cl.env, check=True,
                   capture_output=True, timeout=RUN_TIMEOUT)
    cl.reference = json.loads((ref / "metrics.json").read_text())
    TIMES["reference_s"] = round(time.monotonic() - t0, 1)
    return cl


def _client(cl):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=cl.uri)


def _runs(cl, where=""):
    c = _client(cl)
    exp = c.get_experiment_by_name("mhsa-ci")
    return c.search_runs([exp.experiment_id], filter_string=where, max_results=1000)


def _runs_of_cell(cl, cell):
    return [r.info.status for r in _runs(cl, f"tags.cell = '{cell}'")]


def _study():

    return build_study(yaml.safe_load((REPO / "config.yaml").read_text()), "ci")


# ---------------------------------------------------------------------------------- tests
def test_cluster_run_without_a_server_is_refused_before_submitting(ci_run):
    assert "tracking server" in ci_run.refused_log and "mlflow server --backend-store-uri" in ci_run.refused_log
    assert "No job was submitted" in ci_run.refused_log
    assert ci_run.jobs_after_refusal == []


def test_every_cell_is_a_finished_child_of_one_study_run(ci_run):
    study = _study()
    runs = _runs(ci_run)
    parents = [r for r in runs if r.data.tags.get("mhsa.role") == "study"]
    children = [r for r in runs if "cell" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["cell"] for r in children) == sorted(study.cells)  # 11 cells, one run each
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    c = _client(ci_run)
    tables = {f.path for f in c.list_artifacts(parents[0].info.run_id, "tables")}
    for t in study.table_ids():
        assert {f"tables/table_{table_number(t)}.{e}" for e in ("csv", "md", "html", "tex")} <= tables
    assert c.list_artifacts(parents[0].info.run_id, "figures")


def test_every_training_job_ran_as_a_slurm_job_with_one_gpu(ci_run):
    jobs = {}
    for run in _runs(ci_run, "tags.cell != ''"):
        tags, cell = run.data.tags, run.data.tags["cell"]
        assert re.fullmatch(r"\d+", tags.get("slurm_job_id", "")), (cell, tags)
        assert re.fullmatch(r"[01]", tags.get("cuda_visible_devices", "")), (cell, tags)  # one fake GPU
        log = ci_run.repo / ".snakemake" / "slurm_logs" / "rule_train_cell" / cell / f"{tags['slurm_job_id']}.log"
        assert log.exists(), f"no SLURM log {log} for {cell}"
        jobs[cell] = tags["slurm_job_id"]
        assert tags["mlflow.source.git.commit"] == ci_run.sha
        assert tags["mlflow.user"] and tags["mlflow.source.name"]
        assert run.inputs.dataset_inputs, f"{cell}: no data sets logged"
        assert _client(ci_run).list_artifacts(run.info.run_id, "logs"), f"{cell}: job log not logged"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert len(set(jobs.values())) == len(jobs)
    assert any(ci_run.artifacts.rglob("metrics.json")), "artifacts not in the server's --artifacts-destination"
    stray = list(ci_run.repo.rglob("mlruns"))
    assert not stray, f"artifacts fell back to ./mlruns: {[str(p) for d in stray for p in d.rglob('*')][:20]}"


def test_search_by_table_tag_returns_exactly_that_tables_cells(ci_run):
    study = _study()
    for t in study.table_ids():
        want = {c.id for c in study.cells.values() if any(f.startswith(f"Table {t} /") for f in c.feeds)}
        got = {r.data.tags["cell"] for r in _runs(ci_run, f"tags.`table.{t}` = '1'")}
        assert got == want and want, t


def test_cancelled_cell_resumed_to_the_uninterrupted_result_in_one_run(ci_run):
    cell = ci_run.victim
    assert ci_run.victim_status_after_kill and "FINISHED" not in ci_run.victim_status_after_kill
    assert _runs_of_cell(ci_run, cell) == ["FINISHED"]
    log = (ci_run.results / "logs" / "train" / f"{cell}.log").read_text()
    assert re.search(rf"resuming {re.escape(cell)} from .*last\.pt \(epoch [12]\)", log), log[-3000:]
    resumed = json.loads((ci_run.results / "runs" / cell / "metrics.json").read_text())
    assert resumed["eval"] == ci_run.reference["eval"]
    assert losses(resumed) == losses(ci_run.reference)


def test_report_opens_in_headless_chromium_with_its_figures(ci_run):
    report = ci_run.results / "report.html"
    subprocess.run([sys.executable, "-m", "snakemake", "--report", str(report), "--config", "preset=ci"],
                   cwd=ci_run.repo, env=ci_run.env, check=True, capture_output=True, timeout=600)
    page = check_page(shutil.which("chromium"), report, OUT / "browser")
    shutil.copy2(report, OUT / "report.html")
    assert page["errors"] == []
    figures = len(list((ci_run.results / "figures").glob("*.png")))
    assert figures >= 1 and page["images"]["png"] >= figures, page["images"]  # every figure is in the page
    assert page["images"]["failed"] == 0, page["images"]  # ... and decodes in the browser
    assert page["screenshot"].stat().st_size > 10_000

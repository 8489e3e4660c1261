"""The warm worker (mhsa.warm_worker): jobs forked from one process that imported torch and MLflow
once behave as jobs run in their own process: same exit code and error line, the client's cwd,
environment and streams, signals reach the job, a dead client's job is stopped, refused requests
run in the client's process, and the worker stops by PID or when its owner is gone.

A job that blocks is a real training job waiting for a GPU slot whose lock this test holds.
The e2e test (tests/test_pipeline_e2e.py) runs the ci preset through the worker and compares its
tables byte for byte with the golden copy.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mhsa import warm_worker
from mhsa.file_lock import try_hold
from mhsa.train_job import TrainJob
from mhsa.warm_worker import THREAD_ENV, _submit, start, stop

REPO = Path(__file__).resolve().parents[1]
CLIENT = "import sys; from mhsa.train_job import TrainJob; from mhsa.warm_worker import run_job; " \
         "sys.exit(run_job(TrainJob.from_json(sys.argv[1]), sys.argv[2]))"


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update({var: "1" for var in THREAD_ENV})
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")  # as the worker has it
    return {**env, **extra}


def _wait_ready(log: Path, proc, timeout=120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and "ready" in log.read_text():
            return
        assert proc.poll() is None, log.read_text() if log.exists() else "worker exited"
        time.sleep(0.1)
    raise AssertionError("the warm worker did not become ready")


def _spawn(results: Path, owner=None, repo=REPO, pythonpath=None):
    """Start a worker as the Snakefile does (`start` sets THREAD_ENV itself), with the PYTHONPATH
    its clients get from `_env`; do not wait for its imports."""
    log = results / "logs" / "warm_worker.log"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", pythonpath or os.environ.get("PYTHONPATH", ""))
        proc = start(results, repo, log, threads=1, owner_pid=owner or os.getpid())
    return proc, log


def _start(results: Path, owner=None, repo=REPO, pythonpath=None):
    proc, log = _spawn(results, owner, repo, pythonpath)
    _wait_ready(log, proc)
    return proc, log


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    results = tmp_path_factory.mktemp("ww") / "results"
    results.mkdir()
    proc, log = _start(results)
    yield results, proc, log
    assert stop(proc) == 0
    assert "stopped" in log.read_text()


def _job(results: Path, cell="c1", **kw) -> TrainJob:
    base = dict(cell=cell, run_dir=str(results / "runs" / cell), ckpt_dir=str(results / "ckpt" / cell),
                log=f"logs/{cell}.log", recipe={}, overrides={}, threads=1, preset="demo",
                tracking_uri=f"sqlite:///{results / 'mlflow.db'}", gpu_lock_dir=str(results / "gpu_locks"))
    return TrainJob(**{**base, **kw})


def _client(job: TrainJob, results: Path, cwd: Path, **env) -> subprocess.Popen:
    """A job's adapter: hands `job` to the warm worker of `results`, else runs it itself."""
    return subprocess.Popen([sys.executable, "-c", CLIENT, job.to_json(), str(results)], cwd=cwd,
                            env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _hold_gpu0(results: Path):
    (results / "gpu_locks").mkdir(exist_ok=True)
    lock = try_hold(results / "gpu_locks" / "gpu0.lock")  # the job waits for this GPU slot
    assert lock is not None
    return lock


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(p) for p in text]


def _wait_child(server: int, timeout=30.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        kids = _children(server)
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise AssertionError("no job was forked")


def _gone(pid: int, timeout=15.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text():
            return True
        time.sleep(0.05)
    return False


def test_a_failing_job_gives_the_same_error_through_the_worker_and_in_its_own_process(worker, tmp_path):
    results, _, log = worker
    bad = _job(results, overrides={"optim": {"lr": "fast"}})
    errors = {}
    for how, env in (("worker", {}), ("own process", {"MHSA_WARM_WORKER": "0"})):
        cwd = tmp_path / how.replace(" ", "_")
        cwd.mkdir()
        proc = _client(bad, results, cwd, **env)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err
        assert "running the job in this process" not in err
        errors[how] = [line for line in err.splitlines() if line.startswith("error:")]
        job_log = (cwd / "logs" / "c1.log").read_text()  # relative to the client's cwd
        assert "Traceback" in job_log and "lr" in job_log
    assert errors["worker"] == errors["own process"] and errors["worker"], errors
    assert "not taken" not in log.read_text()


def test_a_forked_job_has_the_clients_cwd_and_dies_with_its_client(worker, tmp_path):
    results, proc, _ = worker
    lock = _hold_gpu0(results)
    try:
        job = _job(results, cell="blocked", gpu_slots=1, gpu_wait_s=600)
        client = _client(job, results, tmp_path)
        child = _wait_child(proc.pid)
        deadline = time.time() + 10  # the child takes the client's cwd right after the fork
        while Path(f"/proc/{child}/cwd").resolve() != tmp_path.resolve() and time.time() < deadline:
            time.sleep(0.02)
        assert Path(f"/proc/{child}/cwd").resolve() == tmp_path.resolve()
        client.kill()  # kill -9: Snakemake or the OOM killer took the job's process
        client.wait()
        assert _gone(child), "the job outlived its client"
        deadline = time.time() + 10
        while _children(proc.pid) and time.time() < deadline:  # reaped within a loop tick
            time.sleep(0.05)
        assert not _children(proc.pid)
    finally:
        lock.close()


def test_a_forked_job_sees_the_clients_environment(worker, tmp_path):
    """With CUDA_VISIBLE_DEVICES set (as a scheduler sets it), gpu_slot takes no slot: the job does
    not wait for the held GPU lock and goes on to fail on the missing data set."""
    results, proc, _ = worker
    lock = _hold_gpu0(results)
    try:
        job = _job(results, cell="env", gpu_slots=1, gpu_wait_s=600,
                   recipe={"data": {"root": str(tmp_path / "no_data")}})
        client = _client(job, results, tmp_path, CUDA_VISIBLE_DEVICES="")
        _, err = client.communicate(timeout=120)
        assert client.returncode == 1
        assert "data set not found" in err and "running the job in this process" not in err, err
    finally:
        lock.close()


def test_sigterm_to_the_client_reaches_the_job(worker, tmp_path):
    results, proc, _ = worker
    lock = _hold_gpu0(results)
    try:
        client = _client(_job(results, cell="term", gpu_slots=1, gpu_wait_s=600), results, tmp_path)
        child = _wait_child(proc.pid)
        client.send_signal(signal.SIGTERM)
        client.communicate(timeout=60)
        assert client.returncode == 128 + signal.SIGTERM
        assert _gone(child)
    finally:
        lock.close()


def test_a_client_with_other_thread_settings_is_refused_and_runs_the_job_itself(worker, tmp_path):
    results, _, log = worker
    proc = _client(_job(results, overrides={"optim": {"lr": "fast"}}), results, tmp_path, OMP_NUM_THREADS="2")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "import-time environment differs (OMP_NUM_THREADS)" in err
    assert "running the job in this process" in err
    assert any(line.startswith("error:") for line in err.splitlines())
    assert "import-time environment differs" in log.read_text()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
def test_another_user_cannot_submit_jobs(worker):
    results, _, log = worker
    ours = warm_worker.socket_name(results)  # the name has the uid in it: ask for ours explicitly
    pid = os.fork()
    if pid == 0:  # a process of user nobody: the worker must not run its jobs as us
        code = 3
        try:
            warm_worker.socket_name = lambda _: ours
            os.setgid(65534)
            os.setuid(65534)
            code = 0 if _submit("train_cell", "{}", results, 10) is None else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert "uid 65534 is not this worker's" in log.read_text()


def test_stop_ends_the_running_jobs_then_the_worker(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    proc, log = _start(results)
    lock = _hold_gpu0(results)
    try:
        client = _client(_job(results, cell="stop", gpu_slots=1, gpu_wait_s=600), results, tmp_path)
        child = _wait_child(proc.pid)
        assert stop(proc, timeout=60) == 0
        client.communicate(timeout=60)
        assert client.returncode == 128 + signal.SIGTERM
        assert _gone(child)
        assert _submit("train_cell", "{}", results, 5) is None  # nobody listens any more
    finally:
        lock.close()


def test_the_worker_stops_once_its_owner_is_gone(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    owner = subprocess.Popen(["sleep", "600"])
    proc, log = _start(results, owner=owner.pid)
    owner.kill()
    owner.wait()
    assert proc.wait(timeout=30) == 0
    assert "stopped" in log.read_text()


def test_edited_sources_make_the_worker_refuse_and_stop(tmp_path):
    """The worker serves the mhsa it imported: after an edit, jobs run in their own process."""
    copy = tmp_path / "src"
    shutil.copytree(REPO / "mhsa", copy / "mhsa", ignore=shutil.ignore_patterns("__pycache__"))
    results = tmp_path / "results"
    results.mkdir()
    proc, log = _start(results, repo=copy, pythonpath=str(copy))
    bad = _job(results, overrides={"optim": {"lr": "fast"}})
    client = _client(bad, results, tmp_path, PYTHONPATH=str(copy))
    _, err = client.communicate(timeout=120)
    assert client.returncode == 1 and "running the job in this process" not in err, err
    edited = copy / "mhsa" / "errors.py"
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))
    client = _client(bad, results, tmp_path, PYTHONPATH=str(copy))
    _, err = client.communicate(timeout=120)
    assert client.returncode == 1, err
    assert "mhsa sources differ" in err and "running the job in this process" in err, err
    assert proc.wait(timeout=30) == 0  # it takes no more jobs: it stops
    assert ": stopped" in log.read_text()


def test_a_job_stopped_while_the_worker_starts_does_not_run_at_all(tmp_path):
    """SIGTERM reaches the adapter while the worker is still importing, then the worker refuses the
    job: the adapter exits 143 instead of running the job itself."""
    results = tmp_path / "results"
    results.mkdir()
    proc, log = _spawn(results)
    try:
        name = "@" + warm_worker.socket_name(results)[1:]
        deadline = time.time() + 60
        while name not in Path("/proc/net/unix").read_text():  # bound, still importing
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.02)
        job = _job(results, overrides={"optim": {"lr": "fast"}})
        client = _client(job, results, tmp_path, OMP_NUM_THREADS="2")  # to be refused
        time.sleep(1.0)
        assert "ready" not in log.read_text(), "the worker was ready too early for this test"
        client.send_signal(signal.SIGTERM)
        _, err = client.communicate(timeout=120)
        assert client.returncode == 128 + signal.SIGTERM, err
        assert "running the job in this process" not in err
        assert not (tmp_path / "logs" / "c1.log").exists()  # the job never started
        assert "import-time environment differs" in log.read_text()
    finally:
        stop(proc)

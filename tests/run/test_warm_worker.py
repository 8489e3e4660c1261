"""The warm worker (mhsa.run.warm_worker): jobs forked from one process that imported torch and MLflow
once behave as jobs run in their own process: same exit code and error line, the client's cwd,
environment and streams, signals reach the job, a dead client's job is stopped, refused requests
run in the client's process, and the worker stops by PID or when its owner is gone. It trusts no one:
another user (a real second uid, `nobody`) can neither submit jobs nor pose as the worker, a lying
worker gets no signal sent to a PID of its choosing, an edit of the sources never stops a running job,
and the jobs of a killed worker die with it.

Every test runs with its own TMPDIR (the worker's private socket directory lives there).
A job that blocks is a real training job waiting for a GPU slot whose lock this test holds.
The e2e test (tests/workflow/test_pipeline_e2e.py) runs the ci preset through the worker and compares its
tables byte for byte with the golden copy.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mhsa.io import try_hold
from mhsa.run.job import TrainJob
from mhsa.run.warm_worker import THREAD_ENV, WorkerUnavailable, channel, client, start, stop
from mhsa.run.warm_worker.client import _submit

REPO = Path(__file__).resolve().parents[2]
CLIENT = "import sys; from mhsa.run.job import TrainJob; from mhsa.run.warm_worker import run_job; " \
         "sys.exit(run_job(TrainJob.from_json(sys.argv[1]), sys.argv[2]))"


NOBODY = 65534
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as a second user")


@pytest.fixture(scope="module", autouse=True)
def own_tmpdir(tmp_path_factory):
    """A TMPDIR of this module's own, world-writable like /tmp (so `nobody` can attack in it), outside
    pytest's private folders (whose base is fixed first, in the real TMPDIR)."""
    tmp_path_factory.getbasetemp()
    tmp = Path(tempfile.mkdtemp(prefix="mhsa-ww-test-"))
    tmp.chmod(0o1777)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(tmp))
        mp.delenv("XDG_RUNTIME_DIR", raising=False)
        mp.setattr(tempfile, "tempdir", str(tmp))
        yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


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
        assert _submit("{}", results, 5) is None  # nobody listens any more
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


def test_a_job_stopped_while_the_worker_starts_does_not_run_at_all(tmp_path):
    """SIGTERM reaches the adapter while the worker is still importing: the adapter exits 143 at once,
    without running the job itself, and the worker, once ready, finds the request withdrawn."""
    results = tmp_path / "results"
    results.mkdir()
    proc, log = _spawn(results)
    try:
        path = channel.socket_path(results)
        deadline = time.time() + 60
        while not path.exists():  # bound, still importing
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
        deadline = time.time() + 60
        while "request not taken" not in log.read_text() and time.time() < deadline:
            time.sleep(0.1)
        assert "request not taken" in log.read_text() and "job " not in log.read_text()
    finally:
        stop(proc)


# ------------------------------------------------------------------------ running jobs and edits
def test_an_edit_during_a_run_never_stops_a_running_job(tmp_path):
    """The job that notices the edit runs in its own process with the new code; the running job goes
    on with the code it started with; the worker takes no more jobs and exits once it is done."""
    copy = tmp_path / "src"
    shutil.copytree(REPO / "mhsa", copy / "mhsa", ignore=shutil.ignore_patterns("__pycache__"))
    results = tmp_path / "results"
    results.mkdir()
    proc, log = _start(results, repo=copy, pythonpath=str(copy))
    lock = _hold_gpu0(results)
    try:
        running = _client(_job(results, cell="long", gpu_slots=1, gpu_wait_s=600), results, tmp_path,
                          PYTHONPATH=str(copy))
        child = _wait_child(proc.pid)
        edited = copy / "mhsa" / "errors.py"
        os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))
        bad = _job(results, overrides={"optim": {"lr": "fast"}})
        late = _client(bad, results, tmp_path, PYTHONPATH=str(copy))
        _, err = late.communicate(timeout=120)
        assert late.returncode == 1 and "running the job in this process" in err, err
        assert "sources were edited" in err
        assert not _gone(child, timeout=2) and proc.poll() is None, "the edit stopped a running job"
        assert not channel.socket_path(results, copy / "mhsa").exists()  # no new jobs
    finally:
        lock.close()
    running.communicate(timeout=120)  # with the slot free it goes on (and fails on the missing data)
    assert running.returncode == 1
    assert proc.wait(timeout=30) == 0
    text = log.read_text()
    assert "no new jobs; running jobs finish" in text and ": stopped" in text
    assert "imported after the fork" not in text  # the running job read no edited source


def test_two_checkouts_sharing_a_results_directory_get_a_worker_each(tmp_path):
    a, b = tmp_path / "a" / "mhsa", tmp_path / "b" / "mhsa"
    assert channel.socket_path(tmp_path, a) != channel.socket_path(tmp_path, b)
    assert channel.socket_path(tmp_path, a) == channel.socket_path(tmp_path / "." , a)


def test_a_killed_worker_takes_its_jobs_with_it_before_they_are_reported_failed(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    proc, _ = _start(results)
    lock = _hold_gpu0(results)
    try:
        client_ = _client(_job(results, cell="orphan", gpu_slots=1, gpu_wait_s=600), results, tmp_path)
        child = _wait_child(proc.pid)
        proc.kill()  # kill -9 of the worker (the OOM killer, a user)
        proc.wait()
        _, err = client_.communicate(timeout=120)
        assert client_.returncode == 1
        assert f"its job process {child} with it" in err, err
        assert _gone(child, timeout=0.1), "reported failed while still alive"
    finally:
        lock.close()


def test_the_worker_forks_from_one_thread_and_refuses_a_poisoned_fork(worker):
    _, proc, _ = worker
    assert len(os.listdir(f"/proc/{proc.pid}/task")) == 1  # pyarrow's jemalloc thread is off
    probe = "from mhsa.run.warm_worker.server import fork_problem; print(fork_problem())"
    for before, expected in (("", "None"), ("torch.cuda.is_available(); ", "CUDA was initialised in the worker")):
        code = f"import torch; {before}{probe}"  # is_available() alone poisons a later fork
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env())
        assert expected in out.stdout, (before, out.stdout, out.stderr)


# ------------------------------------------------------------------------------------- security
def _as_nobody(target, *args) -> int:
    """Run target(*args) in a forked process of user nobody; its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = target(*args) or 0
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@needs_root
def test_another_user_can_neither_reach_nor_submit_to_the_worker(worker):
    results, _, log = worker
    path = channel.socket_path(results)

    def connect():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
        except PermissionError:
            return 0  # the private directory keeps nobody out
        return 1

    def submit():
        client.socket_path = lambda _: path  # nobody's own would be in nobody's own directory
        return 0 if _submit("{}", results, 10) is None else 1

    assert _as_nobody(connect) == 0
    # and if the directory let it through, the worker itself refuses a stranger's job
    path.parent.chmod(0o711)
    path.chmod(0o666)
    try:
        assert _as_nobody(submit) == 0
    finally:
        path.parent.chmod(0o700)
        path.chmod(0o600)
    assert f"uid {NOBODY} is not this worker's" in log.read_text()


def _impostor(path: Path, report: int, reply: bytes = b"") -> int:
    """Listen at `path` as whoever runs this; write to `report` what one client sent."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    os.chmod(path, 0o777)
    srv.listen(1)
    srv.settimeout(20)
    try:
        conn, _ = srv.accept()
    except TimeoutError:
        os.write(report, b"no connection")
        return 0
    conn.settimeout(5)
    got, fds = b"", []
    try:
        data, fds, _, _ = socket.recv_fds(conn, 65536, 3)
        got += data
        if reply:
            conn.sendall(reply)
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
    except OSError:
        pass
    os.write(report, f"{len(got)} bytes {len(fds)} fds, last byte {got[-1] if got else None}".encode())
    return 0


@needs_root
def test_a_squatted_socket_directory_is_refused_aloud_and_gets_nothing(tmp_path, capfd):
    """nobody creates this user's socket directory first and listens in it: neither the worker nor a
    job uses it, both say so, and the impostor receives nothing (no environment, no streams)."""
    private = Path(tempfile.gettempdir()) / f"mhsa-{os.getuid()}"
    squatted = private.exists()
    if squatted:
        shutil.rmtree(private)
    read, write = os.pipe()

    def squat():
        private.mkdir(mode=0o777)
        private.chmod(0o777)
        return 0

    assert _as_nobody(squat) == 0
    results = tmp_path / "results"
    results.mkdir()
    try:
        with pytest.raises(WorkerUnavailable, match=f"mhsa-{os.getuid()} must be a directory of uid"):
            start(results, REPO, results / "w.log", threads=1)
        fake = private / Path(channel.__file__).name  # any name: the client refuses the directory itself
        pid = os.fork()
        if pid == 0:
            os.close(read)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os._exit(_impostor(fake, write))
        os.close(write)
        time.sleep(0.5)
        proc = _client(_job(results, overrides={"optim": {"lr": "fast"}}), results, tmp_path,
                       MLFLOW_TRACKING_TOKEN="canary")
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1 and "must be a directory of uid" in err and "running the job in this process" in err
        os.waitpid(pid, 0)
        assert os.read(read, 4096) == b"no connection"
    finally:
        os.close(read)
        shutil.rmtree(private, ignore_errors=True)


@needs_root
def test_a_client_sends_nothing_to_a_socket_of_another_uid(tmp_path, own_tmpdir, capsys):
    """Even at this user's own socket path (were the directory ever opened), a listener of another uid
    gets no byte: the client checks SO_PEERCRED before it sends."""
    world = own_tmpdir / "world"  # where nobody can bind
    world.mkdir(mode=0o777)
    world.chmod(0o777)
    path = world / "ww.sock"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        os._exit(_impostor(path, write))
    os.close(write)
    deadline = time.time() + 10
    while not path.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert path.exists(), "the impostor did not listen"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(client, "socket_path", lambda _: path)
        assert _submit('{"cell": "x"}', tmp_path, 10) is None
    assert f"served by uid {NOBODY}, not by you" in capsys.readouterr().err
    os.waitpid(pid, 0)
    assert os.read(read, 4096).startswith(b"0 bytes 0 fds")
    os.close(read)


def test_a_lying_worker_cannot_make_the_client_signal_a_pid_or_hang(tmp_path):
    """A worker that names another process as the job's and never answers: on SIGINT the client signals
    no PID itself (it passes the signal on the connection) and exits after the grace period."""
    bystander = subprocess.Popen(["sleep", "600"])
    path = tmp_path / "ww.sock"
    reply = json.dumps({"pid": bystander.pid}).encode()
    read, write = os.pipe()
    srv = os.fork()
    if srv == 0:
        os.close(read)
        os._exit(_impostor(path, write, struct.pack("!I", len(reply)) + reply))
    os.close(write)
    while not path.exists():
        time.sleep(0.02)
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            client.socket_path = lambda _: path
            client.GRACE_S = 1.0
            signal.signal(signal.SIGALRM, lambda *a: os.kill(os.getpid(), signal.SIGINT))
            signal.setitimer(signal.ITIMER_REAL, 1.0)  # SIGALRM -> SIGINT to itself mid-wait
            code = _submit('{"cell": "x"}', tmp_path, 30)
        finally:
            os._exit(code if isinstance(code, int) else 4)
    _, status = os.waitpid(pid, 0)
    os.waitpid(srv, 0)
    got = os.read(read, 4096)
    os.close(read)
    try:
        assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGINT
        assert bystander.poll() is None, "the client signalled the PID the worker named"
        assert got.endswith(f"last byte {int(signal.SIGINT)}".encode()), got  # passed on the connection instead
    finally:
        bystander.kill()
        bystander.wait()

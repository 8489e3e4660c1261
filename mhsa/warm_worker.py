"""The warm worker: torch, torchvision, MLflow and mhsa imported once, one forked process per job.

A demo cell trains for seconds but a fresh Python process spends ~8 s importing torch, torchvision,
MLflow and its SQL store before the first step. With `workflow.warm_worker: true` (the default)
the Snakefile's `onstart` starts `serve` for the run's results directory and `onsuccess`/`onerror`
stop it by PID; each `train_cell` job's adapter then calls `run_job`, which sends the job here.

Protocol (a Unix socket in the abstract namespace, named after the uid and the results directory,
so nothing is left on disk): the client passes its stdin/stdout/stderr (SCM_RIGHTS) and one JSON
request (job, cwd, environment, Python, source fingerprint); the server checks the peer's uid, the
Python and the fingerprint, forks, and answers the child's PID and, later, its exit code. The child
takes the client's cwd, environment and standard streams, so its output goes where a job's goes.

What a job sees is what it would see run directly: `run_job` falls back to running the job in
its own process whenever the worker is absent, busy starting past `connect_timeout`, or refuses
(other Python, edited mhsa sources, different import-time environment variables, a SLURM job).
Signals sent to the client (Snakemake stopping a job) are forwarded to the child; if the client
dies, the server sends the child SIGTERM. The server forks only from its single thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import selectors
import signal
import socket
import struct
import sys
import time
from pathlib import Path

from mhsa.cpu_kernels import ENV_VARS as CPU_KERNEL_ENV
from mhsa.io import pid_alive

PROTOCOL = b"MHSAW1\n"
JOBS = {"train_cell": ("mhsa.train_job", "TrainJob", "run")}
# Read at import (by Python, OpenMP, BLAS, torch): a child forked from a server started with other
# values would not behave as a fresh process with the client's environment. The server refuses then.
# Snakemake sets THREAD_ENV to each job's threads, so `start` gives the worker the jobs' value.
THREAD_ENV = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
IMPORT_TIME_ENV = THREAD_ENV + ("PYTHONHASHSEED", "PYTHONPATH", "LD_LIBRARY_PATH", "LD_PRELOAD",
                                "OPENBLAS_CORETYPE", "KMP_AFFINITY", "TORCH_HOME", "VIRTUAL_ENV",
                                "CONDA_PREFIX") + CPU_KERNEL_ENV
# Inside a scheduler's job the scheduler owns the resources: a job there must not run in a process
# tree that the scheduler does not account for.
SCHEDULER_ENV = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")
PACKAGE = Path(__file__).resolve().parent


def socket_name(results_dir: str | os.PathLike) -> str:
    where = str(Path(results_dir).resolve())
    return f"\0mhsa-warm-worker-{os.getuid()}-{hashlib.sha1(where.encode()).hexdigest()[:16]}"


def source_fingerprint() -> str:
    """The mhsa sources the server imported: any edit after it started makes it refuse jobs."""
    h = hashlib.sha1()
    for path in sorted(PACKAGE.rglob("*.py")):
        st = path.stat()
        h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _python() -> str:
    return os.path.realpath(sys.executable)


# ------------------------------------------------------------------------------------ framing
def _send(sock: socket.socket, obj: dict) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the other side closed the connection")
        buf += chunk
    return buf


def _recv(sock: socket.socket) -> dict:
    (n,) = struct.unpack("!I", _recv_exact(sock, 4))
    return json.loads(_recv_exact(sock, n))


# ------------------------------------------------------------------------------------- client
def run_job(job, results_dir: str | os.PathLike, connect_timeout: float = 300.0) -> int:
    """Run `job` (a mhsa.train_job.TrainJob) in the warm worker of `results_dir` if one takes it,
    else in this process. Returns the job's exit code (0 = success)."""
    kind, text = "train_cell", job.to_json()
    if unusable_here() is None:
        code = _submit(kind, text, results_dir, connect_timeout)
        if code is not None:
            return code
    return _run_here(kind, text)


def unusable_here() -> str | None:
    """Why jobs started in this environment must run as their own processes, or None."""
    if os.environ.get("MHSA_WARM_WORKER", "1") == "0":
        return "MHSA_WARM_WORKER=0"
    found = [v for v in SCHEDULER_ENV if os.environ.get(v)]
    return f"inside a scheduler job ({found[0]})" if found else None


def _submit(kind: str, text: str, results_dir, connect_timeout: float) -> int | None:
    """The job's exit code from the worker, or None when the worker is absent or refuses."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_name(results_dir))
    except OSError:  # no worker for this results directory
        sock.close()
        return None
    child = None
    forwarded, pending = {}, []

    def forward(signum, frame):
        if child:
            _signal(child, signum)
        else:  # the worker has not answered yet: forward once it names the child
            pending.append(signum)

    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            forwarded[sig] = signal.signal(sig, forward)
        sock.settimeout(connect_timeout)  # the server imports torch before its first accept
        socket.send_fds(sock, [PROTOCOL], [0, 1, 2])
        _send(sock, {"kind": kind, "job": text, "cwd": os.getcwd(), "env": dict(os.environ),
                     "python": _python(), "fingerprint": source_fingerprint()})
        reply = _recv(sock)
        if "refused" in reply:
            if pending:  # told to stop before the job ran: do not run it here either
                return 128 + pending[0]
            print(f"warm worker: {reply['refused']}; running the job in this process", file=sys.stderr)
            return None
        child = int(reply["pid"])
        for signum in pending:
            _signal(child, signum)
        sock.settimeout(None)
        code = int(_recv(sock)["exit"])
        return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention
    except (OSError, ConnectionError, ValueError, KeyError) as err:
        if child is None and pending:
            return 128 + pending[0]
        if child is None:
            print(f"warm worker: {err}; running the job in this process", file=sys.stderr)
            return None
        print(f"warm worker: lost the job's process {child}: {err}", file=sys.stderr)
        return 1
    finally:
        for sig, previous in forwarded.items():
            signal.signal(sig, previous)
        sock.close()


def _run_here(kind: str, text: str) -> int:
    import importlib

    module, cls, func = JOBS[kind]
    mod = importlib.import_module(module)
    try:
        getattr(mod, func)(getattr(mod, cls).from_json(text))
    except SystemExit as exit_:  # mhsa.job_log.log_to exits 1 after logging the failure
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


# ------------------------------------------------------------------------------------- server
def preload(tracking_uri: str | None = None) -> None:
    """Import what a training job imports (no torch op runs here: a forked child must not inherit
    an OpenMP pool or a CUDA context)."""
    import importlib

    for module, _, _ in JOBS.values():
        importlib.import_module(module)
    for name in ("torch", "torchvision", "mhsa.train", "mhsa.config", "mhsa.cell_lock", "mhsa.gpu_slots",
                 "mhsa.tracking", "mhsa.evaluation", "mlflow"):
        importlib.import_module(name)
    from mhsa.tracking import uri_scheme

    if uri_scheme(tracking_uri or "") in ("sqlite", "postgresql", "mysql", "mssql"):
        importlib.import_module("mlflow.store.tracking.sqlalchemy_store")
    import torch

    if torch.cuda.is_initialized():  # a forked child could not use the GPU ("bad fork")
        raise RuntimeError("CUDA was initialised while importing the job's modules: the warm worker "
                           "cannot fork GPU jobs; set workflow.warm_worker: false")


class Server:
    def __init__(self, results_dir, owner_pid: int | None = None, idle_timeout: float | None = None):
        self.name = socket_name(results_dir)
        self.owner_pid = owner_pid
        self.idle_timeout = idle_timeout
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound before the imports: a job that starts meanwhile waits in the backlog instead of
        # running alone.
        self.listener.bind(self.name)
        self.listener.listen(64)
        self.children: dict[int, socket.socket] = {}
        self.stopping = False
        self.last_active = time.monotonic()

    def serve(self, tracking_uri: str | None = None) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.fingerprint = source_fingerprint()  # before the imports: an edit meanwhile shows
        preload(tracking_uri)
        self.env = {k: os.environ.get(k) for k in IMPORT_TIME_ENV}
        print(f"warm worker {os.getpid()}: ready on {self.name[1:]}", flush=True)
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        while True:
            if self.stopping and self.listener.fileno() >= 0:
                sel.unregister(self.listener)
                self.listener.close()
                for pid in self.children:
                    _signal(pid, signal.SIGTERM)
            if self.stopping and not self.children:
                break
            for key, _ in sel.select(timeout=0.2):
                if key.fileobj is self.listener:
                    self._accept(sel)
                else:
                    self._client_event(sel, key.fileobj, key.data)
            self._reap(sel)
            self._check_lifetime()
        print(f"warm worker {os.getpid()}: stopped", flush=True)

    def _stop(self, signum, frame) -> None:
        self.stopping = True

    def _check_lifetime(self) -> None:
        if self.children:
            self.last_active = time.monotonic()
            return
        if self.owner_pid and not pid_alive(self.owner_pid):
            self.stopping = True  # Snakemake is gone; running children finish as orphaned jobs would
        elif self.idle_timeout and time.monotonic() - self.last_active > self.idle_timeout:
            self.stopping = True

    def _accept(self, sel) -> None:
        conn, _ = self.listener.accept()
        fds = []
        try:
            conn.settimeout(5)  # a client sends its request right after connecting
            uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
            if uid != os.getuid():
                raise PermissionError(f"uid {uid} is not this worker's")
            data, fds, _, _ = socket.recv_fds(conn, len(PROTOCOL), 3)
            if data != PROTOCOL or len(fds) != 3:
                raise ValueError("not a warm-worker request")
            request = _recv(conn)
            problem = self._refusal(request)
            if problem:
                _send(conn, {"refused": problem})
                raise ValueError(problem)
            # A client that gave up waiting (and runs the job itself) has closed its end.
            if _peer_closed(conn):
                raise ConnectionError("client left")
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                self._child(conn, fds, request)  # never returns
            _send(conn, {"pid": pid})
            print(f"job {pid}: {request['kind']} {_label(request['job'])}", flush=True)
        except (OSError, ValueError, ConnectionError, PermissionError) as err:
            print(f"warm worker: request not taken: {err}", file=sys.stderr, flush=True)
            conn.close()
            return
        finally:
            for fd in fds:
                os.close(fd)
        self.children[pid] = conn
        conn.setblocking(False)
        sel.register(conn, selectors.EVENT_READ, pid)

    def _refusal(self, request: dict) -> str | None:
        if request.get("kind") not in JOBS:
            return f"unknown job kind {request.get('kind')!r}"
        if request.get("python") != _python():
            return f"the job's Python {request.get('python')} is not the worker's {_python()}"
        if self.stopping:
            return "the worker is stopping"
        if request.get("fingerprint") != self.fingerprint:
            self.stopping = True  # every later job would be refused too
            return "the job's mhsa sources differ from those the worker imported (edited since it started?)"
        env = request.get("env") or {}
        differ = [k for k in IMPORT_TIME_ENV if env.get(k) != self.env[k]]
        if differ:
            return f"import-time environment differs ({', '.join(differ)})"
        return None

    def _child(self, conn, fds, request) -> None:
        code = 1
        try:
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.listener.close()
            conn.close()
            for other in self.children.values():
                other.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            code = _run_here(request["kind"], request["job"])
        except BaseException:  # noqa: BLE001 - a child must never return into the server's loop
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _client_event(self, sel, conn, pid) -> None:
        try:
            data = conn.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the client died (kill -9, Snakemake gone): stop its job, as for a direct job
            sel.unregister(conn)
            conn.close()
            self.children[pid] = None
            _signal(pid, signal.SIGTERM)

    def _reap(self, sel) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            print(f"job {pid}: exit {os.waitstatus_to_exitcode(status)}", flush=True)
            if conn is None:
                continue
            try:
                sel.unregister(conn)
                conn.setblocking(True)
                _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
            except (OSError, KeyError, ValueError):
                pass
            finally:
                conn.close()


def start(results_dir, repo, log_path, threads: int, owner_pid: int | None = None):
    """Start a warm worker for `results_dir` (the Snakefile's onstart); returns its Popen.

    It imports mhsa from `repo` (as the script adapters do), with THREAD_ENV = `threads` (what
    Snakemake gives a job of that many threads; jobs with another count run as their own
    processes), logs to `log_path` and stops by itself once `owner_pid` is gone. Jobs that start
    before it is ready wait for it in the backlog.
    """
    import subprocess

    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        cmd = [sys.executable, "-m", "mhsa.warm_worker", "--results", str(Path(results_dir).resolve())]
        if owner_pid:
            cmd += ["--owner", str(owner_pid)]
        # its own session: a Ctrl-C in the terminal reaches Snakemake, which stops the jobs (their
        # clients forward the signal), not the worker
        env = {**os.environ, **{var: str(threads) for var in THREAD_ENV}}
        return subprocess.Popen(cmd, cwd=str(repo), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True)


def stop(proc, timeout: float = 60.0) -> int | None:
    """Stop a worker started by `start` (SIGTERM: its running jobs get SIGTERM too), by PID."""
    import subprocess

    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _label(job_json: str) -> str:
    try:
        return str(json.loads(job_json).get("cell", ""))
    except (ValueError, AttributeError):
        return ""


def _signal(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _peer_closed(conn: socket.socket) -> bool:
    # select, not a MSG_DONTWAIT recv: a socket with a timeout waits for data before any recv
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mhsa.warm_worker", description=__doc__.split("\n")[0])
    parser.add_argument("--results", required=True, help="the results directory whose jobs it runs")
    parser.add_argument("--owner", type=int, help="stop once this PID (Snakemake) is gone")
    parser.add_argument("--idle", type=float, default=None, help="stop after this many idle seconds")
    args = parser.parse_args(argv)
    try:
        server = Server(args.results, owner_pid=args.owner, idle_timeout=args.idle)
    except OSError as err:  # EADDRINUSE: a worker already serves this results directory
        raise SystemExit(f"warm worker for {args.results}: {err}") from err
    server.serve(os.environ.get("MLFLOW_TRACKING_URI"))


if __name__ == "__main__":
    main()

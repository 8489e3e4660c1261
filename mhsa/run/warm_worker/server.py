"""The worker's side: import once, fork one child per job, and keep the promises of docs/workflow.md
"The warm worker".

- It serves only its own uid (`SO_PEERCRED`) from a socket in a private directory (channel.py).
- A child runs exactly as the job would in its own process: the client's cwd, environment and standard
  streams (passed with SCM_RIGHTS), the same job function; every mhsa module a job may import is
  imported before the first fork, so a running job keeps the code it started with.
- Sources edited after the start: the job that notices is refused (it runs in its own process with the
  new code), the worker takes no more jobs and exits once its running jobs have finished; it never stops
  them. Only `stop` (the Snakefile's onsuccess/onerror) ends running jobs.
- Forks only from a single thread (a forked multi-threaded process may deadlock; Python >= 3.12 warns),
  and only after a probe child showed that a fork can use CUDA.
- Its children die with it (PR_SET_PDEATHSIG): never a job that runs on after its worker was killed.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import pkgutil
import select
import selectors
import signal
import socket
import sys
import time
from pathlib import Path

from mhsa.io import pid_alive
from mhsa.run.warm_worker.channel import (
    PACKAGE,
    PROTOCOL,
    WorkerUnavailable,
    peer_uid,
    recv,
    send,
    socket_path,
    source_fingerprint,
)
from mhsa.run.warm_worker.client import FORWARDED, run_here

# Read at import (by Python, OpenMP, BLAS, torch): a child forked from a worker started with other
# values would not behave as a fresh process with the client's environment. The worker refuses then.
# Snakemake sets THREAD_ENV to each job's threads, so `start` gives the worker the jobs' value.
THREAD_ENV = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
IMPORT_TIME_ENV = THREAD_ENV + ("PYTHONHASHSEED", "PYTHONPATH", "LD_LIBRARY_PATH", "LD_PRELOAD",
                                "OPENBLAS_CORETYPE", "KMP_AFFINITY", "TORCH_HOME", "VIRTUAL_ENV",
                                "CONDA_PREFIX")
# pyarrow (imported by MLflow) starts jemalloc's purging thread at import; without it the worker stays
# single-threaded and jemalloc purges inline.
WORKER_ENV = {"JE_ARROW_MALLOC_CONF": "background_thread:false"}
# Modules no training job imports (the study layer, command lines): not preloaded.
NOT_PRELOADED = ("mhsa.__main__", "mhsa.tables", "mhsa.diagnostic_plots", "mhsa.run.warm_worker.__main__",
                 "mhsa.study")
PR_SET_PDEATHSIG = 1


def _import_time_env():
    from mhsa.run.cpu_kernels import ENV_VARS

    return IMPORT_TIME_ENV + ENV_VARS


def preload(tracking_uri: str | None = None) -> list[str]:
    """Import what a training job may import: torch, torchvision, MLflow (and its SQL store for a
    database URI) and every mhsa module but NOT_PRELOADED. No torch op runs here: a forked child must
    not inherit an OpenMP pool or a CUDA context. Returns the mhsa modules imported."""
    for name in ("torch", "torchvision", "mlflow"):
        importlib.import_module(name)
    from mhsa.run.tracking import uri_scheme

    if uri_scheme(tracking_uri or "") in ("sqlite", "postgresql", "mysql", "mssql"):
        importlib.import_module("mlflow.store.tracking.sqlalchemy_store")
    for info in pkgutil.walk_packages([str(PACKAGE)], "mhsa."):
        if not info.name.startswith(NOT_PRELOADED):
            importlib.import_module(info.name)
    return sorted(m for m in sys.modules if m == "mhsa" or m.startswith("mhsa."))


def fork_problem() -> str | None:
    """Why a child forked from this process could not train, or None: a probe child asks torch whether
    CUDA was initialised before the fork (then a forked job cannot use the GPU)."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            import torch

            code = 4 if torch.cuda._is_in_bad_fork() else 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 4:
        return ("CUDA was initialised in the worker before the fork, so a forked job could not use the GPU "
                "(set workflow.warm_worker: false)")
    return None if code == 0 else f"a probe child of the worker failed (exit {code})"


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _bind(path: Path) -> socket.socket:
    """Listen at `path`; a socket file left by a dead worker is replaced, a live worker's is not."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        raise WorkerUnavailable(f"a warm worker (uid {peer_uid(probe)}) already serves this results directory "
                                f"at {path}")
    except (FileNotFoundError, ConnectionRefusedError):
        path.unlink(missing_ok=True)
    finally:
        probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(64)
    return listener


class Server:
    def __init__(self, results_dir, owner_pid: int | None = None, idle_timeout: float | None = None):
        self.path = socket_path(results_dir)
        self.owner_pid = owner_pid
        self.idle_timeout = idle_timeout
        # Bound before the imports: a job that starts meanwhile waits in the backlog instead of
        # running alone.
        self.listener = _bind(self.path)
        self._log(f"listening on {self.path}")
        self.children: dict[int, socket.socket | None] = {}
        self.stopping = False  # stop: end the running jobs, then exit
        self.draining = False  # take no more jobs, exit once the running ones are done
        self.last_active = time.monotonic()

    def serve(self, tracking_uri: str | None = None) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.fingerprint = source_fingerprint()  # before the imports: an edit meanwhile shows
        self.preloaded = set(preload(tracking_uri))
        self.env = {k: os.environ.get(k) for k in _import_time_env()}
        problem = fork_problem()
        if problem:
            self._close_listener()
            raise WorkerUnavailable(problem)
        self._log(f"ready on {self.path} ({len(self.preloaded)} mhsa modules, {threads()} thread)")
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        while True:
            if (self.stopping or self.draining) and self.listener.fileno() >= 0:
                sel.unregister(self.listener)
                self._close_listener()
                if self.stopping:
                    for pid in self.children:
                        _signal(pid, signal.SIGTERM)
            if (self.stopping or self.draining) and not self.children:
                break
            for key, _ in sel.select(timeout=0.2):
                if key.fileobj is self.listener:
                    self._accept(sel)
                else:
                    self._client_event(sel, key.fileobj, key.data)
            self._reap(sel)
            self._check_lifetime()
        self._log("stopped")

    def _log(self, text: str) -> None:
        print(f"warm worker {os.getpid()}: {text}", flush=True)

    def _close_listener(self) -> None:
        self.listener.close()
        self.path.unlink(missing_ok=True)

    def _stop(self, signum, frame) -> None:
        self.stopping = True

    def _check_lifetime(self) -> None:
        if self.children:
            self.last_active = time.monotonic()
            return
        if self.owner_pid and not pid_alive(self.owner_pid):
            self.draining = True  # Snakemake is gone
        elif self.idle_timeout and time.monotonic() - self.last_active > self.idle_timeout:
            self.draining = True

    def _accept(self, sel) -> None:
        conn, _ = self.listener.accept()
        fds = []
        try:
            conn.settimeout(5)  # a client sends its request right after connecting
            uid = peer_uid(conn)
            if uid != os.getuid():
                raise PermissionError(f"uid {uid} is not this worker's")
            data, fds, _, _ = socket.recv_fds(conn, len(PROTOCOL), 3)
            if data != PROTOCOL or len(fds) != 3:
                raise ValueError("not a warm-worker request")
            request = recv(conn)
            problem = self._refusal(request)
            if problem:
                send(conn, {"refused": problem})
                raise ValueError(problem)
            if _peer_closed(conn):  # a client told to stop while it waited has closed its end
                raise ConnectionError("client left")
            pid = self._fork(conn, fds, request)
            send(conn, {"pid": pid})
            self._log(f"job {pid}: train_cell {_label(request['job'])}")
        except (OSError, ValueError, ConnectionError) as err:
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
        if request.get("python") != os.path.realpath(sys.executable):
            return f"the job's Python {request.get('python')} is not the worker's {os.path.realpath(sys.executable)}"
        if self.stopping or self.draining:
            return "the worker is stopping"
        if request.get("fingerprint") != self.fingerprint:
            if source_fingerprint() != self.fingerprint:
                self.draining = True  # later jobs run in their own processes; running ones finish
                self._log("mhsa sources edited since the start: no new jobs; running jobs finish as they are")
                return "mhsa sources were edited since the warm worker started (running jobs keep their code)"
            return "the job's mhsa sources are not the ones the worker imported"
        env = request.get("env") or {}
        differ = [k for k in self.env if env.get(k) != self.env[k]]
        if differ:
            return f"import-time environment differs ({', '.join(differ)})"
        if threads() != 1:  # a fork copies one thread; locks held by the others would never be released
            return f"the worker has {threads()} threads; forking it would be unsafe"
        return None

    def _fork(self, conn, fds, request) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            self._child(conn, fds, request, parent)  # never returns
        return pid

    def _child(self, conn, fds, request, parent: int) -> None:
        code = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
            if os.getppid() != parent:  # the worker died before the line above
                os._exit(1)
            for sig in (*FORWARDED, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            log_fd = os.dup(1)  # the worker's log, for what the job must not see
            self.listener.close()
            conn.close()
            for other in self.children.values():
                if other is not None:
                    other.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            code = run_here(request["job"])
            late = sorted(m for m in sys.modules if m.startswith("mhsa.") and m not in self.preloaded)
            if late:  # would have read sources as they are now, not as the worker imported them
                os.write(log_fd, f"job {os.getpid()}: imported after the fork: {', '.join(late)}\n".encode())
        except BaseException:  # noqa: BLE001 - a child must never return into the worker's loop
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _client_event(self, sel, conn, pid) -> None:
        """Bytes from a client are signals for its job; EOF means the client died (kill -9)."""
        try:
            data = conn.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        for signum in data:
            if signum in FORWARDED:
                _signal(pid, signum)
        if not data:  # stop its job, as for a job run in its own process
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
            self._log(f"job {pid}: exit {os.waitstatus_to_exitcode(status)}")
            if conn is None:
                continue
            try:
                sel.unregister(conn)
                conn.setblocking(True)
                send(conn, {"exit": os.waitstatus_to_exitcode(status)})
            except (OSError, KeyError, ValueError):
                pass
            finally:
                conn.close()


def _label(job_json: str) -> str:
    try:
        return str(json.loads(job_json).get("cell", ""))
    except (ValueError, AttributeError):
        return ""


def _signal(pid: int, sig) -> None:
    """Signal a child of this worker (pids come from os.fork, never from a client)."""
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

"""The job's side: hand a training job to the warm worker of its results directory, else run it here.

Nothing leaves this process before the listening socket is proved to belong to this user (private
directory, `SO_PEERCRED`). Signals that Snakemake sends the job (SIGTERM, SIGINT, SIGHUP) travel to the
worker over the connection, and the worker signals the child it forked: this process never signals a
PID it was told about. If the worker does not end the job within `GRACE_S` of a signal, this process
exits anyway, as a job would that ignored it. If the worker dies, its children die with it
(PR_SET_PDEATHSIG) and this process waits until the child is gone before it reports the failure.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

from mhsa.run.warm_worker.channel import (
    PROTOCOL,
    Messages,
    WorkerUnavailable,
    peer_uid,
    send,
    socket_path,
    source_fingerprint,
)

# Inside a scheduler's job the scheduler owns the resources: a job there must not run in a process
# tree that the scheduler does not account for.
SCHEDULER_ENV = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GRACE_S = 60.0  # after a forwarded signal, how long the worker has to end the job


def run_job(job, results_dir: str | os.PathLike, connect_timeout: float = 300.0) -> int:
    """Run `job` (a mhsa.run.job.TrainJob) in the warm worker of `results_dir` if one takes it,
    else in this process. Returns the job's exit code (0 = success)."""
    text = job.to_json()
    if unusable_here() is None:
        code = _submit(text, results_dir, connect_timeout)
        if code is not None:
            return code
    return run_here(text)


def unusable_here() -> str | None:
    """Why jobs started in this environment must run as their own processes, or None."""
    if os.environ.get("MHSA_WARM_WORKER", "1") == "0":
        return "MHSA_WARM_WORKER=0"
    found = [v for v in SCHEDULER_ENV if os.environ.get(v)]
    return f"inside a scheduler job ({found[0]})" if found else None


def run_here(text: str) -> int:
    """The job in this process (also the body of a forked child); its exit code."""
    from mhsa.run.job import TrainJob, run

    try:
        run(TrainJob.from_json(text))
    except SystemExit as exit_:  # mhsa.run.job_log.log_to exits 1 after logging the failure
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


def _say(message: str) -> None:
    print(f"warm worker: {message}", file=sys.stderr, flush=True)


def _connect(results_dir) -> socket.socket | None:
    """A connection to this user's worker for `results_dir`, or None (said aloud unless none runs)."""
    try:
        path = socket_path(results_dir)
    except WorkerUnavailable as err:
        _say(f"{err}; running the job in this process")
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:  # no worker (none started, stopped, or a stale socket file)
        sock.close()
        return None
    uid = peer_uid(sock)
    if uid != os.getuid():  # cannot happen in a private directory; never talk to it if it does
        sock.close()
        _say(f"{path} is served by uid {uid}, not by you; running the job in this process")
        return None
    return sock


def _submit(text: str, results_dir, connect_timeout: float) -> int | None:
    """The job's exit code from the worker, or None when there is no worker or it refuses."""
    sock = _connect(results_dir)
    if sock is None:
        return None
    signals: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: signals.append(signum)) for sig in FORWARDED}
    try:
        socket.send_fds(sock, [PROTOCOL], [0, 1, 2])
        send(sock, {"job": text, "cwd": os.getcwd(), "env": dict(os.environ), "python": os.path.realpath(
            sys.executable), "fingerprint": source_fingerprint()})
        return _follow(sock, signals, connect_timeout)
    except OSError as err:
        if signals:  # told to stop before the worker took the job: do not run it here either
            return 128 + signals[0]
        _say(f"{err}; running the job in this process")
        return None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()


def _follow(sock: socket.socket, signals: list[int], connect_timeout: float) -> int | None:
    """Wait for the worker's answers, passing on signals; the job's exit code, or None if refused."""
    messages, child, sent = Messages(sock), None, 0
    started, signalled = time.monotonic(), None
    while True:
        if signals and child is None:
            return 128 + signals[0]  # the worker has not taken it: closing the connection cancels it
        while sent < len(signals):
            sock.sendall(bytes([signals[sent]]))
            sent += 1
            signalled = signalled or time.monotonic()
        if signalled and time.monotonic() - signalled > GRACE_S:
            _say(f"the job did not stop within {GRACE_S:.0f} s of signal {signals[0]}; leaving it to the worker")
            return 128 + signals[0]
        if child is None and time.monotonic() - started > connect_timeout:
            raise TimeoutError(f"no answer from the warm worker within {connect_timeout:.0f} s")
        try:
            msg = messages.poll(0.5)
        except ConnectionError:
            if child is None:
                raise
            return _lost(child)
        if msg is None:
            continue
        if "refused" in msg:
            _say(f"{msg['refused']}; running the job in this process")
            return None
        if "pid" in msg:
            child = int(msg["pid"])
        elif "exit" in msg:
            code = int(msg["exit"])
            return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


def _running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (read from /proc: no signal is sent)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _lost(child: int, timeout: float = 60.0) -> int:
    """The worker went away while the job ran: its child dies with it (PR_SET_PDEATHSIG, SIGKILL);
    report the failure only once the child is gone, so a job is never both failed and alive."""
    deadline = time.monotonic() + timeout
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _running(child):
        _say(f"the worker died; its job process {child} is still running after {timeout:.0f} s")
    else:
        _say(f"the worker died and its job process {child} with it")
    return 1

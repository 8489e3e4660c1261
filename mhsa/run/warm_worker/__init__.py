"""The warm worker: torch, torchvision, MLflow and mhsa imported once, one forked process per job.

A demo cell trains for seconds but a fresh Python process spends ~7 s importing torch, torchvision,
MLflow and its SQL store before the first step. For a local run whose cells are short (the synthetic
presets; `workflow.warm_worker: auto`, docs/workflow.md "The warm worker") the Snakefile's `onstart`
calls `start` for the run's results directory and `onsuccess`/`onerror` call `stop` by PID; each
`train_cell` job's adapter then calls `run_job`, which sends the job to the worker (`client`), which
forks a child that runs it (`server`). `channel` holds the socket, its private directory and the checks
of who is at the other end.

What a job sees is what it would see run directly: `run_job` runs the job in its own process whenever
the worker is absent, refuses (another Python, edited mhsa sources, other import-time environment
variables) or cannot be trusted, and inside a scheduler's job.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mhsa.run.warm_worker.channel import WorkerUnavailable, private_dir
from mhsa.run.warm_worker.client import run_job, unusable_here
from mhsa.run.warm_worker.server import THREAD_ENV, WORKER_ENV

__all__ = ["run_job", "unusable_here", "start", "stop", "WorkerUnavailable", "THREAD_ENV"]


def start(results_dir, repo, log_path, threads: int, owner_pid: int | None = None, timeout: float = 60.0):
    """Start a warm worker for `results_dir` (the Snakefile's onstart) and return its Popen once it
    listens; WorkerUnavailable (saying why) if it cannot.

    It imports mhsa from `repo` (as the script adapters do), with THREAD_ENV = `threads` (what
    Snakemake gives a job of that many threads; jobs with another count run as their own processes),
    logs to `log_path` and stops by itself once `owner_pid` is gone. Jobs that start before it has
    imported everything wait for it in the backlog.
    """
    private_dir()  # checked here, before any process starts
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    before = Path(log_path).stat().st_size if Path(log_path).exists() else 0
    with open(log_path, "a") as log:
        cmd = [sys.executable, "-m", "mhsa.run.warm_worker", "--results", str(Path(results_dir).resolve())]
        if owner_pid:
            cmd += ["--owner", str(owner_pid)]
        # its own session: a Ctrl-C in the terminal reaches Snakemake, which stops the jobs (their
        # clients forward the signal), not the worker
        env = {**os.environ, **{var: str(threads) for var in THREAD_ENV}, **WORKER_ENV}
        proc = subprocess.Popen(cmd, cwd=str(repo), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:  # until it listens (it says so before its imports) or gives up
        with open(log_path) as fh:
            fh.seek(before)
            lines = [line.strip() for line in fh.read().splitlines() if line.strip()]
        if any(": listening on " in line for line in lines):
            return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise WorkerUnavailable(lines[-1] if lines else f"the warm worker did not start (see {log_path})")
        time.sleep(0.02)


def stop(proc, timeout: float = 60.0) -> int | None:
    """Stop a worker started by `start` (SIGTERM: its running jobs get SIGTERM too), by PID."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()

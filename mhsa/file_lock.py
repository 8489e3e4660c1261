"""A blocking inter-process lock: an exclusive `fcntl.flock` on a file beside what it guards.

For one-time work that several processes may start together and that must run once: creating a
new sqlite MLflow store (`mhsa.tracking.store_lock`), generating a synthetic data set
(`mhsa.data.synthetic.generate`). The others wait, then find the work done. The OS drops the lock
when its holder exits or is killed, so a crash never blocks the next process. `try_hold` is the
non-waiting form, for those who must not wait: a cell's second trainer (`mhsa.cell_lock` refuses
at once and names the holder) and GPU slots (`mhsa.gpu_slots` tries the next slot). The lock file
must be on a file system where flock works across the processes involved (local disk, or NFSv4).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def held(path: str | Path) -> Iterator[None]:
    """Wait until this process holds the exclusive lock on `path` (created, with its parent)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def try_hold(path: str | Path):
    """Take the exclusive lock on `path` without waiting: the open file (keep it open to keep the
    lock; close it to release) with "<pid> on <host>" written in it, or None when another process
    holds the lock (read its holder with `holder`)."""
    fh = open(path, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    except BaseException:
        fh.close()
        raise
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()} on {os.uname().nodename}\n")
    fh.flush()
    return fh


def holder(path: str | Path) -> str:
    """The "<pid> on <host>" line the lock's holder wrote, or "unknown" (it may not have written yet)."""
    try:
        return Path(path).read_text().strip() or "unknown"
    except OSError:
        return "unknown"

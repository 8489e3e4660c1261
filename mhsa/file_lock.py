"""A blocking inter-process lock: an exclusive `fcntl.flock` on a file beside what it guards.

For one-time work that several processes may start together and that must run once: creating a
new sqlite MLflow store (`mhsa.tracking.store_lock`), generating a synthetic data set
(`mhsa.data.synthetic.generate`). The others wait, then find the work done. The OS drops the lock
when its holder exits or is killed, so a crash never blocks the next process. (Trainers of one
cell do not wait: `mhsa.cell_lock` refuses at once.) The lock file must be on a file system where
flock works across the processes involved (local disk, or NFSv4).
"""

from __future__ import annotations

import contextlib
import fcntl
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

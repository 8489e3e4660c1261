"""One live trainer per cell: an exclusive `fcntl.flock` on `<dir>/.train.lock`.

A rerun (after Snakemake itself was killed, say) may start a cell whose earlier job is still
training as an orphan. Two trainers on one cell would interleave checkpoints and metrics, so the
second one does not wait: it stops at once with a `CellBusyError` naming the PID that holds the
cell (stop that process or let it finish, then rerun). As with the GPU slots the OS drops the
lock when its holder exits or is killed, so a crashed trainer never blocks a rerun. The lock must
live on a file system where flock works across the processes involved (local disk, or NFSv4).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from mhsa.errors import CellBusyError
from mhsa.io import holder, try_hold

LOCK_NAME = ".train.lock"


def _acquire(directory: Path, cell: str):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fh = try_hold(path)
    if fh is None:
        who = holder(path)
        raise CellBusyError(
            f"cell {cell!r} is already being trained by process {who} (lock {path}); let it finish "
            f"or stop it (kill {who.split()[0]}), then rerun")
    return fh


@contextlib.contextmanager
def cell_lock(directories, cell: str) -> Iterator[None]:
    """Hold the cell's lock in each of `directories` (its run dir and checkpoint dir) or raise."""
    held = []
    try:
        for d in dict.fromkeys(Path(d).resolve() for d in directories):
            held.append(_acquire(d, cell))
        yield
    finally:
        for fh in reversed(held):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()


def is_locked(directory: str | Path) -> bool:
    """True while a live process trains the cell whose run dir is `directory`."""
    path = Path(directory) / LOCK_NAME
    if not path.exists():
        return False
    with open(path) as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return False

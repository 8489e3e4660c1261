"""File-system primitives: atomic writes, inter-process locks, live PIDs.

Atomic writes: a crash never leaves a half-written metrics.json, table or checkpoint.

The temp file sits beside its target as ``.<name>.<host>_<pid>.<random>.tmp``. A process killed
mid-write (kill -9, OOM) leaves it behind; the next write of the same target, or
`clean_stale_temps` at start, removes the temp files whose writer is gone: a dead pid on this
host, or (another host, or an older name form) a file untouched for `STALE_AFTER_S` seconds.

Locks (`held`, blocking): an exclusive `fcntl.flock` on a file beside what it guards, for one-time
work that several processes may start together and that must run once: creating a new sqlite MLflow
store (`mhsa.run.tracking.store_lock`), generating a synthetic data set (`mhsa.data.synthetic.generate`).
The others wait, then find the work done. The OS drops the lock when its holder exits or is killed, so a
crash never blocks the next process. `try_hold` is the
non-waiting form, for those who must not wait: a cell's second trainer (`mhsa.run.cell_lock` refuses
at once and names the holder) and GPU slots (`mhsa.run.gpu_slots` tries the next slot). The lock file
must be on a file system where flock works across the processes involved (local disk, or NFSv4).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

STALE_AFTER_S = 3600.0


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _is_stale(tmp: Path, name: str) -> bool:
    m = re.fullmatch(rf"\.{re.escape(name)}\.([A-Za-z0-9-]+)_(\d+)\.[A-Za-z0-9_]+\.tmp", tmp.name)
    if m and m.group(1) == _HOST:
        return int(m.group(2)) != os.getpid() and not pid_alive(int(m.group(2)))
    try:
        return time.time() - tmp.stat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:
        return False


def clean_stale_temps(path: str | Path) -> list[Path]:
    """Remove temp files of `path` left by killed writers; returns what was removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for tmp in path.parent.glob(f".{_glob_escape(path.name)}.*.tmp"):
        if _is_stale(tmp, path.name):
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:  # another process cleaned it first
                pass
    return removed


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` on a temp file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}_{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)

    return atomic_write(path, _write)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, _write)


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=float) + "\n")


# ------------------------------------------------------------------------------ locks
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

"""File-system primitives: atomic writes, inter-process locks, live PIDs, strict YAML.

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

Strict YAML (`load_file`, `load_text`): PyYAML's safe loader, except that a key given twice in one
mapping is an error naming the file, the line and the key. PyYAML (and Snakemake's `configfile:` loader)
keep the last of two equal keys without a word, so a second `baseline:` variant or a repeated `lambda1:`
would silently replace the first (docs/reliability.md, "Duplicates"). Merge keys (`<<: *anchor`) may
still be overridden by a key of the mapping itself: that is YAML's meaning of a merge.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from mhsa.errors import ConfigError

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


FULL_BELOW_BYTES = 1 << 20  # a file system with less free space than this counts as full
# what a write itself fails with (an unrelated error earlier in a chain, e.g. ENOENT, is not one)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                          errno.EIO})


def _os_error_in_chain(err: BaseException) -> OSError | None:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _disk_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may write into the reserved blocks
    return blocks * st.f_frsize < FULL_BELOW_BYTES


def write_failure(err: BaseException, target: Path, tmp: str | None = None) -> OSError | None:
    """The OSError to report for a failed write of `target`, naming `target` (not its temp file), so
    that `mhsa.errors.describe` gives the one line of docs/reliability.md ("Clear errors"); None
    when `err` is not a write failure. torch.save to a path hides the errno in a RuntimeError
    ("unexpected pos ..."): an OSError in its chain, else a file system left without free space,
    tells what it was. Call it before the temp file is removed (that frees the space again)."""
    if isinstance(err, OSError):
        if err.errno not in WRITE_ERRNOS:
            return None  # not a write failure (e.g. a DataError that is also an OSError): as it is
        if err.filename is None or err.filename == tmp:  # an error about another file keeps its name
            err.filename = str(target)
        return err
    if not isinstance(err, Exception):
        return None  # KeyboardInterrupt, SystemExit: not a write failure
    cause = _os_error_in_chain(err)
    if cause is not None:
        return OSError(cause.errno, cause.strerror or os.strerror(cause.errno), str(target))
    if _disk_full(target.parent):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
    return None


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` on a temp file beside `path`, then rename it over `path`.

    A write that fails for lack of space or permission raises an OSError naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}_{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        err.filename = str(path)
        raise
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        failure = write_failure(err, path, tmp)
        if os.path.exists(tmp):
            os.unlink(tmp)
        if failure is None or failure is err:
            raise
        raise failure from err
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
def results_dir_problem(path: str | Path, write: bool = True) -> str | None:
    """Why the directory `path` (created if missing) cannot take results, or None: a file in its
    place or on its path, or (`write`) a folder that cannot be written (read-only, permissions)."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the nearest part of the path that exists: where writing starts
    if not probe.is_dir():
        return (f"results_dir {path}: {probe} is a file, not a directory; remove it or choose another "
                "results_dir (--config results_dir=...)")
    if write and not os.access(probe, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if _read_only(probe) else "is not writable by you"
        return f"results_dir {path}: {probe} {why}; choose a writable results_dir (--config results_dir=...)"
    return None


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# ------------------------------------------------------------------------- strict YAML
_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(ConfigError):
    """A key given twice in one YAML mapping."""


def _where(mark) -> str:
    return f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}"


class StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that rejects a key repeated in one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self._check_unique_keys(node)
        return super().construct_mapping(node, deep=deep)

    def _check_unique_keys(self, node: yaml.MappingNode) -> None:
        first: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                continue
            if earlier is not key_node.start_mark:
                raise DuplicateKeyError(
                    f"{_where(key_node.start_mark)}: key {key!r} is given twice in one mapping (first at "
                    f"line {earlier.line + 1}); YAML would keep only the last one: remove or rename one of them")


def load_text(text: str, name: str = "<string>"):
    """Parse `text`; `name` (a file, a --set item) is what error marks show."""
    loader = StrictLoader(text)
    loader.name = name  # the reader's name: every mark (line, column) carries it
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_file(path: str | Path):
    """Parse the YAML file at `path` (malformed YAML raises yaml.MarkedYAMLError naming the file)."""
    path = Path(path)
    return load_text(path.read_text(encoding="utf-8"), str(path))

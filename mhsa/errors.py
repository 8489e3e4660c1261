"""Errors a user can fix, and how the command line and the Snakemake job log report them.

A `UserError` message names the config key or the file and says what to do; the CLI and the job
log print it as one or two lines (the traceback goes to the log file, or is shown with --debug).
`describe` also turns the few library errors that are user mistakes (a read-only or full disk, a
file where a directory should be, malformed YAML) into such a line.
"""

from __future__ import annotations

import contextlib
import errno
import sys


class UserError(Exception):
    """A mistake in the config, the data or the environment; the message says what to do."""


class ConfigError(UserError, ValueError):
    """A bad config key or value; the message names the key (dotted) or the config entry. It lives here,
    below `mhsa.config` (which re-exports it), so every layer can raise it without importing the config."""


class DataError(UserError):
    """A data set that is missing, incomplete, unreadable or unlike its published statistics."""


class DeviceError(ConfigError):
    """The configured `device` does not exist on this machine (a mistake in the config key `device`)."""


class WeightsError(UserError):
    """Pretrained weights that cannot be found or loaded."""


class CheckpointError(UserError):
    """No usable checkpoint although one was written (all corrupt); says how to start over."""


class CellBusyError(UserError):
    """Another live process is training the same cell."""


class ResultsError(UserError):
    """A results file the tables, figures, diagnostics or sync read (metrics.json, attention.npz,
    paper_results.csv, a runs directory) that is missing, corrupt or inconsistent; the message names
    the file and what to do (usually: delete it, and Snakemake retrains the cell)."""


_OS_HINTS = {
    errno.EROFS: "the file system is read-only; choose a writable output directory",
    errno.EACCES: "permission denied; choose a directory you can write to",
    errno.EPERM: "operation not permitted; choose a directory you can write to",
    errno.ENOSPC: "the disk is full; free space or choose another output directory",
    errno.EDQUOT: "the disk quota is exceeded; free space or choose another output directory",
    errno.EEXIST: "a file is in the way of a directory; remove it or choose another path",
    errno.ENOTDIR: "a file is in the way of a directory; remove it or choose another path",
    errno.EISDIR: "a directory is in the way of a file; remove it or choose another path",
    errno.EFBIG: "the file is larger than this system allows (ulimit -f, the file system's limit); "
                 "choose another output directory",
    errno.EIO: "an input/output error of the disk; check the disk or choose another output directory",
}


def _worker_message(text: str) -> str:
    """DataLoader workers re-raise with the worker's traceback in the message: keep its last line."""
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    head, sep, tail = last.partition(": ")
    return tail if sep and "." in head and " " not in head else last


def describe(err: BaseException) -> str | None:
    """One or two lines for a user mistake, or None when `err` looks like a bug (keep the traceback)."""
    if isinstance(err, UserError):
        return _worker_message(str(err))
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is a dependency
        yaml = None
    if yaml is not None and isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark, context = err.problem_mark, ""
        if err.context and err.context_mark is not None and err.context_mark.line != mark.line:
            context = f"{err.context} that starts at line {err.context_mark.line + 1}: "  # where it went wrong
        return (f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}: malformed YAML "
                f"({context}{err.problem}); fix the syntax there")
    if isinstance(err, OSError) and err.errno in _OS_HINTS:
        where = err.filename if err.filename is not None else "a file"
        return f"{where}: {err.strerror}; {_OS_HINTS[err.errno]}"
    return None


@contextlib.contextmanager
def cli_errors():
    """The small command lines (`python -m mhsa tables`, `plots`, `diagnostic-plots`): a user
    mistake prints `error: <one line>` and exits 2 (a config error) or 1, as `python -m mhsa` does;
    anything else is a bug and keeps its traceback."""
    try:
        yield
    except Exception as err:
        message = describe(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2 if isinstance(err, ConfigError) else 1) from None

"""A Snakemake job's log: python logging, stdout and stderr of the job go to its log file, and a
failing job prints one or two lines naming what went wrong (the traceback stays in the log).

Used by the workflow's script adapters and by jobs forked from the warm worker (mhsa.run.warm_worker).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from pathlib import Path


def _summary(err: Exception) -> str:
    """One line for the terminal: `mhsa.errors.describe` for user mistakes, else the exception's last line."""
    try:
        from mhsa.errors import describe
    except ImportError:  # pragma: no cover - mhsa not importable: the traceback in the log says why
        describe = None
    message = describe(err) if describe else None
    if message is None:
        first = (str(err).strip().splitlines() or [""])[0]
        message = f"{type(err).__name__}: {first}" if first else type(err).__name__
    return message


@contextlib.contextmanager
def log_to(path):
    """Send python logging, stdout and stderr of this job to its Snakemake log file.

    A failing job keeps its full traceback in the log file and prints one or two lines to the
    terminal (what went wrong, naming the key or file, and where the log is), then exits 1.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    failure: Exception | None = None
    with open(path, "a", buffering=1) as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                try:
                    yield logging.getLogger("workflow")
                except Exception as err:
                    failure = err
                    fh.write("job failed:\n" + "".join(traceback.format_exception(err)))
                    fh.write(f"error: {_summary(err)}\n")
                except BaseException:  # interrupts (SIGTERM from Snakemake/SLURM): as before
                    logging.getLogger("workflow").exception("job failed")
                    raise
        finally:
            root.removeHandler(handler)
    if failure is not None:
        print(f"error: {_summary(failure)}\n(full traceback in {path})", file=sys.stderr, flush=True)
        raise SystemExit(1)

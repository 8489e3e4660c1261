"""Helpers shared by the thin Snakemake script adapters: route logging/stdout to snakemake.log."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path


@contextlib.contextmanager
def log_to(path):
    """Send python logging, stdout and stderr of this job to its Snakemake log file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
                except BaseException:
                    logging.getLogger("workflow").exception("job failed")
                    raise
        finally:
            root.removeHandler(handler)


def add_repo_to_path(script_file: str) -> None:
    """Make `mhsa` importable when the package is not installed in the job's environment."""
    repo = Path(script_file).resolve().parents[2]
    if (repo / "mhsa").is_dir() and str(repo) not in sys.path:
        sys.path.insert(0, str(repo))

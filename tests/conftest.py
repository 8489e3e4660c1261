"""Helpers shared by several test modules."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def copy_workflow(dest: Path) -> Path:
    """A runnable copy of Snakefile, config.yaml, workflow/ and envs/ in `dest` (tests never write
    into the repository's results/)."""
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("workflow", "envs"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    return dest

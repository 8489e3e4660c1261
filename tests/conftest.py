"""Fixtures shared by several test modules (fixtures rather than imports: tests/cluster has a
conftest.py of its own, so `from conftest import ...` would be ambiguous)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _copy_workflow(dest: Path) -> Path:
    """A runnable copy of Snakefile, config.yaml, workflow/ and envs/ in `dest` (tests never write
    into the repository's results/)."""
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("workflow", "envs"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    return dest


@pytest.fixture(scope="session")
def copy_workflow():
    """`copy_workflow(dest) -> dest`: a runnable copy of the workflow in `dest`."""
    return _copy_workflow

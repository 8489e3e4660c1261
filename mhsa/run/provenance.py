"""What produced a run: git SHA, host, library versions (logged at start, stored in metrics.json)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path


def git_sha(cwd: str | Path | None = None) -> str:
    """The commit of the code that runs (with '-dirty' if the tree has changes), or 'unknown'."""
    here = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict:
    import torch
    import torchvision

    return {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "git_sha": git_sha()}

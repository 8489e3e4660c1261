"""What the thin Snakemake script adapters share: making `mhsa` importable (their job log is
mhsa.run.job_log.log_to)."""

import sys
from pathlib import Path


def add_repo_to_path(script_file: str) -> None:
    """Make `mhsa` importable when the package is not installed in the job's environment."""
    repo = Path(script_file).resolve().parents[2]
    if (repo / "mhsa").is_dir() and str(repo) not in sys.path:
        sys.path.insert(0, str(repo))

"""The commands users type keep working after the package's regrouping: `python -m mhsa <command>`, and
the old spellings `python -m mhsa.tables` / `python -m mhsa.diagnostic_plots`."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = {
    "train": ["mhsa", "train"],
    "sync-mlflow": ["mhsa", "sync-mlflow"],
    "tables": ["mhsa", "tables"],
    "plots": ["mhsa", "plots"],
    "diagnostic-plots": ["mhsa", "diagnostic-plots"],
    "old tables": ["mhsa.tables"],
    "old diagnostic_plots": ["mhsa.diagnostic_plots"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_answers_help(name):
    out = subprocess.run([sys.executable, "-m", *COMMANDS[name], "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m mhsa"), out.stdout[:200]


def test_an_old_spelling_runs_the_same_command_as_its_successor(tmp_path):
    """Both report the same one-line error for the same missing runs folder (and exit alike)."""
    args = ["--runs", str(tmp_path / "no_such_runs"), "--out", str(tmp_path / "out")]
    old = subprocess.run([sys.executable, "-m", "mhsa.tables", *args], capture_output=True, text=True, timeout=120)
    new = subprocess.run([sys.executable, "-m", "mhsa", "tables", *args], capture_output=True, text=True, timeout=120)
    assert old.returncode == new.returncode != 0
    assert old.stderr == new.stderr and "no_such_runs" in new.stderr

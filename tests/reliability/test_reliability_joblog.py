"""The Snakemake job log (mhsa.run.job_log.log_to): a failing job prints one line naming
the key or file plus where its log is, exits 1, and keeps the full traceback in the log file."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _job(tmp_path, body: str) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / "logs" / "train" / "c1.log"
    code = textwrap.dedent(f"""
        import sys
        from mhsa.run.job_log import log_to
        with log_to({str(log)!r}) as log:
            log.info("job starts")
    """) + textwrap.indent(textwrap.dedent(body), "    ")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return proc, log.read_text()


def test_user_error_is_one_line_with_the_traceback_in_the_log(tmp_path):
    proc, log = _job(tmp_path, """
        from mhsa.data.datasets import load
        load("market1501", "/nonexistent/market")
    """)
    assert proc.returncode == 1
    lines = proc.stderr.rstrip().splitlines()
    assert len(lines) == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: market1501: data set not found under /nonexistent/market")
    assert lines[1] == f"(full traceback in {tmp_path / 'logs' / 'train' / 'c1.log'})"
    assert "job starts" in log and "Traceback" in log and "DatasetNotFoundError" in log
    assert lines[0] in log


def test_unexpected_error_is_summarised_too(tmp_path):
    proc, log = _job(tmp_path, """
        raise ZeroDivisionError("a bug\\nsecond line")
    """)
    assert proc.returncode == 1
    assert proc.stderr.rstrip().splitlines()[0] == "error: ZeroDivisionError: a bug"
    assert "Traceback" in log and "ZeroDivisionError: a bug" in log


def test_success_is_silent(tmp_path):
    proc, log = _job(tmp_path, "print('hello')")
    assert proc.returncode == 0 and proc.stderr == "" and "hello" in log

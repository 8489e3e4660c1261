"""Per-cell lock (docs/reliability.md, case 10): a rerun never trains a cell that another live process is
training; it stops at once naming that PID. A killed holder frees the cell."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mhsa.errors import CellBusyError, describe
from mhsa.run.cell_lock import cell_lock, is_locked

REPO = Path(__file__).resolve().parents[2]


def _holder(run_dir: Path, ckpt_dir: Path) -> subprocess.Popen:
    """Another process training the cell: holds its lock until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from mhsa.run.cell_lock import cell_lock
        with cell_lock([{str(run_dir)!r}, {str(ckpt_dir)!r}], "c1"):
            print("locked", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_trainer_of_a_cell_is_refused_naming_the_pid(tmp_path):
    run_dir, ckpt_dir = tmp_path / "runs" / "c1", tmp_path / "ckpt" / "c1"
    holder = _holder(run_dir, ckpt_dir)
    try:
        assert is_locked(run_dir)
        for dirs in ([run_dir], [ckpt_dir], [tmp_path / "elsewhere", ckpt_dir]):
            with pytest.raises(CellBusyError) as info:
                with cell_lock(dirs, "c1"):
                    pytest.fail("entered a cell another process trains")
            msg = describe(info.value)
            assert f"process {holder.pid} on" in msg and f"kill {holder.pid}" in msg and "'c1'" in msg
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not is_locked(run_dir)  # kill -9 frees the cell: a crash never blocks the rerun
    with cell_lock([run_dir, ckpt_dir], "c1"):
        assert is_locked(run_dir)
        assert (run_dir / ".train.lock").read_text().split()[0] == str(os.getpid())
    assert not is_locked(run_dir)


def test_cli_refuses_a_busy_cell_in_one_line(tmp_path):
    out = tmp_path / "out"
    holder = _holder(out, out / "checkpoints")
    try:
        proc = subprocess.run([sys.executable, "-m", "mhsa", "train", str(REPO / "mhsa/configs/smoke.yaml"),
                               "--set", "tracking.enabled=false", "--out", str(out)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.rstrip().splitlines()
    assert lines[-2].startswith("error: cell 'smoke' is already being trained by process ")
    assert str(holder.pid) in lines[-2]
    assert not (out / "metrics.json").exists() and not (out / "checkpoints" / "last.pt").exists()

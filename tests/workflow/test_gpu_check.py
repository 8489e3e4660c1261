"""benchmarks/gpu_check.py --cpu-dry: the GPU check's code paths (the workflow smoke through the warm worker,
the training-step benchmark, full-pipeline evaluation and re-ranking) at a tiny size on the CPU, so the script
runs on the day a GPU arrives (benchmarks/README.md, "Paper scale")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_gpu_check_runs_every_stage_in_its_cpu_dry_mode():
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu-dry"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "every stage ran" in out and "FAILED" not in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| measure")]
    names = [r.split(" | ")[0][2:] for r in rows]
    assert names[0] == "device" and "cpu (dry run)" in rows[0]
    smoke = next(r for r in rows if r.startswith("| smoke"))
    assert "ok on cpu: 3 steps" in smoke  # the step cap of the smoke cell, trained where it was asked to
    assert any(n.startswith("train ") for n in names)  # the benchmark's own step
    assert any(n.startswith("eval: features of 200 images") for n in names)
    assert any(n.startswith("eval: re_ranking at 200 images") for n in names)

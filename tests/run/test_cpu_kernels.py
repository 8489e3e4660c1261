"""The CPU-kernel pin (mhsa.run.cpu_kernels): a pinned run gives the same bytes whatever instruction set the
environment would otherwise give its kernels; unpinned, the kernels' instruction set moves the numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mhsa.config import ConfigError, build_run_config
from mhsa.run import cpu_kernels

REPO = Path(__file__).resolve().parents[2]
EMULATED = {  # what another machine's kernels would be, as far as this one can emulate them
    "native": {},
    "aten_default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten_avx2_onednn_avx": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX", "MKL_CBWR": "AVX"},
}


def test_each_level_names_every_library_and_native_sets_nothing():
    assert cpu_kernels.pin_env("native") == {}
    for level in ("portable", "avx2"):
        assert set(cpu_kernels.pin_env(level)) == set(cpu_kernels.ENV_VARS)
    assert cpu_kernels.pin_env("portable")["MKL_CBWR"] == "COMPATIBLE"  # MKL's cross-vendor branch
    with pytest.raises(ConfigError, match="'cpu_kernels'.*native|portable|avx2"):
        cpu_kernels.pin_env("avx512")


def test_the_run_config_validates_the_level_and_keeps_it_out_of_the_weights():
    from mhsa.config import weights_digest

    with pytest.raises(ConfigError, match="cpu_kernels"):
        build_run_config({"cpu_kernels": "fast"})
    assert weights_digest(build_run_config({"cpu_kernels": "portable"})) == weights_digest(build_run_config({}))


def test_a_pin_after_torch_is_imported_is_refused_and_check_names_the_key(monkeypatch):
    for var in cpu_kernels.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="torch and numpy were imported before the pin"):
        cpu_kernels.pin("portable")
    with pytest.raises(ConfigError, match="'cpu_kernels' is 'portable'.*environment differs"):
        cpu_kernels.check("portable")
    cpu_kernels.check("native")  # nothing to check


def _train(tmp_path: Path, name: str, level: str, env: dict) -> dict:
    """One epoch of the smoke cell through the CLI in a fresh process; its loss curve and metrics."""
    out = tmp_path / name
    base = {k: v for k, v in os.environ.items() if k not in cpu_kernels.ENV_VARS}
    cmd = [sys.executable, "-m", "mhsa", "train", str(REPO / "mhsa/configs/smoke.yaml"), "--out", str(out),
           "--set", f"cpu_kernels={level}", "--set", "optim.epochs=1", "--set", "optim.milestones=[]",
           "--set", "tracking.enabled=false", "--set", "keep_weights=false", "--set", "threads=1",
           "--set", f"data.root={tmp_path / 'data'}", "--set", "data.cache_dir=" + str(tmp_path / "cache"),
           "--set", f"eval.targets={{market1501: {{root: {tmp_path / 'data'}, modes: [global, concat]}}}}"]
    proc = subprocess.run(cmd, env={**base, **env}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    history = [{k: v for k, v in epoch.items() if k != "images_per_s"} for epoch in metrics["history"]]  # a timing
    return {"history": history, "eval": metrics["eval"], "kernels": metrics["train"]["cpu_capability"]}


@pytest.fixture(scope="module")
def portable_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kernels")
    return tmp, {name: _train(tmp, name, "portable", env) for name, env in EMULATED.items()}


@pytest.mark.slow
def test_a_portable_run_gives_the_same_bytes_under_every_emulated_instruction_set(portable_runs):
    _, runs = portable_runs
    first = runs["native"]
    assert first["kernels"] == "DEFAULT"
    for name, run in runs.items():
        assert run == first, f"the portable run under {name} differs from the one under native"


@pytest.mark.slow
@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "DEFAULT", reason="this CPU has no vector kernels")
def test_unpinned_the_instruction_set_moves_the_numbers(portable_runs):
    """The reason for the pin: the same run with this CPU's own kernels differs in its losses."""
    tmp, runs = portable_runs
    native = _train(tmp, "unpinned", "native", {})
    assert native["kernels"] != runs["native"]["kernels"] == "DEFAULT"
    assert native["history"] != runs["native"]["history"]

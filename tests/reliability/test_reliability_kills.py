"""kill -9 at every moment of a cell's life, then rerun: the cell ends with the metrics of an
uninterrupted run, its final checkpoint (last.pt, weights only) and no temp files (docs/reliability.md, cases 5, 6).

The kill is injected, not timed: a small wrapper around `python -m mhsa` sends SIGKILL to its own
process at a chosen optimiser step, in the middle of a checkpoint write (half the temp file
written), or right after metrics.json; every moment is therefore hit on every run.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "mhsa" / "configs" / "smoke.yaml"
ARGS = ["train", str(SMOKE), "--set", "tracking.enabled=false", "--set", "optim.epochs=2",
        "--set", "eval.attention_images=2", "--set", "data.height=32", "--set", "data.width=16",
        "--set", "model.num_heads=2"]  # a 2x1 feature map: 2 positions

KILLER = """
import os, signal, sys
import torch
import mhsa.run.train
when, n = os.environ["KILL_AT"].split(":")
count = {"save": 0, "step": 0}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

real_save, real_step, real_json = torch.save, torch.optim.Adam.step, mhsa.run.train.atomic_write_json

def save(obj, f, *a, **k):
    count["save"] += 1
    real_save(obj, f, *a, **k)
    if when == "save" and count["save"] == int(n):  # the temp file is half written when the kill lands
        if hasattr(f, "flush"):  # mhsa.run.checkpoint saves through a file object
            f.flush()
        path = getattr(f, "name", f)
        os.truncate(path, os.path.getsize(path) // 2)
        die()

def step(self, *a, **k):
    count["step"] += 1
    if when == "step" and count["step"] == int(n):
        die()
    return real_step(self, *a, **k)

def write_json(path, obj):
    real_json(path, obj)
    if when == "metrics":
        die()

torch.save, torch.optim.Adam.step, mhsa.run.train.atomic_write_json = save, step, write_json
from mhsa.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def run(work, out, kill_at=None, extra=()):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if kill_at:
        env["KILL_AT"] = kill_at
        cmd = [sys.executable, "-c", KILLER, *ARGS, *extra, "--out", str(out)]
    else:
        cmd = [sys.executable, "-m", "mhsa", *ARGS, *extra, "--out", str(out)]
    return subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600, env=env)


def comparable(metrics_file: Path) -> dict:
    """metrics.json without wall-clock figures (seconds, throughput, memory)."""
    m = json.loads(metrics_file.read_text())
    history = [{k: v for k, v in row.items() if k != "images_per_s"} for row in m["history"]]
    return {"eval": m["eval"], "history": history, "epochs": m["train"]["epochs"]}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("kills")
    ref = run(work, work / "reference")
    assert ref.returncode == 0, ref.stderr
    return work


def test_kill_9_at_every_moment_then_rerun_matches_an_uninterrupted_run(work):
    out = work / "killed"
    ckpt = out / "checkpoints"
    # smoke: 8 steps per epoch and a checkpoint after each; counts are per process (each resumes)
    moments = [("step:1", "before the first checkpoint"), ("save:1", "writing the first checkpoint"),
               ("save:2", "writing the second checkpoint"), ("step:3", "mid-epoch 2"),
               ("metrics:1", "right after metrics.json")]
    for kill_at, moment in moments:
        proc = run(work, out, kill_at)
        assert proc.returncode == -signal.SIGKILL, (moment, proc.stderr[-2000:])
        if kill_at.startswith("save"):
            assert len(list(ckpt.glob(".last.pt.*.tmp"))) == 1, moment  # the killed write's temp file
        if kill_at == "step:3":
            assert "(epoch 1)" in proc.stderr and "epoch 2/2" not in proc.stderr  # resumed, died in epoch 2
        if kill_at == "metrics:1":  # the checkpoints are finalized only after metrics.json
            assert sorted(p.name for p in ckpt.glob("*.pt")) == ["last.pt", "prev.pt"]
    final = run(work, out)
    assert final.returncode == 0, final.stderr[-2000:]
    assert comparable(out / "metrics.json") == comparable(work / "reference" / "metrics.json")
    assert sorted(p.name for p in ckpt.iterdir()) == [".train.lock", "last.pt"]


def test_a_finished_cell_keeps_its_final_weights_only_and_reevaluates_from_them(work):
    ref_ckpt = work / "reference" / "checkpoints"
    assert sorted(p.name for p in ref_ckpt.glob("*.pt")) == ["last.pt"]
    state = torch.load(ref_ckpt / "last.pt", weights_only=True)
    assert state["optimizer"] == {} and state["epoch"] == 2 and state["model"]
    out = work / "reevaluate"
    shutil.copytree(work / "reference", out)
    (out / "metrics.json").unlink()
    proc = run(work, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming smoke from" in proc.stderr and "(epoch 2)" in proc.stderr and "epoch 1/2" not in proc.stderr
    assert comparable(out / "metrics.json") == comparable(work / "reference" / "metrics.json")


def test_keep_weights_false_leaves_no_checkpoint_once_metrics_are_written(work):
    out = work / "no_weights"
    proc = run(work, out, extra=["--set", "keep_weights=false"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list((out / "checkpoints").glob("*.pt"))
    assert comparable(out / "metrics.json") == comparable(work / "reference" / "metrics.json")


def test_final_weights_with_fewer_epochs_than_the_config_are_refused(work):
    out = work / "short"
    shutil.copytree(work / "reference", out)
    last = out / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    torch.save({**state, "epoch": 1}, last)  # weights only, yet one epoch short: nothing to train on from
    proc = run(work, out)
    assert proc.returncode == 1
    assert "holds the final weights of a finished cell (epoch 1)" in proc.stderr.splitlines()[-2]


def test_corrupt_last_checkpoint_resumes_from_the_previous_one(work):
    out = work / "corrupt"
    # a cell killed right after metrics.json, before its checkpoints were finalized: last.pt + prev.pt
    assert run(work, out, "metrics:1").returncode == -signal.SIGKILL
    (out / "metrics.json").unlink()
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated: the epoch-2 checkpoint is lost
    proc = run(work, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"checkpoint {last} is unreadable" in proc.stderr
    assert "resuming from the previous checkpoint" in proc.stderr and "weights_only=False" not in proc.stderr
    assert "resuming smoke from" in proc.stderr and "(epoch 1)" in proc.stderr
    assert comparable(out / "metrics.json") == comparable(work / "reference" / "metrics.json")


def test_no_usable_checkpoint_says_how_to_start_over(work):
    out = work / "all_corrupt"
    shutil.copytree(work / "reference", out)
    ckpt = out / "checkpoints"
    for name in ("last.pt", "prev.pt"):
        (ckpt / name).write_bytes(b"\0" * 64)
    proc = run(work, out)
    assert proc.returncode == 1
    lines = proc.stderr.rstrip().splitlines()
    assert lines[-2].startswith("error: no usable checkpoint:") and "Traceback" not in proc.stderr
    assert str(ckpt / "last.pt") in lines[-2] and str(ckpt / "prev.pt") in lines[-2]
    assert f"delete the directory {ckpt} and rerun" in lines[-2]

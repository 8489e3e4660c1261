"""mhsa.run.gpu_slots on CPU with simulated device layouts: exclusive, reusable, freed by a killed holder;
slots over the devices that exist (a count, a CUDA_VISIBLE_DEVICES list), locks shared by every study of
one user on one machine, GPUs counted without initialising CUDA, and an assigned slot that is no GPU is
an error, never CPU training (docs/workflow.md "Real data and GPUs")."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mhsa.errors import DeviceError
from mhsa.run import gpu_slots
from mhsa.run.gpu_slots import GpuSlotTimeout, gpu_slot

REPO = Path(__file__).resolve().parents[2]

CTX = mp.get_context("fork")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", *gpu_slots.SCHEDULER_VARS):
        monkeypatch.delenv(var, raising=False)


def _hold(lock_dir, n_slots, hold_s, queue):
    with gpu_slot(n_slots=n_slots, lock_dir=lock_dir, timeout=30, poll=0.02) as slot:
        t0 = time.monotonic()
        queue.put(("in", slot, os.environ.get("CUDA_VISIBLE_DEVICES"), t0))
        time.sleep(hold_s)
        queue.put(("out", slot, None, time.monotonic()))


def _hold_forever(lock_dir, n_slots, ready):
    with gpu_slot(n_slots=n_slots, lock_dir=lock_dir, timeout=5, poll=0.02) as slot:
        ready.put(slot)
        time.sleep(600)


def test_concurrent_holders_never_share_a_slot(tmp_path):
    queue = CTX.Queue()
    procs = [CTX.Process(target=_hold, args=(tmp_path, 2, 0.3, queue)) for _ in range(5)]
    for p in procs:
        p.start()
    events = [queue.get(timeout=30) for _ in range(2 * len(procs))]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert all(env == slot for kind, slot, env, _ in events if kind == "in")
    assert {slot for _, slot, _, _ in events} <= {"0", "1"}
    # Replay the enter/exit events in time order: a slot is never entered while held.
    held: set[str] = set()
    for kind, slot, _, _ in sorted(events, key=lambda e: (e[3], e[0] == "in")):
        if kind == "in":
            assert slot not in held, f"slot {slot} taken twice at once"
            held.add(slot)
        else:
            held.remove(slot)
    assert not held


def test_slot_is_reusable_after_release(tmp_path):
    with gpu_slot(n_slots=2, lock_dir=tmp_path) as first:
        assert first == "0"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # released: the variable is restored
    with gpu_slot(n_slots=2, lock_dir=tmp_path) as again:
        assert again == "0"
    # ... and by another process too.
    queue = CTX.Queue()
    proc = CTX.Process(target=_hold, args=(tmp_path, 2, 0.0, queue))
    proc.start()
    assert queue.get(timeout=30)[1] == "0"
    proc.join(timeout=30)


def test_killed_holder_frees_its_slot(tmp_path):
    ready = CTX.Queue()
    proc = CTX.Process(target=_hold_forever, args=(tmp_path, 2, ready))
    proc.start()
    try:
        assert ready.get(timeout=30) == "0"
        with gpu_slot(n_slots=2, lock_dir=tmp_path, timeout=1) as slot:
            assert slot == "1"
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
        with gpu_slot(n_slots=1, lock_dir=tmp_path, timeout=5, poll=0.02) as slot:
            assert slot == "0"
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()


def test_all_busy_times_out_with_a_clear_error(tmp_path):
    ready = CTX.Queue()
    proc = CTX.Process(target=_hold_forever, args=(tmp_path, 1, ready))
    proc.start()
    try:
        assert ready.get(timeout=30) == "0"
        t0 = time.monotonic()
        with pytest.raises(GpuSlotTimeout, match="stayed busy"):
            with gpu_slot(n_slots=1, lock_dir=tmp_path, timeout=0.3, poll=0.05):
                pass
        assert time.monotonic() - t0 < 5
    finally:
        proc.kill()
        proc.join()


def test_existing_cuda_visible_devices_is_respected(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with gpu_slot(n_slots=2, lock_dir=tmp_path / "locks") as slot:
        assert slot == "3"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert not (tmp_path / "locks").exists()


@pytest.mark.parametrize("var", gpu_slots.SCHEDULER_VARS)
def test_scheduler_assigned_gpus_are_respected(tmp_path, monkeypatch, var):
    monkeypatch.setenv(var, "2,3")
    with gpu_slot(n_slots=2, lock_dir=tmp_path / "locks") as slot:
        assert slot is None
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not (tmp_path / "locks").exists()


def test_no_gpu_yields_none(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_slots, "count_gpus", lambda: 0)
    with gpu_slot(lock_dir=tmp_path / "locks") as slot:
        assert slot is None
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_gpu_count_defaults_n_slots(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_slots, "count_gpus", lambda: 2)
    ready = CTX.Queue()
    proc = CTX.Process(target=_hold_forever, args=(tmp_path, None, ready))
    proc.start()
    try:
        assert ready.get(timeout=30) == "0"
        with gpu_slot(lock_dir=tmp_path, timeout=1) as slot:
            assert slot == "1"
    finally:
        proc.kill()
        proc.join()


# ------------------------------------------------------------------ simulated device layouts
def _holders(n, lock_dir, n_slots, cwd=None):
    """n processes that each take a slot and keep it: (their slots, a queue of (slot, CUDA_VISIBLE_DEVICES))."""
    ready, procs = CTX.Queue(), []

    def hold(ready):
        if cwd is not None:
            os.chdir(cwd)
        with gpu_slot(n_slots=n_slots, lock_dir=lock_dir, timeout=5, poll=0.02) as slot:
            ready.put((str(slot), os.environ.get("CUDA_VISIBLE_DEVICES"), slot.assigned))
            time.sleep(600)

    for _ in range(n):
        procs.append(CTX.Process(target=hold, args=(ready,)))
        procs[-1].start()
        procs[-1].got = ready.get(timeout=30)  # one after the other: the slot order is deterministic
    return procs


def _stop(procs):
    for p in procs:
        p.kill()
        p.join()


def test_more_slots_than_gpus_share_the_gpus_and_never_name_a_missing_one(tmp_path, monkeypatch):
    """workflow.gpu_slots: 3 on a 2-GPU machine: devices 0, 1, 0 (before: the third job got
    CUDA_VISIBLE_DEVICES=2, saw no GPU and trained on the CPU)."""
    monkeypatch.setattr(gpu_slots, "count_gpus", lambda: 2)
    procs = _holders(3, tmp_path, n_slots=3)
    try:
        assert [p.got for p in procs] == [("0", "0", True), ("1", "1", True), ("0", "0", True)]
        assert sorted(f.name for f in tmp_path.iterdir()) == ["gpu0.1.lock", "gpu0.lock", "gpu1.lock"]
    finally:
        _stop(procs)


def test_a_listed_cuda_visible_devices_spreads_the_jobs_over_its_devices(tmp_path, monkeypatch):
    """An `salloc --gpus=2` shell or `export CUDA_VISIBLE_DEVICES=2,3`: one job per listed device (before:
    every job kept "2,3" and trained on its first device), the list restored when the job is done."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    procs = _holders(2, tmp_path, n_slots=None)
    try:
        assert [p.got for p in procs] == [("2", "2", True), ("3", "3", True)]
        with pytest.raises(GpuSlotTimeout):  # both listed devices are taken
            with gpu_slot(lock_dir=tmp_path, timeout=0.2, poll=0.05):
                pass
    finally:
        _stop(procs)
    with gpu_slot(lock_dir=tmp_path) as slot:
        assert slot == "2" and os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    monkeypatch.setenv("SLURM_JOB_GPUS", "5,7")  # inside an allocation too: over its list
    with gpu_slot(lock_dir=tmp_path) as slot:
        assert slot == "2" and slot.assigned


def test_two_studies_on_one_machine_never_share_a_gpu(tmp_path, monkeypatch):
    """results/paper and results/sanity run side by side from their own folders: the second study's job
    takes GPU 1 (before: the locks lived in each results directory and both took GPU 0)."""
    monkeypatch.setattr(gpu_slots, "count_gpus", lambda: 2)
    runtime = tmp_path / "run-user"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    studies = []
    for name in ("paper", "sanity"):
        (tmp_path / name).mkdir()
        studies += _holders(1, None, n_slots=None, cwd=tmp_path / name)
    try:
        assert [p.got[0] for p in studies] == ["0", "1"]
        assert gpu_slots.default_lock_dir() == runtime / "mhsa" / "gpu-locks"
        assert sorted(f.name for f in (runtime / "mhsa" / "gpu-locks").iterdir()) == ["gpu0.lock", "gpu1.lock"]
        assert not any((tmp_path / name / "results").exists() for name in ("paper", "sanity"))
    finally:
        _stop(studies)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # an allocation numbers its own GPUs from 0: its own locks
    assert gpu_slots.default_lock_dir() == runtime / "mhsa" / "gpu-locks" / "slurm-4242"


def test_a_lock_folder_others_can_write_is_refused(tmp_path, monkeypatch):
    runtime = tmp_path / "run-user"
    (runtime / "mhsa").mkdir(parents=True)
    (runtime / "mhsa").chmod(0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    with pytest.raises(DeviceError, match=r"must be a directory of uid .* that others cannot write"):
        gpu_slots.default_lock_dir()


def test_gpus_are_counted_without_initialising_cuda(tmp_path, monkeypatch):
    """Counting through torch would initialise CUDA before CUDA_VISIBLE_DEVICES is set (every job on
    physical GPU 0) when NVML cannot count; NVML or the driver's /proc count instead, else a clear error."""
    import torch

    def initialises_cuda(*args):
        raise AssertionError("CUDA initialised before the slot was set")

    monkeypatch.setattr(torch.cuda, "device_count", initialises_cuda)
    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", initialises_cuda)
    monkeypatch.setattr(gpu_slots, "_nvml_count", lambda: 2)
    with gpu_slot(lock_dir=tmp_path) as slot:
        assert slot == "0" and slot.assigned
    gpus = tmp_path / "proc" / "gpus"
    for pci in ("0000:3b:00.0", "0000:af:00.0", "0000:d8:00.0"):
        (gpus / pci).mkdir(parents=True)
    monkeypatch.setattr(gpu_slots, "_nvml_count", lambda: None)
    monkeypatch.setattr(gpu_slots, "NVIDIA_PROC", tmp_path / "proc")
    assert gpu_slots.count_gpus() == 3
    monkeypatch.setattr(gpu_slots, "NVIDIA_PROC", tmp_path / "no-proc")
    assert gpu_slots.count_gpus() == 0  # no driver: no GPU, the CPU
    (tmp_path / "nvidia0").touch()
    monkeypatch.setattr(gpu_slots, "NVIDIA_DEV", tmp_path / "nvidia0")
    assert gpu_slots.count_gpus() is None  # a driver, but nothing counts its GPUs
    with pytest.raises(gpu_slots.GpuCountError, match=r"set workflow.gpu_slots in config.yaml"):
        with gpu_slot(lock_dir=tmp_path):
            pass
    with gpu_slot(n_slots=2, lock_dir=tmp_path) as slot:  # the user said how many
        assert slot == "0" and slot.assigned


def test_taking_a_slot_leaves_a_fork_able_to_use_cuda(tmp_path):
    """The warm worker forks jobs: counting GPUs and taking a slot in a process must not initialise CUDA
    there (the old count, torch.cuda.device_count(), poisons every later fork on this very machine)."""
    code = ("import torch\nfrom mhsa.run.gpu_slots import gpu_slot\n"
            f"with gpu_slot(lock_dir={str(tmp_path)!r}, timeout=1) as slot:\n    print('slot', slot)\n"
            "from mhsa.run.warm_worker.server import fork_problem\nprint('fork', fork_problem())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "fork None" in out.stdout, out.stdout + out.stderr


def test_an_assigned_slot_without_a_gpu_is_an_error_not_cpu_training(tmp_path, monkeypatch):
    """A job given a slot (workflow.gpu_slots on a machine whose driver shows no such GPU) stops with one
    line naming the slot and the key, before any training; the environment's own choice is left to it."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"GPU slot CUDA_VISIBLE_DEVICES=2 but torch sees no CUDA device.*"
                                          r"workflow.gpu_slots"):
        gpu_slots.check_assigned_gpu(gpu_slots.Slot("2", assigned=True))
    gpu_slots.check_assigned_gpu(gpu_slots.Slot("2"))  # set by the environment or a scheduler
    gpu_slots.check_assigned_gpu(None)  # no GPU on this machine, none asked for


def test_a_job_given_a_slot_on_a_machine_without_that_gpu_stops_before_training(tmp_path, monkeypatch, capsys):
    """The job path end to end (mhsa.run.job.run): before, the job took slot 0, torch saw no device, and the
    cell trained on the CPU without a word."""
    from mhsa.data.synthetic import generate
    from mhsa.run.job import TrainJob, run

    root = generate(tmp_path / "m", "market1501", seed=3, num_ids=4, images_per_id=4, height=32, width=16)
    monkeypatch.chdir(tmp_path)
    recipe = {"model": {"backbone": "resnet18", "pretrained": False, "num_heads": 2},
              "data": {"dataset": "market1501", "root": str(root), "height": 32, "width": 16, "p": 2, "k": 2,
                       "workers": 0},
              "optim": {"warmup_epochs": 0, "milestones": [], "epochs": 1}, "tracking": {"enabled": False}}
    job = TrainJob(cell="c", run_dir=str(tmp_path / "runs" / "c"), ckpt_dir=str(tmp_path / "ck"), log="c.log",
                   recipe=recipe, overrides={}, threads=1, preset="demo", gpu_lock_dir=str(tmp_path / "locks"),
                   gpu_slots=1)
    with pytest.raises(SystemExit):
        run(job)
    assert "GPU slot CUDA_VISIBLE_DEVICES=0 but torch sees no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "c" / "metrics.json").exists()

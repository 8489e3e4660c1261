"""mhsa.run.gpu_slots with fake slots on CPU: exclusive, reusable, freed by a killed holder."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest

from mhsa.run import gpu_slots
from mhsa.run.gpu_slots import GpuSlotTimeout, gpu_slot

CTX = mp.get_context("fork")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("CUDA_VISIBLE_DEVICES", *gpu_slots.SCHEDULER_VARS):
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
    monkeypatch.setattr(gpu_slots, "_device_count", lambda: 0)
    with gpu_slot(lock_dir=tmp_path / "locks") as slot:
        assert slot is None
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_gpu_count_defaults_n_slots(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_slots, "_device_count", lambda: 2)
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

"""Checkpoints: last.pt + prev.pt kept, corrupt/truncated files fall back with a warning, a clear
error when none is left, and temp files of killed writes cleaned (docs/reliability.md, cases 5 and 6)."""

import logging
import os
import subprocess
import sys

import pytest
import torch

from mhsa import io
from mhsa.errors import CheckpointError, describe
from mhsa.run.checkpoint import load_checkpoint, previous_path, save_checkpoint


def _state(epoch):
    return {"model": {"w": torch.full((3,), float(epoch))}, "optimizer": {}, "epoch": epoch}


def test_save_keeps_last_and_the_one_before(tmp_path):
    last = tmp_path / "last.pt"
    for epoch in (1, 2, 3):
        save_checkpoint(last, _state(epoch))
    assert previous_path(last) == tmp_path / "prev.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]
    assert load_checkpoint(last)["epoch"] == 3
    assert torch.load(tmp_path / "prev.pt", weights_only=True)["epoch"] == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_last_falls_back_to_prev_with_a_warning(tmp_path, caplog, damage):
    last = tmp_path / "last.pt"
    save_checkpoint(last, _state(1))
    save_checkpoint(last, _state(2))
    data = last.read_bytes()
    last.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[damage])
    with caplog.at_level(logging.WARNING, logger="mhsa.run.checkpoint"):
        state = load_checkpoint(last)
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))
    assert str(last) in caplog.text and "unreadable" in caplog.text
    assert "weights_only=False" not in caplog.text
    # the corrupt file is moved aside so the next save does not rotate it into prev.pt
    assert not last.exists() and (tmp_path / "last.pt.corrupt").exists()
    save_checkpoint(last, _state(2))
    assert torch.load(tmp_path / "prev.pt", weights_only=True)["epoch"] == 1


def test_no_good_checkpoint_left_is_a_clear_error(tmp_path):
    last = tmp_path / "last.pt"
    save_checkpoint(last, _state(1))
    save_checkpoint(last, _state(2))
    for p in (last, tmp_path / "prev.pt"):
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(last)
    msg = describe(info.value)
    assert str(last) in msg and str(tmp_path / "prev.pt") in msg
    assert f"delete the directory {tmp_path}" in msg and "weights_only" not in msg
    assert last.exists()  # nothing moved: rerunning gives the same error, never a silent restart


def test_pickle_with_code_is_refused_without_suggesting_weights_only_false(tmp_path):
    last = tmp_path / "last.pt"
    torch.save({"model": {}, "optimizer": {}, "epoch": 1, "x": logging.getLogger("x")}, last)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(last)
    assert str(last) in str(info.value) and "weights_only" not in str(info.value)


def test_no_checkpoint_is_none(tmp_path):
    assert load_checkpoint(tmp_path / "last.pt") is None


def test_save_after_a_kill_between_rotation_and_write_leaves_no_link(tmp_path):
    """Killed after prev.pt was linked to last.pt but before the new last.pt: both name one file."""
    last, prev = tmp_path / "last.pt", tmp_path / "prev.pt"
    save_checkpoint(last, _state(1))
    os.link(last, prev)
    save_checkpoint(last, _state(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]
    assert load_checkpoint(last)["epoch"] == 2 and torch.load(prev, weights_only=True)["epoch"] == 1


def test_only_prev_left_after_a_kill_between_rotation_and_write(tmp_path):
    save_checkpoint(tmp_path / "last.pt", _state(4))
    os.replace(tmp_path / "last.pt", tmp_path / "prev.pt")
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 4


def _killed_writer_temp(directory, name):
    """A temp file left by a writer killed with -9 mid-write (a real dead pid)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(proc.stdout)
    tmp = directory / f".{name}.{io._HOST}_{pid}.abcd1234.tmp"
    tmp.write_bytes(b"x" * 1000)
    return tmp


def test_stale_temps_of_killed_writes_are_cleaned_on_next_write(tmp_path):
    dead = _killed_writer_temp(tmp_path, "last.pt")
    old_form = tmp_path / ".last.pt.q1w2e3r4.tmp"  # name form before the pid was recorded
    old_form.write_bytes(b"y")
    os.utime(old_form, (0, 0))
    fresh_foreign = tmp_path / ".last.pt.otherhost_12.zzzz0000.tmp"  # another host, maybe writing now
    fresh_foreign.write_bytes(b"z")
    other_target = _killed_writer_temp(tmp_path, "metrics.json")
    mine = tmp_path / f".last.pt.{io._HOST}_{os.getpid()}.live0000.tmp"  # a live writer: kept
    mine.write_bytes(b"w")
    save_checkpoint(tmp_path / "last.pt", _state(1))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert dead.name not in left and old_form.name not in left
    assert {fresh_foreign.name, other_target.name, mine.name, "last.pt"} <= set(left)


def test_stale_temps_are_cleaned_at_start(tmp_path):
    dead = _killed_writer_temp(tmp_path, "last.pt")
    assert load_checkpoint(tmp_path / "last.pt") is None
    assert not dead.exists()

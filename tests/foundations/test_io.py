"""Atomic writes: a failed write keeps the old file and leaves no temp file; modes follow the umask."""

import os
import stat

import numpy as np
import pytest

from mhsa import io


def test_failed_replace_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "table_1.md"
    io.atomic_write_text(target, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", boom)
    with pytest.raises(OSError):
        io.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table_1.md"]


def test_writer_exception_leaves_nothing(tmp_path):
    def fail(tmp):
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        io.atomic_write(tmp_path / "metrics.json", fail)
    assert list(tmp_path.iterdir()) == []


def test_files_are_readable_by_others_per_umask(tmp_path):
    path = io.atomic_write_bytes(tmp_path / "a" / "b.bin", b"x" * 10)
    assert os.listdir(tmp_path / "a") == ["b.bin"] and path.read_bytes() == b"x" * 10
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~io._UMASK


def test_json_round_trip_with_numpy_scalars(tmp_path):
    import json

    io.atomic_write_json(tmp_path / "m.json", {"a": np.float32(1.5), "b": [1, 2]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1.5, "b": [1, 2]}

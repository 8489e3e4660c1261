"""Parsers on fixture trees in the real layouts (0-byte files: parsers read names, not pixels)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mhsa.config import ConfigError
from mhsa.data.datasets import DatasetNotFoundError, load, names, where_to_get


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def market_tree(base: Path, ext: str = ".jpg", market_names: bool = True) -> None:
    def n(pid: str, cam: int, i: int) -> str:
        return f"{pid}_c{cam}s1_{i:06d}_01{ext}" if market_names else f"{pid}_c{cam}_f{i:07d}{ext}"

    touch(
        base,
        # train: pids 7, 2, 5 (-> 2, 0, 1 after sorted relabelling); 0 and -1 must be dropped
        f"bounding_box_train/{n('0007', 1, 1)}", f"bounding_box_train/{n('0007', 2, 2)}",
        f"bounding_box_train/{n('0002', 6, 3)}", f"bounding_box_train/{n('0005', 3, 4)}",
        f"bounding_box_train/{n('0000', 1, 5)}", f"bounding_box_train/{n('-1', 1, 6)}",
        f"query/{n('0011', 1, 7)}", f"query/{n('0013', 4, 8)}",
        f"bounding_box_test/{n('0011', 2, 9)}", f"bounding_box_test/{n('0013', 5, 10)}",
        f"bounding_box_test/{n('0000', 3, 11)}", f"bounding_box_test/{n('-1', 2, 12)}",
        "bounding_box_test/Thumbs.db",
    )


def pid_cams(items):
    return sorted((pid, cam) for _, pid, cam in items)


def check_market_like(ds, distractor_pid: int | None = 0):
    assert pid_cams(ds.train) == [(0, 5), (1, 2), (2, 0), (2, 1)]  # 2->0, 5->1, 7->2; cams 0-based
    assert ds.num_train_pids == 3 and ds.num_train_cams == 4
    assert pid_cams(ds.query) == [(11, 0), (13, 3)]
    assert pid_cams(ds.gallery) == [(0, 2), (11, 1), (13, 4)]  # distractor kept, junk and Thumbs.db not
    assert all(Path(p).is_file() for p, _, _ in ds.train + ds.query + ds.gallery)


@pytest.mark.parametrize(
    "name, folder, market_names",
    [
        ("market1501", "Market-1501-v15.09.15", True),
        ("dukemtmc", "DukeMTMC-reID", False),
        ("occluded_duke", "Occluded_Duke", False),
    ],
)
def test_market_style(tmp_path, name, folder, market_names):
    market_tree(tmp_path / folder, market_names=market_names)
    for root in (tmp_path, tmp_path / folder):  # parent folder or the data set folder itself
        ds = load(name, root)
        assert ds.name == name and ds.root == str(tmp_path / folder)
        check_market_like(ds)
    assert "train" in ds.summary() and "gallery" in ds.summary()


@pytest.mark.parametrize("kind", ["detected", "labeled"])
def test_cuhk03_np_roots(tmp_path, kind):
    base = tmp_path / "cuhk03-np" / kind
    market_tree(base, ext=".png", market_names=False)
    for root in (tmp_path, tmp_path / "cuhk03-np", base):
        ds = load(f"cuhk03_{kind}", root)
        assert ds.root == str(base)
        check_market_like(ds)


def test_cuhk03_mat_release_is_rejected_with_a_hint(tmp_path):
    touch(tmp_path, "cuhk03_release/cuhk-03.mat")
    with pytest.raises(DatasetNotFoundError) as err:
        load("cuhk03_detected", tmp_path)
    assert "cuhk03_detected" in str(err.value) and str(tmp_path) in str(err.value)
    assert "CUHK03-NP" in str(err.value)


@pytest.mark.parametrize("kind_first", [True, False])
def test_p_dukemtmc(tmp_path, kind_first):
    base = tmp_path / "P-DukeMTMC-reid"

    def rel(split, kind, pid, fname):
        return f"{split}/{kind}/{pid}/{fname}" if kind_first else f"{split}/{pid}/{kind}/{fname}"

    occ, whole = "occluded_body_images", "whole_body_images"
    touch(
        base,
        rel("train", occ, "0009", "0009_c3_f0000001.jpg"),
        rel("train", whole, "0009", "0009_c5_f0000002.jpg"),
        rel("train", whole, "0004", "0004_c1_f0000003.jpg"),
        rel("test", occ, "0010", "0010_c2_f0000004.jpg"), rel("test", occ, "0012", "img.jpg"),
        rel("test", whole, "0010", "0010_c7_f0000005.jpg"), rel("test", whole, "0012", "other.jpg"),
    )
    ds = load("p_dukemtmc", tmp_path)
    assert pid_cams(ds.train) == [(0, 0), (1, 2), (1, 4)]  # 4 -> 0, 9 -> 1; both kinds in train
    assert pid_cams(ds.query) == [(10, 1), (12, 0)]  # no "_c<d>" in the name: occluded -> cam 0
    assert pid_cams(ds.gallery) == [(10, 6), (12, 1)]  # ... whole body -> cam 1


def test_partial_reid(tmp_path):
    base = tmp_path / "Partial-REID_Dataset"
    touch(base, "partial_body_images/001_01.jpg", "partial_body_images/001_02.jpg",
          "partial_body_images/017_01.jpg", "whole_body_images/001_01.jpg", "whole_body_images/017_03.jpg",
          "occluded_body_images/001_01.jpg")
    ds = load("partial_reid", tmp_path)
    assert ds.train == [] and ds.num_train_pids == 0
    assert pid_cams(ds.query) == [(1, 0), (1, 0), (17, 0)]
    assert pid_cams(ds.gallery) == [(1, 1), (17, 1)]


def test_partial_ilids(tmp_path):
    base = tmp_path / "Partial_iLIDS"
    touch(base, "Probe/001.jpg", "Probe/119.jpg", "Gallery/001.jpg", "Gallery/119.jpg", "Gallery/050.jpg")
    ds = load("partial_ilids", base)
    assert ds.train == [] and ds.num_train_pids == 0
    assert pid_cams(ds.query) == [(1, 0), (119, 0)]
    assert pid_cams(ds.gallery) == [(1, 1), (50, 1), (119, 1)]


@pytest.mark.parametrize("name", names())
def test_missing_root_names_dataset_path_and_source(tmp_path, name):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        load(name, missing)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert name in msg and str(missing) in msg and where_to_get(name) in msg


def test_incomplete_root_names_expected_folders(tmp_path):
    touch(tmp_path / "Market-1501-v15.09.15", "bounding_box_train/0002_c1s1_000451_03.jpg")
    expected = "market1501.*bounding_box_train, query, bounding_box_test"
    with pytest.raises(DatasetNotFoundError, match=expected):
        load("market1501", tmp_path)


def test_unknown_name_lists_known_names():
    with pytest.raises(ConfigError, match="unknown data set.*market1501.*partial_ilids"):
        load("market", "/tmp")


def test_image_dataset_reads_rgb_and_names_corrupt_files(tmp_path):
    from PIL import Image

    from mhsa.data.loader import ImageDataset, UnreadableImageError

    good, bad = tmp_path / "0001_c1_1.png", tmp_path / "0002_c2_1.jpg"
    Image.new("L", (8, 16), 128).save(good)
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    ds = ImageDataset([(str(good), 3, 1), (str(bad), 4, 0)], transform=None)
    img, pid, cam, idx = ds[0]
    assert img.mode == "RGB" and img.size == (8, 16) and (pid, cam, idx) == (3, 1, 0)
    with pytest.raises(UnreadableImageError, match=str(bad)):
        ds[1]

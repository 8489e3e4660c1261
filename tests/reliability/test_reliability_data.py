"""Data checks before anything trains (docs/reliability.md, cases 7 and 8): statistics against the published
ones (a synthetic set against its own parameters), every problem of every set at once, and test
sets decoded with at least one valid query."""

import shutil
from pathlib import Path

import pytest
from PIL import Image

from mhsa.data import check
from mhsa.data.datasets import load
from mhsa.data.synthetic import generate
from mhsa.errors import DataError


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {name: generate(root / name, name, seed=1, num_ids=4, images_per_id=4, height=32, width=16)
            for name in ("market1501", "p_dukemtmc", "partial_reid", "partial_ilids")}


def fake_real_market(root: Path, ids: int, per_id: int, cams: int) -> Path:
    """A tiny 'real' (no README/.complete) Market-style set: per_id images of each id per split."""
    img = Image.new("RGB", (8, 16), (90, 40, 20))
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (root / split).mkdir(parents=True)
        for pid in range(1, ids + 1):
            for n in range(per_id):
                img.save(root / split / f"{pid:04d}_c{n % cams + 1}s1_{n:06d}_00.jpg")
    return root


def test_published_statistics_match_the_docs():
    text = (Path(__file__).resolve().parents[2] / "docs" / "data.md").read_text()
    for name, stats in check.PUBLISHED.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}`"))
        for split in ("train", "query", "gallery"):
            ids, images = stats[split]
            if ids:
                assert f"{ids:,}" in row and f"{images:,}" in row, (name, split)


def test_synthetic_sets_pass_against_their_own_parameters(synth):
    for name, root in synth.items():
        assert check.check_dataset(name, root) == [], name


def test_a_damaged_synthetic_set_is_reported(synth, tmp_path):
    root = shutil.copytree(synth["market1501"], tmp_path / "m")
    for f in sorted((root / "bounding_box_train").iterdir())[:4]:  # one identity gone
        f.unlink()
    (problem,) = check.check_dataset("market1501", root)
    assert "train 3 ids / 12 images (expected 4 / 16)" in problem and "regenerate" in problem


def test_real_set_against_published_statistics_with_tolerance(tmp_path, monkeypatch):
    root = fake_real_market(tmp_path / "Market-1501-v15.09.15", ids=10, per_id=10, cams=6)
    # exact numbers of the fake: ids 10, images 100 per split, 6 cameras
    ok = {"train": (10, 100), "query": (10, 100), "gallery": (10, 100), "cams": 6}
    monkeypatch.setitem(check.PUBLISHED, "market1501", ok)
    assert check.check_dataset("market1501", tmp_path) == []
    monkeypatch.setitem(check.PUBLISHED, "market1501", {**ok, "train": (10, 102)})  # 2 % off: passes
    assert check.check_dataset("market1501", tmp_path) == []
    monkeypatch.setitem(check.PUBLISHED, "market1501", {**ok, "train": (10, 103), "cams": 8})
    (problem,) = check.check_dataset("market1501", tmp_path)
    assert "train 10 ids / 100 images (expected 10 / 103)" in problem and "6 cameras (expected 8)" in problem
    assert str(root) in problem and "query" not in problem


def test_every_problem_of_every_set_at_once(tmp_path, synth):
    empty = tmp_path / "duke"
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (empty / split).mkdir(parents=True)
    bad_name = shutil.copytree(synth["partial_ilids"], tmp_path / "ilids")
    (bad_name / "Probe" / "probe_x.jpg").write_bytes(b"")
    problems = check.check_datasets({"market1501": tmp_path / "missing", "dukemtmc": empty,
                                     "partial_ilids": bad_name, "partial_reid": synth["partial_reid"]})
    assert len(problems) == 3
    assert problems[0].startswith("market1501: data set not found under") and "published at" in problems[0]
    assert problems[1].startswith(f"dukemtmc at {empty}:") and "expected 702 / 16522" in problems[1]
    assert "probe_x.jpg" in problems[2] and "rename or remove" in problems[2]


def _valid_queries_brute_force(ds):
    return [q for q in ds.query if any(g[1] == q[1] and g[2] != q[2] for g in ds.gallery)]


def test_test_set_check_reports_all_problems_in_one_error(synth, tmp_path):
    good = load("market1501", synth["market1501"])
    assert _valid_queries_brute_force(good)
    check.check_test_sets({"market1501": good})  # no error

    root = shutil.copytree(synth["market1501"], tmp_path / "m")
    queries = sorted((root / "query").iterdir())
    queries[0].write_bytes(queries[0].read_bytes()[:100])  # truncated JPEG
    gallery = sorted((root / "bounding_box_test").iterdir())
    gallery[1].write_bytes(b"\xff\xd8 not really")
    broken = load("market1501", root)
    same_cam = load("market1501", synth["market1501"])
    same_cam.gallery = [(p, pid, 0) for p, pid, _ in same_cam.gallery]  # no other camera anywhere
    same_cam.query = [(p, pid, 0) for p, pid, _ in same_cam.query]
    assert _valid_queries_brute_force(same_cam) == []
    with pytest.raises(DataError) as info:
        check.check_test_sets({"broken": broken, "samecam": same_cam})
    msg = str(info.value)
    assert "(2 problem(s))" in msg and "broken: 2 unreadable image(s)" in msg
    assert str(queries[0]) in msg and str(gallery[1]) in msg and "replace or remove" in msg
    assert "samecam: no query has a valid match" in msg

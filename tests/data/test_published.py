"""Stand-ins of the eight data sets at their published sizes (`mhsa.data.synthetic.generate_published`): the
real layouts, the published counts exactly, accepted by the published-statistics check as the real sets.

The whole-size test writes ~161,000 files (tiny, `pixels: blank`) into a memory file system where there is
one (/dev/shm): ~30-50 s on 2 cores; the drawn-pixel path is checked on the two small sets."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from mhsa.data import datasets
from mhsa.data.check import PUBLISHED, _stats, check_dataset, check_test_sets, synthetic_params
from mhsa.data.synthetic import (
    MARKET_DISTRACTORS,
    MARKET_JUNK,
    PUBLISHED_FOLDERS,
    generate_all_published,
    generate_published,
    published_root,
)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="mhsa-published-", dir=shm)) if shm.is_dir() else \
        tmp_path_factory.mktemp("published")
    try:
        generate_all_published(base, height=16, width=10, pixels="blank")
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_all_eight_stand_ins_pass_the_published_check_as_the_real_data_sets(stand_ins):
    assert sorted(PUBLISHED_FOLDERS) == sorted(datasets.names()) == sorted(PUBLISHED)
    for name in PUBLISHED:
        root = published_root(stand_ins, name)
        assert check_dataset(name, root) == [], name
        ds = datasets.load(name, root)
        got, want = _stats(ds), PUBLISHED[name]
        assert {s: got[s] for s in ("train", "query", "gallery")} == {s: want[s] for s in ("train", "query", "gallery")}
        if want["cams"] is not None:
            assert got["cams"] == want["cams"], name
        # the check compares with PUBLISHED, not with generator parameters (as for a real copy)
        assert synthetic_params(ds.root)["published"] is True


def test_the_stand_ins_have_the_real_layouts_junk_and_distractors(stand_ins):
    market = published_root(stand_ins, "market1501")
    assert market.name == "Market-1501-v15.09.15"
    test_files = list((market / "bounding_box_test").iterdir())
    assert sum(f.name.startswith("-1_") for f in test_files) == MARKET_JUNK  # junk: on disk, dropped by the parser
    assert sum(f.name.startswith("0000_") for f in test_files) == MARKET_DISTRACTORS  # pid 0 stays in the gallery
    assert len(test_files) == 19_732  # the release's bounding_box_test: 15,913 + 3,819 junk
    assert (stand_ins / "cuhk03-np" / "detected" / "query").is_dir()
    assert next((stand_ins / "cuhk03-np" / "labeled" / "bounding_box_train").iterdir()).suffix == ".png"
    assert (stand_ins / "P-DukeMTMC-reid" / "test" / "occluded_body_images").is_dir()
    assert len(list((stand_ins / "Partial_iLIDS" / "Probe").iterdir())) == 119
    for name in ("market1501", "dukemtmc", "cuhk03_detected", "occluded_duke", "p_dukemtmc"):
        ds = datasets.load(name, published_root(stand_ins, name))
        gallery_cams: dict = {}
        for _, pid, cam in ds.gallery:
            gallery_cams.setdefault(pid, set()).add(cam)
        assert all(gallery_cams[pid] - {cam} for _, pid, cam in ds.query), f"{name}: a query without a match"


def test_a_damaged_stand_in_is_refused_as_a_real_copy_would_be(stand_ins, tmp_path):
    """A copy missing 3 % of its gallery fails the published check (2 % tolerance), naming the split."""
    copy = tmp_path / "Partial-REID_Dataset"
    shutil.copytree(published_root(stand_ins, "partial_reid"), copy)
    for f in sorted((copy / "whole_body_images").iterdir())[:10]:
        f.unlink()
    problems = check_dataset("partial_reid", copy)
    # the first 10 files are all five shots of ids 1 and 2
    assert len(problems) == 1 and "gallery 58 ids / 290 images (expected 60 / 300)" in problems[0]
    assert "unlike the published data set" in problems[0]


def test_drawn_stand_ins_decode_and_repeat_byte_for_byte(tmp_path):
    """`pixels: drawn` renders every image (people, cameras, occlusion); the same arguments give the same
    bytes, and every test image decodes (the check before training)."""
    a = generate_published(tmp_path / "a", "partial_ilids", height=32, width=16)
    b = generate_published(tmp_path / "b", "partial_ilids", height=32, width=16)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert len(files) == 238 and files == sorted(p.relative_to(b) for p in b.rglob("*.jpg"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert len({(a / f).read_bytes() for f in files}) == 238  # drawn: no two images alike
    check_test_sets({"partial_ilids": datasets.load("partial_ilids", a)})
    assert check_dataset("partial_ilids", a) == []

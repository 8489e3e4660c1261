"""Synthetic generator: determinism, real parsers read it back with the expected counts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from mhsa.data.datasets import load, names
from mhsa.data.synthetic import generate, main

SMALL = dict(num_ids=6, images_per_id=5, height=32, width=16)


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a = generate(tmp_path / "a", "occluded_duke", seed=3, **SMALL)
    b = generate(tmp_path / "b", "occluded_duke", seed=3, **SMALL)
    c = generate(tmp_path / "c", "occluded_duke", seed=4, **SMALL)
    assert tree_hash(a) == tree_hash(b) != tree_hash(c)


def test_market1501_counts(tmp_path):
    root = generate(tmp_path, "market1501", **SMALL)
    assert root == tmp_path and "SYNTHETIC" in (root / "README.txt").read_text()
    assert (root / ".complete").is_file()
    ds = load("market1501", tmp_path)
    # 6 train ids x 5; test ids use >= 3 of the 6 cameras -> 2 queries each, the other 3 in the gallery
    assert (len(ds.train), ds.num_train_pids) == (30, 6)
    assert sorted({pid for _, pid, _ in ds.train}) == list(range(6))
    assert len(ds.query) == 12 and len({pid for _, pid, _ in ds.query}) == 6
    assert len(ds.gallery) == 6 * 3 + 1  # + one pid-0 distractor (6 // 4 = 1)
    assert sum(pid == 0 for _, pid, _ in ds.gallery) == 1
    assert len(list((root / "bounding_box_test").glob("-1_*.jpg"))) == 1  # junk written, then dropped
    assert (root / "bounding_box_train").glob("*.jpg").__next__().read_bytes()[:2] == b"\xff\xd8"  # JPEG


def test_occluded_duke_counts(tmp_path):
    ds = load("occluded_duke", generate(tmp_path, "occluded_duke", **SMALL))
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (30, 12, 19)
    assert len({pid for _, pid, _ in ds.gallery}) == 7  # 6 test ids + 1 gallery-only distractor id
    assert ds.num_train_cams == 8


def test_partial_reid_counts(tmp_path):
    ds = load("partial_reid", generate(tmp_path, "partial_reid", **SMALL))
    assert ds.train == []
    assert len(ds.query) == len(ds.gallery) == 6 * 2  # images_per_id // 2 shots per id on each side
    assert {cam for _, _, cam in ds.query} == {0} and {cam for _, _, cam in ds.gallery} == {1}


@pytest.mark.parametrize("layout", names())
def test_every_layout_round_trips(tmp_path, layout):
    ds = load(layout, generate(tmp_path, layout, **SMALL))
    train_pids = {pid for _, pid, _ in ds.train}
    assert len(train_pids) in (0, 6)
    assert len(ds.query) > 0 and len(ds.gallery) > 0
    # every query has a true match in the gallery from another camera (evaluable)
    gallery = {(pid, cam) for _, pid, cam in ds.gallery}
    for _, pid, cam in ds.query:
        assert any(g_pid == pid and g_cam != cam for g_pid, g_cam in gallery)
    # test ids never appear in train (train ids are relabelled, so compare file names' original ids)
    assert not {Path(p).name.split("_")[0] for p, _, _ in ds.train} & {
        Path(p).name.split("_")[0] for p, _, _ in ds.query
    }


def test_complete_root_is_reused_and_incomplete_is_regenerated(tmp_path):
    root = generate(tmp_path, "partial_ilids", **SMALL)
    probe = root / "Probe" / "001.jpg"
    probe.write_bytes(b"edited")
    generate(tmp_path, "partial_ilids", **SMALL)
    assert probe.read_bytes() == b"edited"  # complete: skipped
    (root / ".complete").unlink()  # as after a crash mid-way
    generate(tmp_path, "partial_ilids", **SMALL)
    assert probe.read_bytes()[:2] == b"\xff\xd8"
    generate(tmp_path, "partial_ilids", overwrite=True, **SMALL)
    assert probe.read_bytes()[:2] == b"\xff\xd8"


def test_refuses_to_replace_a_real_data_set(tmp_path):
    real = tmp_path / "Probe"
    real.mkdir(parents=True)
    (real / "001.jpg").write_bytes(b"real")
    with pytest.raises(FileExistsError):
        generate(tmp_path, "partial_ilids", **SMALL)
    assert (real / "001.jpg").read_bytes() == b"real"


def test_cli_prints_summary(tmp_path, capsys):
    main(["--root", str(tmp_path), "--layout", "cuhk03_labeled", "--num-ids", "4", "--images-per-id", "3",
          "--height", "32", "--width", "16"])
    out = capsys.readouterr().out
    assert "cuhk03_labeled" in out and "query" in out
    assert (tmp_path / "bounding_box_train").is_dir()
    main(["--root", str(tmp_path / "two"), "--layout", "partial_reid", "partial_ilids", "--num-ids", "3"])
    assert (tmp_path / "two" / "partial_ilids" / "Probe" / "003.jpg").is_file()


def test_dataset_seed_is_the_workflows_rule_in_config_order():
    """1000 + the position under config.yaml's `datasets:` (what the workflow has always used, so the
    ci preset's images stay the same), and the registry has the same order."""
    import yaml

    from mhsa.config import ConfigError
    from mhsa.data.synthetic import dataset_seed

    order = list(yaml.safe_load((Path(__file__).parents[2] / "config.yaml").read_text())["datasets"])
    assert order == names()
    assert [dataset_seed(n) for n in order] == [1000 + i for i in range(len(order))]
    with pytest.raises(ConfigError, match="unknown data set 'nope'"):
        dataset_seed("nope")


def test_is_complete_follows_the_marker(tmp_path):
    from mhsa.data.synthetic import COMPLETE_MARKER, is_complete

    assert not is_complete(tmp_path / "x")
    root = generate(tmp_path / "x", "partial_ilids", **SMALL)
    assert is_complete(root) and (root / COMPLETE_MARKER).is_file()
    (root / COMPLETE_MARKER).unlink()
    assert not is_complete(root)


def test_cli_default_seed_is_the_dataset_seed(tmp_path):
    from mhsa.data.synthetic import dataset_seed

    main(["--root", str(tmp_path / "cli"), "--layout", "partial_ilids", "--num-ids", "6", "--images-per-id", "5",
          "--height", "32", "--width", "16"])
    direct = generate(tmp_path / "direct", "partial_ilids", seed=dataset_seed("partial_ilids"), **SMALL)
    assert tree_hash(tmp_path / "cli") == tree_hash(direct)


# ---- occlusion knob (docs/demo-study.md)
# sha256 of the pixels of 40 occluded renders (all four occluder kinds occur), computed with the
# generator as it was before the knob existed (commit 086cd3b): the defaults must draw the same images.
PRE_KNOB_OCCLUDED_PIXELS = "c94aa644959b2cb32790e5e2eb0695ea4ba0bf2392423036420d66d36f1383f6"


def _occluded_pixels_digest(**render_kw) -> str:
    import numpy as np

    from mhsa.data import synthetic as s

    h = hashlib.sha256()
    for n in range(40):
        img = s.render(s._person(7, s.TRAIN, n % 5), s._camera(7, n % 3), s._rng(7, 19, n), 64, 32,
                       occluded=True, seed=7, **render_kw)
        h.update(np.asarray(img).tobytes())
    return h.hexdigest()


def test_default_occlusion_draws_the_pre_knob_images():
    from mhsa.data.synthetic import Occlusion

    assert _occluded_pixels_digest() == PRE_KNOB_OCCLUDED_PIXELS
    assert _occluded_pixels_digest(occlusion=Occlusion()) == PRE_KNOB_OCCLUDED_PIXELS
    assert _occluded_pixels_digest(occlusion=Occlusion(coverage=(0.5, 0.5))) != PRE_KNOB_OCCLUDED_PIXELS


def test_default_occlusion_params_give_the_same_files_and_marker(tmp_path):
    plain = generate(tmp_path / "plain", "occluded_duke", seed=3, **SMALL)
    explicit = generate(tmp_path / "explicit", "occluded_duke", seed=3, **SMALL,
                        occlusion={"coverage": [0.2, 0.5], "kinds": ["car", "pole", "blob", "person"],
                                   "blob_height": [0.3, 0.75]})
    assert tree_hash(plain) == tree_hash(explicit)
    assert "occlusion" not in (plain / ".complete").read_text()
    heavy = generate(tmp_path / "heavy", "occluded_duke", seed=3, **SMALL, occlusion={"coverage": [0.6, 0.6]})
    assert tree_hash(heavy) != tree_hash(plain)
    assert '"occlusion": {"coverage": [0.6, 0.6]}' in (heavy / ".complete").read_text()


@pytest.mark.parametrize("kind", ["car", "pole"])
@pytest.mark.parametrize("share", [0.0, 0.25, 0.6])
def test_coverage_is_the_share_of_the_body_box_hidden(kind, share):
    """A car band from below and a pole band from one side hide `share` of the body box (up to the
    one-pixel rounding of the box edges); measured on a blank image."""
    import numpy as np
    from PIL import Image

    from mhsa.data.synthetic import Occlusion, _occlude, _rng

    x0, y0, bw, bh = 20, 10, 24, 80
    for n in range(6):
        img = Image.new("RGBA", (64, 100), (0, 0, 0, 0))
        _occlude(img, (x0, y0, bw, bh), _rng(5, n), 0, Occlusion(coverage=(share, share), kinds=(kind,)))
        covered = np.asarray(img)[y0 : y0 + bh, x0 : x0 + bw, 3] > 0
        tolerance = 1.5 / (bw if kind == "pole" else bh)  # the band edge may round into one more row/column
        assert abs(covered.mean() - share) <= tolerance, (kind, share, covered.mean())


def test_occlusion_kinds_and_bad_values():
    from mhsa.data.synthetic import Occlusion

    assert Occlusion.parse(None) == Occlusion()
    assert Occlusion.parse({"kinds": ["blob"]}).kinds == ("blob",)
    with pytest.raises(ValueError, match="occlusion.coverage"):
        Occlusion.parse({"coverage": [0.5, 0.2]})
    with pytest.raises(ValueError, match="occlusion.kinds"):
        Occlusion.parse({"kinds": ["tram"]})
    with pytest.raises(ValueError, match="occlusion.kinds"):
        Occlusion.parse({"kinds": []})
    with pytest.raises(ValueError, match="unknown key"):
        Occlusion.parse({"share": 0.3})


# ---- label maps (docs/demo-study.md "The paper's premise")
def _jpegs(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_label_maps_leave_the_images_as_they_are_and_cover_every_image(tmp_path):
    from mhsa.data.synthetic import LABELS, read_labels

    plain = generate(tmp_path / "plain", "occluded_duke", seed=3, **SMALL)
    labelled = generate(tmp_path / "labelled", "occluded_duke", seed=3, **SMALL, labels=True)
    assert _jpegs(plain) == _jpegs(labelled)
    assert read_labels(plain) == {}
    maps = read_labels(labelled)
    assert set(maps) == set(_jpegs(labelled))
    assert LABELS == ("background", "body", "occluder")
    queries = [m for rel, m in maps.items() if rel.startswith("query/")]
    assert queries and all((m == 2).any() for m in queries)  # every query is occluded
    assert all(m.shape == (SMALL["height"], SMALL["width"]) and m.max() <= 2 for m in maps.values())
    assert '"labels": true' in (labelled / ".complete").read_text()


def test_label_maps_follow_the_occlusion_knob_and_holistic_sets_have_no_occluder(tmp_path):
    from mhsa.data.synthetic import read_labels

    def visible_body(coverage):
        root = generate(tmp_path / f"c{coverage}", "occluded_duke", seed=3, **SMALL, labels=True,
                        occlusion={"coverage": [coverage, coverage]})
        return np.mean([(m == 1).mean() for rel, m in read_labels(root).items() if rel.startswith("query/")])

    assert visible_body(0.6) < visible_body(0.0) - 0.05
    holistic = read_labels(generate(tmp_path / "market", "market1501", seed=3, **SMALL, labels=True))
    assert all(not (m == 2).any() for m in holistic.values())
    assert np.mean([(m == 1).mean() for m in holistic.values()]) > 0.2  # the person is there

"""mhsa.plots on a small fake study: K sweeps (Figs. 9/10), parameter sweeps, attention overlays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mhsa import plots as P
from mhsa.study import build_study, load_config
from mhsa.tables import load_paper

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    return Path(path).is_file() and Path(path).read_bytes()[:8] == PNG


@pytest.fixture(scope="module")
def study():
    cfg = load_config(ROOT / "config.yaml")
    cfg["seeds"] = [0, 1]
    cfg["presets"]["ci"]["tables"] = ["V", "VII", "IX", "X", "XI"]
    cfg["presets"]["ci"]["figures"] = ["9", "10"]
    for fid in ("9", "10"):
        cfg["figures"][fid]["sweep"]["K"] = [6, 7, 8]
    return build_study(cfg, "ci")


@pytest.fixture(scope="module")
def paper():
    return load_paper()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, study) -> Path:
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    for cid, cell in study.cells.items():
        if cell.seed == 1 and cell.knobs.get("K") == 6:
            continue  # a K with a single seed: line without a band
        ev = {
            t: {
                m: {k: float(rng.uniform(30, 90)) for k in ("rank1", "rank3", "rank5", "rank10", "mAP")}
                for m in modes
            }
            for t, modes in cell.targets.items()
        }
        (root / cid).mkdir()
        (root / cid / "metrics.json").write_text(json.dumps({"cell": cid, "eval": ev}))
    return root


@pytest.fixture(scope="module")
def metrics(runs):
    from mhsa.tables import load_metrics

    return load_metrics(runs)


def test_paper_points_of_k_sweeps(study, paper):
    pts = P.paper_points_for_series(study, "10", paper)

    def get(series, k, ds, m):
        hit = pts[(pts.series == series) & (pts.K == k) & (pts.dataset == ds) & (pts.metric == m)]
        return None if hit.empty else float(hit.value.iloc[0])

    assert get("MHSAM", 7, "market1501", "rank1") == 93.3  # Table VII K=7
    assert get("MHSAM", 6, "cuhk03_detected", "mAP") == 64.6  # Table VII K=6
    assert get("MHSAM+IHTL", 8, "market1501", "rank1") == 93.5  # Table V +IHTL (K=8)
    assert get("MHSAM+IHTL", 7, "cuhk03_detected", "rank1") == 70.7  # Table X K=7, lambda2=1.0
    assert get("MHSAM+IHTL", 7, "market1501", "rank1") is None  # unknown in the paper
    assert get("MHSAM+IHTL", 6, "cuhk03_detected", "rank1") is None
    pts9 = P.paper_points_for_series(study, "9", paper)
    fdrt = pts9[pts9.series == "MHSAM+FDRT"]
    assert set(fdrt.K) == {8}
    assert float(fdrt[(fdrt.dataset == "cuhk03_detected") & (fdrt.metric == "rank1")].value.iloc[0]) == 70.0


def test_k_sweep_figures(tmp_path, study, metrics, paper):
    for fid in ("9", "10"):
        assert is_png(P.plot_k_sweep(study, fid, metrics, paper, tmp_path / f"fig_{fid}.png"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_param_sweeps(tmp_path, study, metrics, paper):
    paths = P.plot_param_sweeps(study, metrics, paper, tmp_path)
    assert [p.name for p in paths] == [
        "table_9_lambda1.png",
        "table_10_lambda2.png",
        "table_11_lambda3_gamma.png",
    ]
    assert all(is_png(p) for p in paths)
    panels = P._sweep_panels(study, "XI")
    xs = [sorted(study.cells[r.cells[0]].knobs[knob] for r in rows) for _, knob, _, rows, _ in panels]
    assert xs[0] == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert xs[1] == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 0.5, 1.0])
    ((_, _, group, x_rows, base_rows),) = P._sweep_panels(study, "X")
    assert (
        group == "K"
        and len(x_rows) == 10
        and [r.row for r in base_rows] == ["K=7 Baseline+MHSAM", "K=8 Baseline+MHSAM"]
    )


@pytest.mark.parametrize("k,layout", [(1, "chw"), (8, "hwc")])
def test_attention_overlay(tmp_path, k, layout):
    rng = np.random.default_rng(k)
    images = rng.integers(0, 256, size=(2, 3, 32, 16), dtype=np.uint8)
    if layout == "hwc":
        images = images.transpose(0, 2, 3, 1)
    alpha = rng.random((2, k, 8, 4)).astype(np.float32)
    out = P.save_attention_overlay(images, alpha, tmp_path / f"ov_{k}.png", titles=["q0", "q1"])
    assert is_png(out)
    with pytest.raises(ValueError):
        P.save_attention_overlay(images, alpha[:1], tmp_path / "bad.png")


def test_upsample_bilinear():
    a = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    up = P.upsample_bilinear(a, 4, 4)
    assert up.shape == (4, 4)
    assert up[0, 0] == pytest.approx(0.0) and up[-1, -1] == pytest.approx(3.0)
    assert up.mean() == pytest.approx(a.mean())
    assert P.upsample_bilinear(np.ones((2, 3, 2, 2)), 6, 4).shape == (2, 3, 6, 4)


def test_attention_grid(tmp_path, study):
    runs = tmp_path / "runs"
    with pytest.raises(FileNotFoundError):
        P.plot_attention_grid(study, runs, tmp_path / "fig7.png")
    archs = dict(P.attention_models(study, "occluded_duke"))
    assert archs["Baseline"] == "occluded_duke__baseline"
    rng = np.random.default_rng(0)
    for label, k in (("Baseline", 1), ("MHSA-Net (K=8)", 8)):  # MHSAM-only missing: skipped
        d = runs / f"{archs[label]}__s0"
        d.mkdir(parents=True)
        np.savez(
            d / "attention.npz",
            images=rng.integers(0, 256, (3, 3, 32, 16), dtype=np.uint8),
            alpha=rng.random((3, k, 8, 4)).astype(np.float32),
        )
    assert is_png(P.plot_attention_grid(study, runs, tmp_path / "fig7.png"))


def test_build_all_figures(tmp_path):
    cfg = load_config(ROOT / "config.yaml")
    cfg["presets"]["ci"]["tables"] = ["IX"]
    cfg["presets"]["ci"]["figures"] = ["9"]
    cfg["figures"]["9"]["sweep"]["K"] = [8]
    small = build_study(cfg, "ci")
    runs = tmp_path / "runs"
    # no metrics.json and no attention maps: paper points only, Fig. 7 skipped
    paths = P.build_all_figures(small, runs, tmp_path / "figs")
    assert [p.name for p in paths] == ["fig_9.png", "table_9_lambda1.png"]
    assert all(is_png(p) for p in paths)

    cfg["presets"]["ci"]["tables"] = []
    cfg["presets"]["ci"]["figures"] = []
    bare = build_study(cfg, "ci")
    d = runs / f"{dict(P.attention_models(bare, 'occluded_duke'))['Baseline']}__s0"
    d.mkdir(parents=True)
    np.savez(
        d / "attention.npz",
        images=np.zeros((2, 32, 16, 3), np.uint8),
        alpha=np.ones((2, 1, 8, 4), np.float32),
    )
    paths = P.build_all_figures(bare, runs, tmp_path / "figs2")
    assert [p.name for p in paths] == ["fig_7_attention_occluded_duke.png"] and is_png(paths[0])

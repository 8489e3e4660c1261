"""mhsa.evaluation.diagnostics (hand-computed values, the FDRT loss as reference) and mhsa.study.diagnostic_plots."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mhsa.evaluation import diagnostics as D
from mhsa.losses.fdrt import fdrt

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def test_entropy_of_uniform_one_hot_and_two_position_maps():
    alpha = np.zeros((2, 3, 4, 2))
    alpha[:, 0] = 1 / 3  # uniform over 8 positions -> log 8 (the scale does not matter)
    alpha[:, 1, 0, 0] = 0.7  # all mass on one position -> 0
    alpha[:, 2, 1, :] = 0.25  # two equal positions -> log 2
    ent = D.attention_entropy(alpha)
    assert ent.shape == (2, 3)
    np.testing.assert_allclose(ent, [[math.log(8), 0.0, math.log(2)]] * 2, atol=1e-12)


def test_entropy_of_a_nearly_massless_head_is_its_shape_not_uniform():
    alpha = np.zeros((1, 1, 1, 4))
    alpha[0, 0, 0, :2] = 1e-30  # a dead head: tiny, but concentrated on 2 of 4 positions
    np.testing.assert_allclose(D.attention_entropy(alpha), [[math.log(2)]])


def test_overlap_of_identical_disjoint_and_half_shared_maps():
    alpha = np.zeros((1, 3, 2, 2))
    alpha[0, 0] = [[1, 1], [0, 0]]
    alpha[0, 1] = [[2, 2], [0, 0]]  # same map, other scale: cosine 1
    alpha[0, 2] = [[0, 1], [1, 0]]  # shares one of two positions with head 0: cosine 1/2
    ov = D.attention_overlap(alpha)
    np.testing.assert_allclose(ov, [[1, 1, 0.5], [1, 1, 0.5], [0.5, 0.5, 1]], atol=1e-12)
    disjoint = np.zeros((1, 2, 1, 4))
    disjoint[0, 0, 0, :2], disjoint[0, 1, 0, 2:] = 1, 1
    np.testing.assert_allclose(D.attention_overlap(disjoint), np.eye(2), atol=1e-12)


def test_embedding_overlap_is_fdrt_identical_orthogonal_and_random():
    k = 4
    same = np.ones((2, k, 5))
    assert D.embedding_overlap(same) == pytest.approx((k * k - k) / k**2)  # every off-diagonal G_ij = 1
    assert D.embedding_overlap(np.eye(k)[None] * 3.0) == pytest.approx(0.0)
    P = np.random.default_rng(0).normal(size=(6, k, 16))
    for norm in ("l1", "fro"):
        ref = float(fdrt(torch.from_numpy(P), norm=norm))
        assert D.embedding_overlap(P, norm) == pytest.approx(ref, rel=1e-5)


def test_weighted_loss_curves_by_hand():
    history = [{"epoch": 1, "loss": 9.0, "ce_global": 2.0, "ihtl": 10.0, "fdrt": 0.5, "lr": 0.1},
               {"epoch": 2, "loss": 4.0, "ce_global": 1.0, "ihtl": 20.0, "fdrt": 0.25, "lr": 0.1}]
    cfg = {"lambda1": 1e-2, "lambda2": 0.1, "lambda3": 0.0, "global_ce": True}
    out = D.weighted_loss_curves(history, cfg)
    assert out["epochs"] == [1, 2]
    assert set(out["weighted"]) == {"ce_global", "ihtl", "fdrt"}  # lr/loss are not terms
    assert out["weighted"]["ihtl"] == pytest.approx([1.0, 2.0])
    assert out["weighted"]["fdrt"] == pytest.approx([5e-3, 2.5e-3])
    assert out["share"]["ce_global"] == pytest.approx([2.0 / 3.005, 1.0 / 3.0025])
    assert D.loss_weights({"global_ce": False})["ce_global"] == 0.0
    from mhsa.config import LossConfig  # what the train loop passes (cfg.loss)

    w = D.loss_weights(LossConfig(lambda1=2e-4, lambda2=0.5, lambda3=0.0, global_ce=False))
    assert (w["fdrt"], w["ihtl"], w["competition"], w["ce_global"], w["triplet_residual"]) == (2e-4, 0.5, 0, 0, 1)


def test_branch_metrics_best_and_mean_head():
    ev = {"occluded_duke": {"global": {"rank1": 50.0, "mAP": 40.0, "rank5": 70.0},
                            "head1": {"rank1": 10.0, "mAP": 8.0}, "head2": {"rank1": 30.0, "mAP": 20.0},
                            "concat_rerank": {"rank1": 60.0, "mAP": 55.0}}}
    b = D.branch_metrics(ev)
    assert b["target"] == "occluded_duke"
    assert set(b["branches"]) == {"global", "head1", "head2", "heads"}
    assert b["branches"]["heads"] == {"best": "head2", "best_rank1": 30.0, "mean_rank1": 20.0, "mean_mAP": 14.0}
    with pytest.raises(KeyError, match="market1501"):
        D.branch_metrics(ev, "market1501")


def _model_outputs(k: int = 4):
    from mhsa.model import build_model

    torch.manual_seed(0)
    model = build_model(5, num_heads=k, backbone="resnet18", pretrained=False).eval()
    with torch.inference_mode():
        return model(torch.randn(3, 3, 64, 32))


def test_cell_diagnostics_on_model_outputs():
    out = _model_outputs(4)
    att = {"alpha": out["alpha"].numpy(), "heads": out["heads"].numpy()}
    metrics = {"eval": {"occluded_duke": {"global": {"rank1": 50.0, "mAP": 40.0},
                                          "head1": {"rank1": 25.0, "mAP": 20.0}}},
               "history": [{"epoch": 1, "ce_global": 2.0, "triplet_residual": 6.0}],
               "config": {"loss": {"lambda1": 1e-4, "lambda2": 1.0, "lambda3": 1e-3}}}
    diag = D.cell_diagnostics(att, metrics)
    a = diag["attention"]
    assert a["positions"] == att["alpha"].shape[2] * att["alpha"].shape[3] == 8  # 64x32 input, stride 8
    assert sum(a["mass"]) == pytest.approx(1.0, abs=1e-5)  # alpha is a softmax across the heads (Eq 1)
    assert all(0.0 <= e <= 1.0 + 1e-9 for e in a["entropy_norm"])
    assert a["fdrt_overlap"] == pytest.approx(float(fdrt(out["heads"])), rel=1e-5)
    assert diag["losses"]["share"]["triplet_residual"] == [pytest.approx(0.75)]
    json.dumps(diag)  # goes into metrics.json as is (and into the run's diagnostics.json artifact)


def test_baseline_single_map_has_no_overlap():
    diag = D.cell_diagnostics({"alpha": np.ones((2, 1, 4, 2))}, {})
    assert diag["attention"]["entropy_norm"] == [pytest.approx(1.0)]
    assert "overlap" not in diag["attention"] and "branches" not in diag


def test_bad_alpha_shapes_are_named():
    with pytest.raises(ValueError, match="alpha must be"):
        D.attention_entropy(np.ones((2, 3)))
    with pytest.raises(KeyError, match="alpha"):
        D.cell_diagnostics({"images": np.ones(1)}, {})


def test_family_figure_and_occlusion_curve(tmp_path):
    from mhsa.study.diagnostic_plots import diagnostics_of_run, family_figure, rank1_vs_occlusion

    out = _model_outputs(4)
    run = tmp_path / "cell"
    run.mkdir()
    np.savez(run / "attention.npz", alpha=out["alpha"].numpy())
    metrics = {"cell": "cell",
               "eval": {"t": {"global": {"rank1": 50.0, "mAP": 40.0}, "local": {"rank1": 40.0, "mAP": 30.0},
                              "head1": {"rank1": 25.0, "mAP": 20.0}}},
               "history": [{"epoch": e, "ce_global": 2.0 / e, "ihtl": 1.0} for e in (1, 2)],
               "config": {"loss": {"lambda2": 1.0}}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    d = diagnostics_of_run(run)
    assert d["branches"]["branches"]["local"]["rank1"] == 40.0
    png = family_figure([d, d], tmp_path / "family.png", title="t")
    assert png.read_bytes()[:8] == PNG
    series = {"Baseline": {0.0: [50, 52, 48], 0.35: [40, 41, 39]}, "MHSA-Net": {0.0: [45, 47], 0.35: [44, 42]}}
    curve = rank1_vs_occlusion({"own test set": series, "large test set": series}, tmp_path / "occ.png")
    assert curve.read_bytes()[:8] == PNG


def test_training_does_not_import_the_plotting_modules():
    code = ("import sys, mhsa.run.train, mhsa.evaluation.diagnostics; "
            "sys.exit(any(m in sys.modules for m in ('matplotlib', 'seaborn', 'mhsa.study.diagnostic_plots')))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0

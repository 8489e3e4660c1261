"""Market-1501 protocol: hand-checked cases and equality with the per-query loop reference."""

import numpy as np
import pytest
import torch
from reference_impls import evaluate_loop, per_query_loop

from mhsa.evaluation import evaluate


def _check_same(a, b, tol=1e-9):
    np.testing.assert_allclose(a["cmc"], b["cmc"], atol=tol)
    for k in ("mAP", "mINP", "mAP@50"):
        assert a[k] == pytest.approx(b[k], abs=tol), k
    assert a["num_valid_queries"] == b["num_valid_queries"]


def test_hand_checked_small():
    # query pid 1 cam 0; gallery sorted by distance already:
    # g0 pid1 cam0 (junk, removed), g1 pid2, g2 pid1 cam1 (hit), g3 pid3, g4 pid1 cam2 (hit), g5 pid2
    # junk-free ranking: g1 g2 g3 g4 g5 -> hits at ranks 2 and 4, R = 2
    # CMC = [0, 1, 1, 1, 1, ...]; AP = (1/2 + 2/4) / 2 = 0.5; mINP = R / 4 = 0.5; mAP@50 = 0.5
    # second query pid 9 is absent from the gallery -> skipped everywhere
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])
    res = evaluate(dist, [1, 9], [1, 2, 1, 3, 1, 2], [0, 0], [0, 1, 1, 1, 2, 2], max_rank=10)
    assert res["num_valid_queries"] == 1
    np.testing.assert_allclose(res["cmc"], [0, 1, 1, 1, 1, 1, 1, 1, 1, 1])  # padded past 5 kept images
    assert res["mAP"] == pytest.approx(0.5)
    assert res["mINP"] == pytest.approx(0.5)
    assert res["mAP@50"] == pytest.approx(0.5)


def test_hand_checked_map50_and_average():
    # q0 pid 1: hits at ranks 1 and 60 of 100 -> AP = (1/1 + 2/60)/2 = 0.516666..., AP@50 = (1/1)/2 = 0.5,
    #          INP = 2/60 = 0.033333..., first hit at rank 1
    # q1 pid 2: single hit at rank 3 -> AP = 1/3, AP@50 = 1/3, INP = 1/3, first hit at rank 3
    # means: mAP = (0.516666 + 0.333333)/2 = 0.425, mAP@50 = (0.5 + 0.333333)/2 = 0.416666...,
    #        mINP = (0.033333 + 0.333333)/2 = 0.183333..., CMC@1 = 0.5, CMC@3 = 1
    ng = 100
    g_pids = np.full(ng, 7)
    g_pids[[0, 59]] = 1
    g_pids[2] = 2
    g_cams = np.ones(ng, int)
    row = np.arange(ng, dtype=float)
    res = evaluate(np.stack([row, row]), [1, 2], g_pids, [0, 0], g_cams, max_rank=5)
    assert res["mAP"] == pytest.approx(0.425)
    assert res["mAP@50"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert res["mINP"] == pytest.approx((2 / 60 + 1 / 3) / 2)
    np.testing.assert_allclose(res["cmc"], [0.5, 0.5, 1, 1, 1])


def test_ties_are_broken_by_gallery_index():
    # all distances equal -> stable order g0 g1 g2 g3; g3 is junk (same pid & cam), g1 is the hit:
    # ranking g0 g1 g2 -> hit at rank 2: CMC = [0, 1, 1], AP = 1/2, mINP = 1/2
    res = evaluate(np.full((1, 4), 0.5), [1], [2, 1, 2, 1], [0], [1, 1, 1, 0], max_rank=3)
    np.testing.assert_allclose(res["cmc"], [0, 1, 1])
    assert res["mAP"] == pytest.approx(0.5)
    assert res["mINP"] == pytest.approx(0.5)
    # moving the hit to index 0 puts it first
    res = evaluate(np.full((1, 4), 0.5), [1], [1, 2, 2, 1], [0], [1, 1, 1, 0], max_rank=3)
    np.testing.assert_allclose(res["cmc"], [1, 1, 1])


def test_no_valid_query_raises():
    # the only same-pid gallery image is in the query's camera -> junk -> no valid query
    with pytest.raises(ValueError, match="no valid query.*2 queries.*3 gallery"):
        evaluate(np.random.rand(2, 3), [1, 5], [1, 2, 3], [0, 0], [0, 1, 1])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="rows"):
        evaluate(np.random.rand(2, 3), [1], [1, 2, 3], [0], [0, 1, 1])


def _random_problem(rng, nq, ng, n_ids, n_cams, n_distractor, quantize=None, dtype=np.float64):
    q_pids = rng.integers(0, n_ids, nq)
    distractors = 1000 + rng.integers(0, 50, n_distractor)  # pids absent from the queries
    g_pids = np.concatenate([rng.integers(0, n_ids, ng - n_distractor), distractors])
    q_pids[: max(1, nq // 10)] = 5000  # queries without any gallery image
    q_cams, g_cams = rng.integers(0, n_cams, nq), rng.integers(0, n_cams, ng)
    dist = rng.random((nq, ng))
    if quantize:
        dist = np.round(dist * quantize) / quantize  # many ties
    return dist.astype(dtype), q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize(
    "seed,nq,ng,n_ids,n_cams,n_distractor,quantize,dtype",
    [
        (0, 40, 300, 20, 2, 30, None, np.float64),
        (1, 50, 400, 30, 6, 0, None, np.float32),
        (2, 30, 200, 10, 3, 50, 7, np.float64),  # heavy ties
        (3, 25, 60, 8, 2, 5, 3, np.float32),
        (4, 300, 1200, 100, 6, 200, None, np.float32),  # several chunks
        (5, 7, 30, 4, 1, 0, None, np.float64),  # one camera: almost everything junk
    ],
)
def test_matches_loop_reference(seed, nq, ng, n_ids, n_cams, n_distractor, quantize, dtype, monkeypatch):
    import mhsa.evaluation.protocol as P

    monkeypatch.setattr(P, "_CHUNK_ELEMS", 20_000)  # force multiple chunks
    rng = np.random.default_rng(seed)
    prob = _random_problem(rng, nq, ng, n_ids, n_cams, n_distractor, quantize, dtype)
    try:
        ref = evaluate_loop(*prob, max_rank=50)
    except ValueError:
        with pytest.raises(ValueError, match="no valid query"):
            evaluate(*prob)
        return
    _check_same(evaluate(*prob, max_rank=50), ref)
    # what each valid query contributes (docs/evaluation.md, "Per-query results"): the loop's, and the
    # metrics are their means
    got = evaluate(*prob, max_rank=50, per_query=True)
    pq, loop = got["per_query"], per_query_loop(*prob)
    for key in ("index", "pids", "first_hit"):
        np.testing.assert_array_equal(pq[key], loop[key])
    for key, metric in (("AP", "mAP"), ("INP", "mINP"), ("AP@50", "mAP@50")):
        np.testing.assert_allclose(pq[key], loop[key], atol=1e-12)
        assert np.mean(pq[key]) == pytest.approx(got[metric], abs=1e-12)
    for k in (1, 5, 10):
        assert np.mean(pq["first_hit"] < k) == pytest.approx(got["cmc"][k - 1], abs=1e-12)


def test_torch_inputs_noncontiguous_and_infinite():
    rng = np.random.default_rng(7)
    dist, qp, gp, qc, gc = _random_problem(rng, 20, 150, 10, 3, 10)
    ref = evaluate_loop(dist, qp, gp, qc, gc, max_rank=20)
    out = evaluate(torch.from_numpy(dist.T.copy()).T, torch.from_numpy(qp), gp, torch.from_numpy(qc), gc, 20)
    _check_same(out, ref)
    dist[3, ::7] = np.inf  # non-finite rows take the exact argsort path
    _check_same(evaluate(dist, qp, gp, qc, gc, 20), evaluate_loop(dist, qp, gp, qc, gc, max_rank=20))


def test_max_rank_longer_than_gallery_pads_with_last_value():
    rng = np.random.default_rng(3)
    dist, qp, gp, qc, gc = _random_problem(rng, 10, 12, 3, 3, 0)
    res = evaluate(dist, qp, gp, qc, gc, max_rank=50)
    assert res["cmc"].shape == (50,)
    assert res["cmc"][-1] == pytest.approx(1.0)
    np.testing.assert_allclose(res["cmc"][12:], res["cmc"][11])


def test_empty_gallery_raises():
    with pytest.raises(ValueError, match="no valid query"):
        evaluate(np.zeros((2, 0)), [1, 2], [], [0, 0], [])


@pytest.mark.parametrize("offset,scale", [(0.0, 1.0), (1e6, 1.0), (-5.0, 1e-3), (0.0, 1e-30), (3.0, 0.0)])
def test_binning_edge_ranges(offset, scale):
    # large offsets (shifted binning), negative values, tiny spans and constant rows
    rng = np.random.default_rng(11)
    dist, qp, gp, qc, gc = _random_problem(rng, 30, 200, 10, 3, 10)
    for dtype in (np.float32, np.float64):
        d = (dist * scale + offset).astype(dtype)
        _check_same(evaluate(d, qp, gp, qc, gc), evaluate_loop(d, qp, gp, qc, gc))

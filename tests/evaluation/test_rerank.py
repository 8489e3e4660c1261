"""k-reciprocal re-ranking vs the plain NumPy transcription of the reference code."""

import numpy as np
import pytest
import torch
from reference_impls import re_ranking_loop

from mhsa.evaluation import re_ranking


def _dists(rng, nq, ng, dim=16, squared=False):
    f = rng.standard_normal((nq + ng, dim)).astype(np.float32)
    d = ((f[:, None] - f[None]) ** 2).sum(-1)
    d = d if squared else np.sqrt(d)
    return d[:nq, nq:], d[:nq, :nq], d[nq:, nq:]


@pytest.mark.parametrize(
    "k1,k2,lam",
    [(20, 6, 0.3), (20, 6, 0.0), (10, 3, 0.3), (5, 1, 0.3), (3, 2, 1.0), (30, 10, 0.5)],
)
def test_matches_reference_transcription(k1, k2, lam):
    rng = np.random.default_rng(k1 * 100 + k2)
    qg, qq, gg = _dists(rng, 30, 80)
    ref = re_ranking_loop(qg, qq, gg, k1, k2, lam)
    out = re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
    assert out.shape == (30, 80) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_squared_inputs_float64_and_clustered():
    # identities as clusters (realistic k-reciprocal structure), squared distances as torchreid passes
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((12, 8)) * 3
    f = centres[rng.integers(0, 12, 150)] + rng.standard_normal((150, 8))
    d = ((f[:, None] - f[None]) ** 2).sum(-1)
    qg, qq, gg = d[:40, 40:], d[:40, :40], d[40:, 40:]
    np.testing.assert_allclose(re_ranking(qg, qq, gg), re_ranking_loop(qg, qq, gg), atol=1e-5, rtol=0)


def test_non_symmetric_inputs_follow_reference_transpose():
    rng = np.random.default_rng(2)
    qg, qq, gg = rng.random((20, 50)), rng.random((20, 20)), rng.random((50, 50))
    np.testing.assert_allclose(re_ranking(qg, qq, gg), re_ranking_loop(qg, qq, gg), atol=1e-5, rtol=0)


def test_tiny_problem_k1_larger_than_n_and_torch_inputs():
    rng = np.random.default_rng(3)
    qg, qq, gg = _dists(rng, 4, 9)
    ref = re_ranking_loop(qg, qq, gg, 20, 6, 0.3)
    out = re_ranking(torch.from_numpy(qg), torch.from_numpy(qq), torch.from_numpy(gg))
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_multiple_jaccard_blocks(monkeypatch):
    import mhsa.evaluation.rerank as R

    monkeypatch.setattr(R, "_PAIR_BLOCK", 500)
    monkeypatch.setattr(R, "_ROW_ELEMS", 17 * 95)
    rng = np.random.default_rng(4)
    qg, qq, gg = _dists(rng, 25, 70)
    np.testing.assert_allclose(re_ranking(qg, qq, gg), re_ranking_loop(qg, qq, gg), atol=1e-5, rtol=0)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shape mismatch"):
        re_ranking(np.zeros((3, 4)), np.zeros((3, 3)), np.zeros((5, 5)))

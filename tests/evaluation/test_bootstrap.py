"""The bootstrap over query identities (mhsa.evaluation.bootstrap) against independent computations: a
loop over the same draws, exact enumeration of every resample of a tiny test set, and scipy.stats.bootstrap
where identities and queries coincide."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from mhsa.evaluation.bootstrap import QueryBootstrap, percentile_interval

# a hand-made test set: 5 identities with 1-3 valid queries each; Rank-1 hits and APs (percent)
PIDS = np.array([7, 7, 3, 9, 9, 9, 3, 12, 20, 20])
HITS = np.array([100, 0, 100, 100, 100, 0, 0, 100, 0, 100], dtype=float)
APS = np.array([80.0, 20.0, 95.0, 60.0, 70.0, 10.0, 5.0, 100.0, 30.0, 55.0])


def loop_means(bs: QueryBootstrap, values) -> np.ndarray:
    """Each resample by hand: the drawn identities' queries concatenated, then np.mean."""
    out = []
    for draw in bs.draws:
        chosen = np.concatenate([values[PIDS == bs.ids[i]] for i in draw])
        out.append(chosen.mean())
    return np.asarray(out)


def test_resample_means_are_the_loop_over_the_same_draws():
    bs = QueryBootstrap(PIDS, n_resamples=300, seed=4)
    assert list(bs.ids) == [3, 7, 9, 12, 20] and bs.draws.shape == (300, 5)
    for values in (HITS, APS):
        np.testing.assert_allclose(bs.resample_means(values), loop_means(bs, values), rtol=1e-12)
        got = bs.interval(values)
        assert got.value == pytest.approx(values.mean())
        assert (got.low, got.high) == pytest.approx(tuple(np.percentile(loop_means(bs, values), [2.5, 97.5])))
        assert got.low <= got.value <= got.high


def test_the_same_test_set_and_seed_give_the_same_draws():
    a, b = QueryBootstrap(PIDS), QueryBootstrap(PIDS.copy())
    assert np.array_equal(a.draws, b.draws) and a.draws.shape == (1000, 5)
    assert not np.array_equal(a.draws, QueryBootstrap(PIDS, seed=1).draws)


def test_exact_bootstrap_distribution_of_a_tiny_test_set():
    """Three identities: all 27 equally likely resamples enumerated. The Monte Carlo resample means have the
    exact distribution's mean and variance (within their sampling error)."""
    pids, values = np.array([1, 1, 2, 3, 3, 3]), np.array([100.0, 0.0, 100.0, 0.0, 0.0, 100.0])
    exact = []
    for draw in itertools.product(range(3), repeat=3):
        chosen = np.concatenate([values[pids == [1, 2, 3][i]] for i in draw])
        exact.append(chosen.mean())
    exact = np.asarray(exact)
    bs = QueryBootstrap(pids, n_resamples=20000, seed=0)
    got = bs.resample_means(values)
    assert got.mean() == pytest.approx(exact.mean(), abs=4 * exact.std() / np.sqrt(20000))
    assert got.var() == pytest.approx(exact.var(), rel=0.05)
    assert set(np.round(got, 9)) <= set(np.round(exact, 9))  # every resample is one of the 27


def test_one_query_per_identity_agrees_with_scipy_percentile_bootstrap():
    rng = np.random.default_rng(3)
    values = rng.normal(50, 20, 60)
    ours = QueryBootstrap(np.arange(60), n_resamples=20000, seed=1).interval(values)
    ref = stats.bootstrap((values,), np.mean, n_resamples=20000, method="percentile", random_state=2)
    ci = ref.confidence_interval
    half = (ci.high - ci.low) / 2
    assert ours.low == pytest.approx(ci.low, abs=0.05 * half) and ours.high == pytest.approx(ci.high, abs=0.05 * half)


def test_paired_difference_uses_the_same_people_for_both_rows():
    bs = QueryBootstrap(PIDS, n_resamples=500, seed=2)
    other = np.clip(APS + np.array([5, -3, 10, 0, 2, 4, 1, -8, 6, 3.0]), 0, 100)
    d = bs.paired(other, APS)
    loop = loop_means(bs, other) - loop_means(bs, APS)
    assert d.value == pytest.approx(other.mean() - APS.mean())
    assert (d.low, d.high) == pytest.approx(percentile_interval(loop))
    assert d.p == pytest.approx(min(1.0, 2 * min(np.mean(loop <= 0), np.mean(loop >= 0))))
    # a row against itself: no difference at all; a constant shift: exactly the shift in every resample
    same = bs.paired(APS, APS)
    assert (same.value, same.low, same.high, same.p) == (0.0, 0.0, 0.0, 1.0) and same.covers(0)
    shift = bs.paired(APS + 2.5, APS)
    assert shift.low == pytest.approx(2.5) and shift.high == pytest.approx(2.5) and shift.p == 0.0
    # pairing is narrower than the two rows' own intervals when they move together
    wide = bs.interval(other).high - bs.interval(other).low
    assert d.high - d.low < wide


def test_values_of_another_test_set_are_refused():
    bs = QueryBootstrap(PIDS)
    with pytest.raises(ValueError, match="not the same test set"):
        bs.interval(APS[:-1])
    with pytest.raises(ValueError, match="at least one valid query"):
        QueryBootstrap([])

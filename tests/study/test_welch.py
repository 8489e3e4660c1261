"""Welch's t-test and Student's t distribution of mhsa.study.welch against scipy.stats (a test dependency
only: the package computes them itself), on hand-made samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mhsa.study.welch import mean_interval, t_cdf, t_ppf, welch

DFS = [1, 1.5, 2, 2.37, 3, 4, 7.5, 10, 30, 200, 5000]


@pytest.mark.parametrize("df", DFS)
def test_t_cdf_and_ppf_are_scipys(df):
    for t in (-12.0, -3.1, -1.0, -0.2, 0.0, 0.4, 1.96, 2.776, 4.3, 25.0):
        assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=1e-10, abs=1e-14), t
    for q in (0.005, 0.025, 0.1, 0.5, 0.8, 0.95, 0.975, 0.995, 0.9995):
        assert t_ppf(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-9, abs=1e-12), q


def test_infinite_df_is_the_normal_and_bad_arguments_are_refused():
    assert t_cdf(1.5, math.inf) == pytest.approx(stats.norm.cdf(1.5), rel=1e-12)
    assert t_ppf(0.975, math.inf) == pytest.approx(stats.norm.ppf(0.975), rel=1e-9)
    assert t_cdf(math.inf, 3) == 1.0 and t_cdf(-math.inf, 3) == 0.0
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_cdf(1.0, 0)
    with pytest.raises(ValueError, match="quantile level"):
        t_ppf(1.0, 3)


# hand-made samples: three seeds a side as in the study, unequal variances, unequal sizes, a tie
SAMPLES = [
    ([40.0, 41.0, 45.0], [42.0, 43.0, 47.0]),
    ([62.1, 60.3, 63.9], [73.4, 80.9, 66.0]),  # e20_cov0-like: a large gap, very unequal spreads
    ([1.0, 1.1, 0.9], [5.0, 5.1, 4.9]),
    ([10.0, 12.0, 11.0, 15.0, 9.0], [13.0, 14.5]),
    ([0.0, 100.0], [50.0, 50.5, 49.5]),
    ([3.0, 3.0, 4.0], [3.0, 3.0, 4.0]),
]


@pytest.mark.parametrize("a, b", SAMPLES)
def test_welch_is_scipys_ttest_ind_unequal_var(a, b):
    ours = welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert ours.t == pytest.approx(ref.statistic, rel=1e-12, abs=1e-12)
    assert ours.df == pytest.approx(ref.df, rel=1e-12)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-14)
    ci = ref.confidence_interval(0.95)
    assert (ours.low, ours.high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert ours.significant == (ref.pvalue < 0.05)
    # the level is the test's: at 90 % the interval is scipy's 90 % one
    ci90 = ref.confidence_interval(0.90)
    assert (welch(a, b, 0.90).low, welch(a, b, 0.90).high) == pytest.approx((ci90.low, ci90.high), rel=1e-9)


def test_welch_is_not_the_two_standard_error_rule():
    """The issue's case: 3 seeds a side, a difference of 2.8 standard errors. The old rule called it beyond
    noise; Welch at its ~2 degrees of freedom does not (critical value 4.3 at df = 2)."""
    a = [62.0, 60.4, 63.6]  # mean 62.0, sd 1.6
    b = [73.4 - 6.8, 73.4, 73.4 + 6.8]  # mean 73.4, sd 6.8
    r = welch(a, b)
    assert abs(r.t) == pytest.approx(2.82, abs=0.02) and r.df == pytest.approx(2.2, abs=0.1)
    assert not r.significant and r.p > 0.05
    assert stats.ttest_ind(a, b, equal_var=False).pvalue == pytest.approx(r.p)


def test_welch_edge_cases():
    assert welch([1.0], [1.0, 2.0]) is None and welch([], []) is None
    same = welch([2.0, 2.0], [2.0, 2.0, 2.0])
    assert same.p == 1.0 and not same.significant and math.isnan(same.df)
    apart = welch([2.0, 2.0], [3.0, 3.0])
    assert apart.p == 0.0 and apart.significant and apart.diff == -1.0


@pytest.mark.parametrize("x", [[40.0, 41.0, 45.0], [1.0, 2.0], [5.0, 5.5, 6.0, 9.0, 3.0], [2.0, 2.0, 2.0]])
def test_mean_interval_is_the_t_interval_and_widens_with_test_set_error(x):
    mean, lo, hi = mean_interval(x)
    sem = stats.sem(x)
    ref = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sem) if sem > 0 else (np.mean(x),) * 2
    assert (lo, hi) == pytest.approx(ref, rel=1e-9) and mean == np.mean(x)
    # the two sources' half-widths in quadrature, by hand: seeds at t(n-1), the test set at the normal's
    extra = 1.3
    half = math.hypot(stats.t.ppf(0.975, len(x) - 1) * sem, stats.norm.ppf(0.975) * extra)
    _, lo2, hi2 = mean_interval(x, extra_se=extra)
    assert (lo2, hi2) == pytest.approx((mean - half, mean + half), rel=1e-9)
    assert lo2 < lo and hi2 > hi  # more error never narrows it
    with pytest.raises(ValueError, match="at least 2"):
        mean_interval([1.0])

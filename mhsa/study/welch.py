"""Differences over seeds: Welch's t-test and the t interval of a mean (docs/tables.md, "Uncertainty").

Welch's test compares the means of two rows' seed values without assuming equal variances; its degrees
of freedom come from the Welch-Satterthwaite formula. With 3 seeds a side they are 2-4, where the 95 %
critical value is 2.8-4.3, not the 2 of a normal approximation. Student's t distribution is computed
here (the regularised incomplete beta function by its continued fraction), so the package does not
need SciPy; tests/study/test_welch.py checks every function against `scipy.stats`.

Pure Python (math) and NumPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["LEVEL", "WelchResult", "mean_interval", "t_cdf", "t_ppf", "welch"]

LEVEL = 0.95  # two-sided: alpha = 1 - LEVEL = 0.05
_EPS = 1e-15
_MAX_ITER = 500


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, _MAX_ITER + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` > 0 degrees of freedom (any real df; inf: the normal)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    if math.isinf(df):
        return 0.5 * math.erfc(-t / math.sqrt(2.0))
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t with `df` degrees of freedom (bisection on `t_cdf`)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {q}")
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    if q == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class WelchResult:
    """Welch's two-sample t-test of mean(a) - mean(b): the difference, its standard error, t, the
    Welch-Satterthwaite degrees of freedom, the two-sided p-value and the interval of the difference at
    `level`. With both samples constant, se = 0: df is NaN, p is 1 for equal means and 0 otherwise."""

    diff: float
    se: float
    t: float
    df: float
    p: float
    low: float
    high: float
    level: float

    @property
    def significant(self) -> bool:
        """The difference is beyond noise: p < 1 - level (equivalently, the interval excludes 0)."""
        return self.p < 1.0 - self.level


def welch(a, b, level: float = LEVEL) -> WelchResult | None:
    """Welch's t-test of two samples (e.g. one row's values over seeds against its reference row's);
    None when a side has fewer than 2 values (no variance to estimate)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff, se = float(a.mean() - b.mean()), math.sqrt(va + vb)
    if se == 0.0:
        same = diff == 0.0
        return WelchResult(diff, 0.0, 0.0 if same else math.copysign(math.inf, diff), math.nan,
                           1.0 if same else 0.0, diff, diff, level)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = diff / se
    p = min(1.0, 2.0 * t_cdf(-abs(t), df))
    half = t_ppf(1.0 - (1.0 - level) / 2.0, df) * se
    return WelchResult(diff, se, t, df, p, diff - half, diff + half, level)


def mean_interval(values, level: float = LEVEL, extra_se: float = 0.0) -> tuple[float, float, float]:
    """(mean, low, high): the t interval of the mean of `values` (n >= 2, e.g. seeds; n - 1 degrees of
    freedom), widened by an independent error `extra_se` taken as known (the test-set bootstrap's standard
    error, a normal one): the two half-widths add in quadrature,
    sqrt((t_{n-1} s / sqrt(n))^2 + (z extra_se)^2). With extra_se = 0 it is the plain t interval; it never
    narrows as either source grows (a Satterthwaite t on the summed variance would: its degrees of freedom
    rise with extra_se, and with them the critical value falls)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        raise ValueError(f"the interval of a mean needs at least 2 values, got {len(x)}")
    q = 1.0 - (1.0 - level) / 2.0
    mean = float(x.mean())
    seed_half = t_ppf(q, len(x) - 1) * math.sqrt(float(x.var(ddof=1)) / len(x))
    test_half = t_ppf(q, math.inf) * extra_se
    half = math.hypot(seed_half, test_half)
    return mean, mean - half, mean + half

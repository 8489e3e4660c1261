"""How much a test set's number owes to which people happen to be in it: a bootstrap over query identities.

A metric is a mean over the valid queries (`mhsa.evaluation.per_query`). Queries of one identity are
not independent (the same person, the same gallery images), so the unit resampled is the identity: each
resample draws the test set's query identities with replacement, every drawn identity brings all its
queries, and the statistic is the mean over the queries drawn (an identity drawn twice counts twice).
`N_RESAMPLES` resamples from a fixed `SEED` give the same draws for every row evaluated on the same
test set, so two rows are compared *paired*: the same resampled people for both, the interval of the
difference (docs/tables.md, "Uncertainty").

Intervals are percentile intervals (the `LEVEL` quantiles of the resampled statistics). NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LEVEL", "N_RESAMPLES", "SEED", "Interval", "QueryBootstrap", "percentile_interval"]

N_RESAMPLES = 1000
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A number and its interval: `value` (the full test set's), `low`..`high` at `level`; for a paired
    difference, `p` is the two-sided bootstrap p-value (twice the smaller share of resampled differences
    on either side of 0, at most 1)."""

    value: float
    low: float
    high: float
    level: float
    p: float | None = None

    def covers(self, x: float = 0.0) -> bool:
        return self.low <= x <= self.high


def percentile_interval(stats, level: float = LEVEL) -> tuple[float, float]:
    """The (1 - level)/2 and (1 + level)/2 quantiles of `stats` (NumPy's linear interpolation)."""
    lo, hi = np.quantile(np.asarray(stats, dtype=np.float64), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


class QueryBootstrap:
    """The resamples of one test set's valid queries, by identity.

    `pids`: the identity of each valid query (metrics.json's `per_query.<set>.pids`). `draws` (B x I) are
    the drawn identities of each resample (indices into `ids`, the sorted distinct identities); `counts`
    (B x I) how often each identity was drawn. Equal `pids`, `n_resamples` and `seed` give equal draws.
    """

    def __init__(self, pids, n_resamples: int = N_RESAMPLES, seed: int = SEED):
        pids = np.asarray(pids)
        if pids.ndim != 1 or pids.size == 0:
            raise ValueError(f"need the identities of at least one valid query, got shape {pids.shape}")
        if n_resamples < 1:
            raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
        self.pids = pids
        self.ids, self.inverse = np.unique(pids, return_inverse=True)
        n_ids = len(self.ids)
        self.draws = np.random.default_rng(seed).integers(0, n_ids, size=(n_resamples, n_ids))
        offsets = (np.arange(n_resamples) * n_ids)[:, None]
        self.counts = np.bincount((self.draws + offsets).ravel(), minlength=n_resamples * n_ids).reshape(
            n_resamples, n_ids).astype(np.float64)
        self.queries_per_id = np.bincount(self.inverse, minlength=n_ids).astype(np.float64)

    def _check(self, values) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if values.shape != self.pids.shape:
            raise ValueError(f"{values.shape[0] if values.ndim else 0} per-query values for {len(self.pids)} "
                             "queries: not the same test set")
        return values

    def resample_means(self, values) -> np.ndarray:
        """The mean of `values` (one per valid query) in each resample, (B,)."""
        sums = np.bincount(self.inverse, weights=self._check(values), minlength=len(self.ids))
        return (self.counts @ sums) / (self.counts @ self.queries_per_id)

    def interval(self, values, level: float = LEVEL) -> Interval:
        """The mean of `values` over the test set and its percentile interval."""
        values = self._check(values)
        return Interval(float(values.mean()), *percentile_interval(self.resample_means(values), level), level)

    def standard_error(self, values) -> float:
        """The bootstrap standard deviation of the mean of `values` (ddof=1 over the resamples)."""
        stats = self.resample_means(values)
        return float(stats.std(ddof=1)) if len(stats) > 1 else 0.0

    def paired(self, a, b, level: float = LEVEL) -> Interval:
        """mean(a) - mean(b) for two rows evaluated on these queries, with the interval of the difference
        over the same resampled identities and its two-sided bootstrap p-value."""
        diffs = self.resample_means(self._check(a) - self._check(b))  # linear: the difference of the means
        p = min(1.0, 2 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
        value = float(np.mean(a) - np.mean(b))
        return Interval(value, *percentile_interval(diffs, level), level, p)

"""The uncertainty of the tables' numbers: an interval on every cell, and the test behind every mark
(docs/tables.md, "Uncertainty").

* **One seed**: the interval comes from the test set itself, a bootstrap over its query identities
  (`mhsa.evaluation.bootstrap`, from the per-query results metrics.json stores). Two rows evaluated on the
  same test set are compared *paired*: the same resampled identities for both, the interval of the
  difference.
* **Several seeds**: the value is the mean over seeds; its interval is the t interval over seeds, widened
  by the test-set bootstrap of the seed-averaged per-query results where they exist (the seeds share one
  test set, so its sampling error does not average out). Two rows are compared by Welch's t-test over
  seeds (`mhsa.study.welch`): seed noise only; the test set is the same for both rows.
* Runs without per-query results (written before metrics.json stored them) get the seeds' interval with
  several seeds and none with one.

For the figures: `cell_interval(metrics, cells, test_set, mode, metric)` gives one number's
`CellInterval(value, low, high, method, n_seeds, std)`; `table_intervals(study, table_id, metrics)` a
table's, one line per (row, data set, metric).

NumPy and pandas only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mhsa.evaluation.bootstrap import LEVEL, N_RESAMPLES, SEED, QueryBootstrap
from mhsa.evaluation.per_query import from_json, metric_values
from mhsa.study.welch import mean_interval, welch

__all__ = ["BOOTSTRAP", "PAIRED", "SEEDS", "SEEDS_BOOTSTRAP", "WELCH", "CellInterval", "Comparison",
           "Uncertainty", "cell_interval", "table_intervals"]

# interval methods of a cell (the CSV's `interval` column)
BOOTSTRAP = "bootstrap"  # one seed: percentile bootstrap over query identities
SEEDS_BOOTSTRAP = "seeds+bootstrap"  # several seeds: t over seeds and the test-set bootstrap, in quadrature
SEEDS = "seeds"  # several seeds, no per-query results: t over seeds
# tests of a difference (the CSV's `test` column)
PAIRED = "paired bootstrap"
WELCH = "Welch"


@dataclass(frozen=True)
class CellInterval:
    """One table number: `value` (the mean over seeds), its interval `low`..`high` at the study's level,
    how it was obtained (`method`: BOOTSTRAP, SEEDS_BOOTSTRAP, SEEDS, or "" for none: one seed without
    per-query results, then low = high = NaN), the seeds behind it and their sample std (NaN with one)."""

    value: float
    low: float
    high: float
    method: str
    n_seeds: int
    std: float


@dataclass(frozen=True)
class Comparison:
    """A row against its reference row: `diff` = row - reference, its interval, the `test` (PAIRED or
    WELCH), the two-sided p-value, Welch's degrees of freedom (NaN for the bootstrap) and the verdict."""

    diff: float
    low: float
    high: float
    test: str
    p: float
    df: float

    @property
    def within_noise(self) -> bool:
        return self.low <= 0.0 <= self.high


class Uncertainty:
    """Intervals and comparisons over one set of finished cells (`metrics`: cell id -> metrics.json), with
    the per-query results decoded once and one `QueryBootstrap` per test set (so every row of a test set
    is resampled with the same identities)."""

    def __init__(self, metrics: dict, n_resamples: int = N_RESAMPLES, seed: int = SEED, level: float = LEVEL):
        self.metrics, self.n_resamples, self.seed, self.level = metrics, n_resamples, seed, level
        self._decoded: dict = {}
        self._bootstraps: dict = {}

    # --------------------------------------------------------------------------------- inputs
    def value(self, cell: str, test_set: str, mode: str, metric: str) -> float | None:
        try:
            v = self.metrics[cell]["eval"][test_set][mode][metric]
        except (KeyError, TypeError):
            return None
        return None if v is None or math.isnan(float(v)) else float(v)

    def seed_values(self, cells: list, test_set: str, mode: str, metric: str) -> list:
        return [v for v in (self.value(c, test_set, mode, metric) for c in cells) if v is not None]

    def _per_query_set(self, cell: str, test_set: str) -> dict | None:
        key = (cell, test_set)
        if key not in self._decoded:
            raw = ((self.metrics.get(cell) or {}).get("per_query") or {}).get(test_set)
            self._decoded[key] = from_json(raw) if raw else None
        return self._decoded[key]

    def per_query(self, cell: str, test_set: str, mode: str, metric: str):
        """(the test set's per-query results, the per-query values of `metric` in `mode`), or None."""
        pq = self._per_query_set(cell, test_set)
        if pq is None or mode not in pq["modes"] or self.value(cell, test_set, mode, metric) is None:
            return None
        return pq, metric_values(pq["modes"][mode], metric)

    def bootstrap(self, test_set: str, pq: dict) -> QueryBootstrap:
        """The resamples of `test_set`'s valid queries (one per distinct query list)."""
        key = (test_set, pq["index"].tobytes(), pq["pids"].tobytes())
        if key not in self._bootstraps:
            self._bootstraps[key] = QueryBootstrap(pq["pids"], self.n_resamples, self.seed)
        return self._bootstraps[key]

    def _aligned(self, cells: list, test_set: str, mode: str, metric: str):
        """(per-query results, values of each cell) when every cell has them on the same queries, else None."""
        got = [self.per_query(c, test_set, mode, metric) for c in cells]
        if not got or any(g is None for g in got):
            return None
        first = got[0][0]
        if any(not _same_queries(first, g[0]) for g in got[1:]):
            return None
        return first, [g[1] for g in got]

    # ----------------------------------------------------------------------------- results
    def interval(self, cells: list, test_set: str, mode: str, metric: str) -> CellInterval | None:
        """The number of a row (its cells: one per seed) and its interval; None when no cell has it."""
        finished = self._finished((cells, test_set, mode), metric)[0]
        vals = [self.value(c, test_set, mode, metric) for c in finished]
        if not vals:
            return None
        n, mean = len(vals), float(np.mean(vals))
        aligned = self._aligned(finished, test_set, mode, metric)
        if n == 1:
            if aligned is None:
                return CellInterval(mean, math.nan, math.nan, "", 1, math.nan)
            pq, (values,) = aligned
            iv = self.bootstrap(test_set, pq).interval(values, self.level)
            # the value is the unrounded metric of `eval`; the interval resamples the per-query results
            return CellInterval(mean, iv.low, iv.high, BOOTSTRAP, 1, math.nan)
        std = float(np.std(vals, ddof=1))
        if aligned is None:
            _, low, high = mean_interval(vals, self.level)
            return CellInterval(mean, low, high, SEEDS, n, std)
        pq, per_seed = aligned
        test_se = self.bootstrap(test_set, pq).standard_error(np.mean(per_seed, axis=0))
        _, low, high = mean_interval(vals, self.level, extra_se=test_se)
        return CellInterval(mean, low, high, SEEDS_BOOTSTRAP, n, std)

    def compare(self, row: tuple, ref: tuple, metric: str) -> Comparison | None:
        """`row` against `ref`, each (cells, test set, mode): paired bootstrap with one seed a side, Welch's
        test with several; None otherwise (a side without results, unequal seed counts of which one is 1,
        one seed without per-query results, or other queries)."""
        row, ref = self._finished(row, metric), self._finished(ref, metric)
        a, b = self.seed_values(*row, metric), self.seed_values(*ref, metric)
        if len(a) >= 2 and len(b) >= 2:
            w = welch(a, b, self.level)
            return Comparison(w.diff, w.low, w.high, WELCH, w.p, w.df)
        if len(a) != 1 or len(b) != 1:
            return None
        got_a, got_b = self._aligned(*row, metric), self._aligned(*ref, metric)
        if got_a is None or got_b is None or not _same_queries(got_a[0], got_b[0]):
            return None
        d = self.bootstrap(row[1], got_a[0]).paired(got_a[1][0], got_b[1][0], self.level)
        return Comparison(a[0] - b[0], d.low, d.high, PAIRED, d.p, math.nan)

    def _finished(self, ref: tuple, metric: str) -> tuple:
        cells, test_set, mode = ref
        return [c for c in cells if self.value(c, test_set, mode, metric) is not None], test_set, mode


def _same_queries(a: dict, b: dict) -> bool:
    return np.array_equal(a["index"], b["index"]) and np.array_equal(a["pids"], b["pids"])


def cell_interval(metrics: dict, cells: list, test_set: str, mode: str, metric: str,
                  uncertainty: Uncertainty | None = None) -> CellInterval | None:
    """One number's value and interval: `cells` (one per seed, e.g. a row ref's `cells`) evaluated on
    `test_set` in `mode`. Pass an `Uncertainty` of the same `metrics` to reuse its decoded results."""
    return (uncertainty or Uncertainty(metrics)).interval(cells, test_set, mode, metric)


def table_intervals(study, table_id: str, metrics: dict) -> pd.DataFrame:
    """Every own number of table `table_id`: columns row, dataset, metric, value, low, high, method,
    n_seeds, std (rows without results are left out)."""
    unc = Uncertainty(metrics)
    out = []
    for ref in (r for r in study.rows if r.source == "table" and r.table == table_id):
        for m in ref.metrics:
            iv = unc.interval(ref.cells, ref.dataset, ref.mode, m)
            if iv is not None:
                out.append({"row": ref.row, "dataset": ref.dataset, "metric": m, "value": iv.value, "low": iv.low,
                            "high": iv.high, "method": iv.method, "n_seeds": iv.n_seeds, "std": iv.std})
    return pd.DataFrame(out, columns=["row", "dataset", "metric", "value", "low", "high", "method", "n_seeds", "std"])

"""What each valid query contributes to a test set's metrics, as metrics.json stores it (`per_query`).

Every metric of the tables is a mean over the valid queries of a per-query number: a Rank-k hit
(`first_hit < k`, 0 or 100), the query's AP, INP or AP@50 (percent). Storing those numbers lets the
tables put an interval on every cell (a bootstrap over query identities, `mhsa.evaluation.bootstrap`)
and compare two rows on the same test set query by query, without re-evaluating a model
(docs/evaluation.md, "Per-query results").

metrics.json's form, per test set (lists over the valid queries, in query order):

    {"index": [...], "pids": [...],
     "modes": {"<test mode>": {"first_hit": [...], "AP": [...], "INP": [...], "AP@50": [...]}}}

`first_hit`: the 0-based junk-free rank of the query's first true match; AP, INP, AP@50 as fractions,
rounded to `DECIMALS` places (the table's value stays the unrounded metric of `eval`).

NumPy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DECIMALS", "FIELDS", "metric_values", "to_json", "from_json", "problem"]

DECIMALS = 6  # of a fraction: 1e-4 percentage points, far below the table's 0.1
FIELDS = ("first_hit", "AP", "INP", "AP@50")
_FRACTION_OF = {"mAP": "AP", "mINP": "INP", "mAP@50": "AP@50"}


def metric_values(mode_data: dict, metric: str) -> np.ndarray:
    """Per valid query, the number whose mean is `metric` (percent): rank<k> -> 100 * (first_hit < k),
    mAP -> 100 * AP, mINP -> 100 * INP, mAP@50 -> 100 * AP@50."""
    if metric.startswith("rank") and metric[4:].isdigit():
        return (np.asarray(mode_data["first_hit"]) < int(metric[4:])) * 100.0
    if metric in _FRACTION_OF:
        return np.asarray(mode_data[_FRACTION_OF[metric]], dtype=np.float64) * 100.0
    raise KeyError(f"no per-query form of metric {metric!r}; known: rank<k>, {', '.join(_FRACTION_OF)}")


def to_json(per_query: dict) -> dict:
    """`evaluate_modes_per_query`'s second result as plain lists (ints, rounded fractions)."""
    def floats(a) -> list:
        return [round(float(x), DECIMALS) for x in np.asarray(a, dtype=np.float64)]

    return {
        "index": [int(i) for i in per_query["index"]],
        "pids": [int(p) for p in per_query["pids"]],
        "modes": {mode: {"first_hit": [int(h) for h in d["first_hit"]],
                         **{f: floats(d[f]) for f in FIELDS[1:]}}
                  for mode, d in per_query["modes"].items()},
    }


def problem(data) -> str | None:
    """What is wrong with one test set's stored per-query results, or None (the shape readers rely on)."""
    if not isinstance(data, dict) or not isinstance(data.get("modes"), dict):
        return "not a mapping with `index`, `pids` and `modes`"
    n = len(data.get("pids") or [])
    if not isinstance(data.get("pids"), list) or not isinstance(data.get("index"), list) or len(data["index"]) != n:
        return "`index` and `pids` are not lists of the same length"
    for mode, d in data["modes"].items():
        if not isinstance(d, dict) or any(not isinstance(d.get(f), list) or len(d[f]) != n for f in FIELDS):
            return f"mode {mode!r} does not hold {', '.join(FIELDS)} for each of the {n} queries"
    return None


def from_json(data: dict) -> dict:
    """metrics.json's per-test-set entry with NumPy arrays (`index`, `pids` int64; per mode `first_hit`
    int64, the rest float64)."""
    return {
        "index": np.asarray(data["index"], dtype=np.int64),
        "pids": np.asarray(data["pids"], dtype=np.int64),
        "modes": {mode: {"first_hit": np.asarray(d["first_hit"], dtype=np.int64),
                         **{f: np.asarray(d[f], dtype=np.float64) for f in FIELDS[1:]}}
                  for mode, d in data["modes"].items()},
    }

"""Evaluation: Market-1501 protocol, k-reciprocal re-ranking, feature extraction and distances, the
test-mode grammar (`modes`), the per-cell diagnostics (`diagnostics`: why a cell scores what it does), the
per-query results metrics.json stores (`per_query`) and the bootstrap over query identities that puts an
interval on a test set's number (`bootstrap`).

The numeric functions are imported on first use, so that the test-mode grammar (`modes`) can be
read without importing torch."""

import importlib

__all__ = ["evaluate", "re_ranking", "extract_features", "squared_euclidean", "evaluate_modes",
           "evaluate_modes_per_query"]
_LAZY = {"evaluate": "protocol", "re_ranking": "rerank", "extract_features": "features",
         "squared_euclidean": "features", "evaluate_modes": "features", "evaluate_modes_per_query": "features"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

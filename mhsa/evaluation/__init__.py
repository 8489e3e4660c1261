"""Evaluation: Market-1501 protocol, k-reciprocal re-ranking, feature extraction and distances."""

from .features import evaluate_modes, extract_features, squared_euclidean
from .protocol import evaluate
from .rerank import re_ranking

__all__ = ["evaluate", "re_ranking", "extract_features", "squared_euclidean", "evaluate_modes"]

"""The test-mode grammar, in one place: ``global | local | concat | head<i>``, optionally ``_rerank``.

``global`` is q* (the Global Feature Branch), ``local`` p* (MHSA-Net*), ``concat`` [p*, q*]
(MHSA-Net), ``head<i>`` the i-th head embedding P_i (1-based, Table VI); ``_rerank`` adds
k-reciprocal re-ranking (Table I). The JSON schema of config.yaml uses ``MODE_PATTERN`` verbatim
(tests/workflow/test_schema_drift.py checks it), the study, the run config and feature extraction call
``parse_mode``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mhsa.errors import ConfigError

BASE_FEATURES = ("global", "local", "concat")
RERANK_SUFFIX = "_rerank"
MODE_PATTERN = r"^(global|local|concat|head[1-9][0-9]*)(_rerank)?$"
_MODE_RE = re.compile(MODE_PATTERN)
ALLOWED_FORMS = "global, local, concat or head<i> (i >= 1), each optionally with _rerank"
# k-reciprocal re-ranking of the `_rerank` modes: the paper's (and Zhong et al.'s) parameters.
# mhsa.evaluation.rerank re-exports them; EvalConfig and evaluate_modes default to them.
RERANK_DEFAULTS = {"k1": 20, "k2": 6, "lambda_value": 0.3}


def parse_mode(mode: str) -> tuple[str, int | None, bool]:
    """'head3_rerank' -> ('head3', 3, True); 'concat' -> ('concat', None, False)."""
    m = _MODE_RE.match(mode) if isinstance(mode, str) else None
    if not m:
        raise ConfigError(f"unknown test mode {mode!r}; use {ALLOWED_FORMS}")
    base = m.group(1)
    head = int(base[len("head"):]) if base.startswith("head") else None
    return base, head, m.group(2) is not None


def default_modes(mhsam: bool) -> list[str]:
    """Modes evaluated when none are configured: all three features with MHSAM, q* without."""
    return list(BASE_FEATURES) if mhsam else ["global"]


def base_modes(modes: Iterable[str]) -> list[str]:
    """The features to extract for ``modes``: sorted, without ``_rerank``, each once."""
    return sorted({parse_mode(m)[0] for m in modes})

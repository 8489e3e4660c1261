"""MHSA-Net losses (paper Eq 3-5, 8, 10-13). The loss functions are imported on first use, so
that `mhsa.losses.options` (allowed values, defaults) can be read without importing torch."""

import importlib

__all__ = ["TERMS", "Criterion", "competition", "fdrt", "hard_triplet", "ihtl"]
_LAZY = {"TERMS": "criterion", "Criterion": "criterion", "competition": "competition", "fdrt": "fdrt",
         "hard_triplet": "triplet", "ihtl": "ihtl"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

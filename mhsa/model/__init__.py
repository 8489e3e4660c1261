"""MHSA-Net model (paper Sections IV-V): ``build_model`` is the public entry point.

The allowed values of the model switches live here (``FUSIONS``, ``BACKBONES``, ``LAST_STRIDES``,
``ATTENTION_LAYERS``, defaults ``SWITCHES``, all from the torch-free ``mhsa.switches``); the run
config and the workflow schema take them from this package. ``build_model`` and ``MHSANet`` are
imported on first use, so checking a config does not import torch.
"""

import importlib

from mhsa.switches import ATTENTION_LAYERS, BACKBONES, FUSIONS, LAST_STRIDES, SWITCHES

__all__ = ["ATTENTION_LAYERS", "BACKBONES", "FUSIONS", "LAST_STRIDES", "SWITCHES", "MHSANet", "build_model"]
_LAZY = {"MHSANet": "build", "build_model": "build"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""MHSA-Net model (paper Sections IV-V): ``build_model`` is the public entry point.

The allowed values of the model switches live here (``FUSIONS``, ``BACKBONES``, ``LAST_STRIDES``,
``ATTENTION_LAYERS``); the run config and the workflow schema take them from this package.
"""

from mhsa.model.backbone import BACKBONES, LAST_STRIDES
from mhsa.model.build import SWITCHES, MHSANet, build_model
from mhsa.model.heads import ATTENTION_LAYERS, FUSIONS

__all__ = ["ATTENTION_LAYERS", "BACKBONES", "FUSIONS", "LAST_STRIDES", "SWITCHES", "MHSANet", "build_model"]

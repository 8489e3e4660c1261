"""MHSA-Net model (paper Sections IV-V): ``build_model`` is the public entry point."""

from mhsa.model.build import SWITCHES, MHSANet, build_model

__all__ = ["SWITCHES", "MHSANet", "build_model"]

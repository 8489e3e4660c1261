"""MHSA-Net reproducibility harness (Tan et al., Multi-Head Self-Attention Network for Occluded Re-ID)."""

__version__ = "0.1.0"

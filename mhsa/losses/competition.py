"""Attention competition regulariser L_C, Eq 12 (the ACM of Section VI)."""

from __future__ import annotations

import torch

from mhsa.switches import COMPETITION_CODE_THRESHOLD as CODE_THRESHOLD
from mhsa.switches import COMPETITION_FORMS as FORMS
from mhsa.switches import COMPETITION_REDUCTIONS as REDUCTIONS
from mhsa.switches import DEFAULT_GAMMA

__all__ = ["CODE_THRESHOLD", "DEFAULT_GAMMA", "FORMS", "REDUCTIONS", "competition"]


def competition(
    alpha: torch.Tensor,
    gamma: float = DEFAULT_GAMMA,
    form: str = "paper",
    reduction: str = "mean",
    code_threshold: float = CODE_THRESHOLD,
) -> torch.Tensor:
    """Eq 12: per image sum over heads and pixels of min(alpha, gamma)^2; mean over images.

    alpha: (B, K, H, W). ``form="code"`` is the authors' code instead: per image the plain sum of the weights
    below ``code_threshold`` (no square, gamma unused). ``reduction="sum"`` sums the per-image values over
    the batch, as the authors' trainer does (main_reid.py:136 loops over the images of ``hongchen``).
    """
    if form not in FORMS:
        raise ValueError(f"form={form!r} must be one of {list(FORMS)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} must be one of {list(REDUCTIONS)}")
    alpha = alpha.float().flatten(1)
    if form == "paper":
        if gamma <= 0:
            raise ValueError(f"gamma={gamma!r} must be > 0 (Eq 12)")
        per_image = alpha.clamp_max(gamma).pow(2).sum(1)
    else:
        per_image = torch.where(alpha < code_threshold, alpha, torch.zeros_like(alpha)).sum(1)
    return per_image.sum() if reduction == "sum" else per_image.mean()

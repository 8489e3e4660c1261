"""Attention competition regulariser L_C, Eq 12 (the ACM of Section VI)."""

from __future__ import annotations

import torch

from mhsa.switches import COMPETITION_FORMS as FORMS
from mhsa.switches import DEFAULT_GAMMA

__all__ = ["CODE_THRESHOLD", "DEFAULT_GAMMA", "FORMS", "competition"]

# the authors' code hard-codes this threshold instead of using gamma
CODE_THRESHOLD = 0.01


def competition(alpha: torch.Tensor, gamma: float = DEFAULT_GAMMA, form: str = "paper") -> torch.Tensor:
    """Eq 12: per image sum over heads and pixels of min(alpha, gamma)^2; mean over images.

    alpha: (B, K, H, W). ``form="code"`` is the authors' code instead: per image the plain sum of the weights
    below 0.01 (no square, gamma unused), mean over images.
    """
    if form not in FORMS:
        raise ValueError(f"form={form!r} must be one of {list(FORMS)}")
    alpha = alpha.float().flatten(1)
    if form == "paper":
        if gamma <= 0:
            raise ValueError(f"gamma={gamma!r} must be > 0 (Eq 12)")
        per_image = alpha.clamp_max(gamma).pow(2).sum(1)
    else:
        per_image = torch.where(alpha < CODE_THRESHOLD, alpha, torch.zeros_like(alpha)).sum(1)
    return per_image.mean()

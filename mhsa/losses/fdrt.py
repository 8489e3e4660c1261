"""Feature Diversity Regularization Term (FDRT), Eq 3."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from mhsa.switches import FDRT_NORMS as NORMS

__all__ = ["NORMS", "fdrt"]


def fdrt(P: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    """Eq 3: (1/K^2) ||G - I|| with G = P P^T of the L2-normalised head embeddings; mean over images.

    P: (B, K, D). ``norm="l1"`` is Eq 3's entry-wise L1 norm; ``"fro"`` is the Frobenius norm that the paper's
    text and the authors' code use.
    """
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} must be one of {list(NORMS)}")
    K = P.shape[1]
    unit = F.normalize(P.float(), dim=-1)
    deviation = unit @ unit.transpose(1, 2) - torch.eye(K, dtype=unit.dtype, device=unit.device)
    if norm == "l1":
        per_image = deviation.abs().sum(dim=(1, 2))
    else:
        per_image = torch.linalg.matrix_norm(deviation, ord="fro")
    return (per_image / K**2).mean()

"""Feature Diversity Regularization Term (FDRT), Eq 3."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from mhsa.switches import FDRT_FORMS
from mhsa.switches import FDRT_NORMS as NORMS

__all__ = ["FDRT_FORMS", "NORMS", "fdrt", "fdrt_authors"]
# loss.py:230 scales by 1/25 whatever K is (1/K^2 for K=5)
AUTHORS_SCALE = 1.0 / 25.0


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


def fdrt_authors(P: torch.Tensor) -> torch.Tensor:
    """The authors' FDRT (models/networks.py:301-303, loss.py:225-232), unweighted.

    G = P P^T from the UN-normalised heads; each row of G is scaled to unit L2 norm, then each column of
    the result; per image (1/25) ||G' - I||_F; SUMMED over the images of the batch.
    """
    P = P.float()
    K = P.shape[1]
    gram = P @ P.transpose(1, 2)
    gram = gram / gram.norm(dim=2, keepdim=True)  # rows (l2norm over the last axis)
    gram = gram / gram.norm(dim=1, keepdim=True)  # then columns (l2norm of the transpose)
    deviation = gram - torch.eye(K, dtype=gram.dtype, device=gram.device)
    return (AUTHORS_SCALE * deviation.pow(2).sum(dim=(1, 2)).sqrt()).sum()

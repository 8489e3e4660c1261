"""Improved Hard Triplet Loss (IHTL), Eq 5, on the K head embeddings P."""

from __future__ import annotations

import torch

from mhsa.losses.triplet import batch_hard_soft_margin, pair_distances


def ihtl(
    P: torch.Tensor, pids: torch.Tensor, self_positive: bool = False, distance: str = "squared"
) -> torch.Tensor:
    """Eq 5: image-pair distance = max over the KxK head pairs (positives) / min (negatives), then batch-hard.

    P: (B, K, D). ``self_positive=True`` lets an anchor be its own positive (its own heads against each
    other), as the authors' code does; the paper's definition (default) excludes it. ``distance="euclidean"``
    uses square-rooted distances, as the authors' code does (loss.py:249).
    """
    B, K, D = P.shape
    flat = P.float().reshape(B * K, D)
    # (B*K, B*K) head distances viewed as (anchor image, anchor head, other image, other head)
    heads = pair_distances(flat, flat, distance).reshape(B, K, B, K)
    pos_dist = heads.amax(dim=(1, 3))
    neg_dist = heads.amin(dim=(1, 3))
    return batch_hard_soft_margin(pos_dist, neg_dist, pids, self_positive=self_positive)

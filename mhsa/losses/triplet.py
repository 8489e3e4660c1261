"""Batch-hard triplet loss with soft margin, Eq 4 (used on p*, Eq 8, and on z, Eq 10)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

DISTANCES = ("squared", "euclidean")


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d(a_i, b_j) = ||a_i - b_j||_2^2 for all pairs, (N, D) x (M, D) -> (N, M), clamped at 0."""
    # the expanded form avoids materialising an (N, M, D) tensor; clamping removes tiny negative round-off
    d = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1).unsqueeze(0) - 2.0 * a @ b.t()
    return d.clamp_min(0.0)


def pair_distances(a: torch.Tensor, b: torch.Tensor, distance: str = "squared") -> torch.Tensor:
    """``squared``: ||a_i - b_j||^2 (Eq 4-5); ``euclidean``: sqrt(max(||a_i - b_j||^2, 1e-12)), the
    authors' ``euclidean_dist`` (loss.py:29-44), whose clamp keeps the gradient of sqrt finite at 0."""
    if distance not in DISTANCES:
        raise ValueError(f"distance={distance!r} must be one of {list(DISTANCES)}")
    d = squared_distances(a, b)
    return d if distance == "squared" else d.clamp_min(1e-12).sqrt()


def batch_hard_soft_margin(
    pos_dist: torch.Tensor, neg_dist: torch.Tensor, pids: torch.Tensor, self_positive: bool = False
) -> torch.Tensor:
    """Mean over anchors of ln(1 + exp(max_pos pos_dist - min_neg neg_dist)) for (B, B) distance matrices.

    Anchors lacking a positive or a negative in the batch are skipped; if none is left the result is a zero
    that still carries a graph (so ``total.backward()`` works on degenerate batches). No host sync: the
    skipping is done by masking, not by data-dependent indexing.
    """
    same = pids.unsqueeze(0) == pids.unsqueeze(1)
    positive = same if self_positive else same & ~torch.eye(len(pids), dtype=torch.bool, device=pids.device)
    negative = ~same
    valid = positive.any(1) & negative.any(1)
    hardest_pos = pos_dist.masked_fill(~positive, float("-inf")).amax(1)
    hardest_neg = neg_dist.masked_fill(~negative, float("inf")).amin(1)
    # zero the infinite values of skipped anchors before they meet: where() passes them no gradient, so
    # nothing downstream sees inf (softplus of inf - inf would give NaN gradients)
    hardest_pos = torch.where(valid, hardest_pos, torch.zeros_like(hardest_pos))
    hardest_neg = torch.where(valid, hardest_neg, torch.zeros_like(hardest_neg))
    per_anchor = F.softplus(hardest_pos - hardest_neg) * valid
    return per_anchor.sum() / valid.sum().clamp_min(1)


def hard_triplet(feats: torch.Tensor, pids: torch.Tensor, distance: str = "squared") -> torch.Tensor:
    """Eq 4: batch-hard triplet loss, soft margin ln(1+exp(d_p - d_n)), squared Euclidean d, mean over anchors

    An anchor is not its own positive. ``distance="euclidean"`` uses the square root (authors' code).
    """
    feats = feats.float()
    dist = pair_distances(feats, feats, distance)
    return batch_hard_soft_margin(dist, dist, pids)

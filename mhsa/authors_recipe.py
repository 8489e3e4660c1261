"""The authors' public code as a second reading of the training recipe (issue 12); off by default."""

from __future__ import annotations

WARMUPS = ("linear", "staircase")


def staircase_warmup(lr: float, warmup_epochs: int, epoch: int) -> float:
    """The authors' warm-up (main_reid.py:152-154): lr = 1e-4 * (epoch // 5 + 1) for epochs 1-49 of 50.

    In general ten equal stairs over ``warmup_epochs``, from lr/10 up to lr: lr * min(10, 10e // W + 1) / 10.
    """
    if warmup_epochs < 1 or epoch < 1:
        raise ValueError(f"staircase warm-up needs warmup_epochs >= 1 and epoch >= 1, got {warmup_epochs}, {epoch}")
    return lr * min(10, epoch * 10 // warmup_epochs + 1) / 10

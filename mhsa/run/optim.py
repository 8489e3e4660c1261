"""The optimiser and learning-rate schedule of Sec. VII-B (as reid-strong-baseline's ``solver/``).

    optimizer = make_optimizer(cfg.optim, model)
    for epoch in range(1, cfg.optim.epochs + 1):
        set_lr(optimizer, lr_at(cfg.optim, epoch))

Both take the ``optim`` config section (``mhsa.config.OptimConfig``) or a whole ``RunConfig``.
"""

from __future__ import annotations

from typing import Any

import torch

from mhsa.model.authors import frozen_parameter_names

# Parameters the authors' public code leaves out of its optimiser by mistake (optim.freeze_attention_mlp).
ATTENTION_MLP_PREFIX = "mhsam.attention"


def _section(cfg: Any) -> Any:
    return getattr(cfg, "optim", cfg)


def lr_at(cfg: Any, epoch: int) -> float:
    """Linear warm-up over the first `warmup_epochs` (epochs count from 1), then step decay at each
    milestone: epoch e uses lr * decay ** (number of milestones m with e > m); with
    `milestone_epoch: at`, of those with e >= m (the authors' `adjust_lr`, main_reid.py:152-160, decays
    from epoch 200 itself: milestones [200, 300] act as [199, 299] do under the default)."""
    o = _section(cfg)
    if o.warmup_epochs and epoch <= o.warmup_epochs:
        if o.warmup == "staircase":
            return staircase_warmup(o.lr, o.warmup_epochs, epoch)
        frac = (epoch - 1) / max(o.warmup_epochs, 1)
        return o.lr * (o.warmup_factor + (1 - o.warmup_factor) * frac)
    at = o.milestone_epoch == "at"
    return o.lr * o.decay ** sum(epoch >= m if at else epoch > m for m in o.milestones)


def make_optimizer(cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam (the paper) or SGD with momentum over the model's parameters, weight decay on all of them."""
    o = _section(cfg)
    frozen = frozen_parameter_names(model, o.param_set)  # the authors' get_optim_policy (paper-to-code.md (c))
    params = [p for n, p in model.named_parameters()
              if not (o.freeze_attention_mlp and n.startswith(ATTENTION_MLP_PREFIX)) and n not in frozen]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


def staircase_warmup(lr: float, warmup_epochs: int, epoch: int) -> float:
    """The authors' warm-up (main_reid.py:152-154): lr = 1e-4 * (epoch // 5 + 1) for epochs 1-49 of 50.

    In general ten equal stairs over ``warmup_epochs``, from lr/10 up to lr: lr * min(10, 10e // W + 1) / 10.
    """
    if warmup_epochs < 1 or epoch < 1:
        raise ValueError(f"staircase warm-up needs warmup_epochs >= 1 and epoch >= 1, got {warmup_epochs}, {epoch}")
    return lr * min(10, epoch * 10 // warmup_epochs + 1) / 10


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

"""The optimiser and learning-rate schedule of Sec. VII-B (as reid-strong-baseline's ``solver/``).

    optimizer = make_optimizer(cfg.optim, model)
    for epoch in range(1, cfg.optim.epochs + 1):
        set_lr(optimizer, lr_at(cfg.optim, epoch))

Both take the ``optim`` config section (``mhsa.config.OptimConfig``) or a whole ``RunConfig``.
"""

from __future__ import annotations

from typing import Any

import torch

# Parameters the authors' public code leaves out of its optimiser by mistake (optim.freeze_attention_mlp).
ATTENTION_MLP_PREFIX = "mhsam.attention"


def _section(cfg: Any) -> Any:
    return getattr(cfg, "optim", cfg)


def lr_at(cfg: Any, epoch: int) -> float:
    """Linear warm-up over the first `warmup_epochs` (epochs count from 1), then step decay at each
    milestone: epoch e uses lr * decay ** (number of milestones m with e > m)."""
    o = _section(cfg)
    if o.warmup_epochs and epoch <= o.warmup_epochs:
        frac = (epoch - 1) / max(o.warmup_epochs, 1)
        return o.lr * (o.warmup_factor + (1 - o.warmup_factor) * frac)
    return o.lr * o.decay ** sum(epoch > m for m in o.milestones)


def make_optimizer(cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam (the paper) or SGD with momentum over the model's parameters, weight decay on all of them."""
    o = _section(cfg)
    params = [p for n, p in model.named_parameters()
              if not (o.freeze_attention_mlp and n.startswith(ATTENTION_MLP_PREFIX))]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

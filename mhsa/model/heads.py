"""Heads on top of Q(x): GFB (Section IV), MHSAM (Eq 1-2), SAFFM and its ablations (Eq 6-7), RLM (Eq 9).

Softmax and LayerNorm run in float32 so that the heads behave the same under autocast (fp16/bf16).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mhsa.switches import ATTENTION_LAYERS, FUSIONS

__all__ = ["ATTENTION_LAYERS", "FUSIONS", "attention_mlp", "build_fusion"]


class GlobalFeatureBranch(nn.Module):
    """Section IV: q* = ReLU(BN(conv1x1(GAP(Q)))), the Baseline's 512-d global feature."""

    def __init__(self, in_channels: int, feat_dim: int = 512) -> None:
        super().__init__()
        # no conv bias: the BatchNorm right after it has its own shift
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, feat_dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(feat_dim),
            nn.ReLU(inplace=True),
        )

    def forward(self, Q: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(Q, 1)
        return self.reduce(pooled).flatten(1)


def attention_mlp(in_channels: int, num_heads: int, hidden: int = 512, layers: int = 2) -> nn.Sequential:
    """The MLP inside Eq 1, w2 ReLU(w1 Q^T), as 1x1 convolutions (one score per head and pixel).

    ``layers=2`` is the paper (w1: C->512, w2: 512->K, no biases as Eq 1 writes none);
    ``layers=3`` inserts one more 512->512 + ReLU layer, as the authors' public code does.
    """
    if layers not in ATTENTION_LAYERS:
        raise ValueError(f"attention_layers={layers!r} must be 2 (paper Eq 1) or 3 (authors' code)")
    modules: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 1, bias=False), nn.ReLU(inplace=True)]
    if layers == 3:
        modules += [nn.Conv2d(hidden, hidden, 1, bias=False), nn.ReLU(inplace=True)]
    modules.append(nn.Conv2d(hidden, num_heads, 1, bias=False))
    return nn.Sequential(*modules)


class MultiHeadSelfAttention(nn.Module):
    """MHSAM, Eq 1-2: K pixel-wise attention maps alpha and K embeddings P = AvgPool(alpha ⊙ Q) w3 + b3."""

    def __init__(self, in_channels: int, num_heads: int = 8, feat_dim: int = 512, layers: int = 2) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads={num_heads!r} must be >= 1")
        self.num_heads = num_heads
        self.attention = attention_mlp(in_channels, num_heads, hidden=512, layers=layers)  # Eq 1 (w1, w2)
        self.embed = nn.Linear(in_channels, feat_dim)  # Eq 2 (w3, b3)

    def forward(self, Q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q (B,C,h,w) -> (P (B,K,D), alpha (B,K,h,w) float32, summing to 1 over K at every pixel)."""
        # Eq 1: softmax across the K heads, separately at every pixel. With K=1 alpha is all ones.
        alpha = self.attention(Q).float().softmax(dim=1)
        # Eq 2: AvgPool over the h*w pixels of the alpha-weighted Q, one pooled C-vector per head
        pooled = torch.einsum("bkhw,bchw->bkc", alpha.to(Q.dtype), Q) / (Q.shape[-2] * Q.shape[-1])
        return self.embed(pooled), alpha


class SelfAttentionFusion(nn.Module):
    """SAFFM, Eq 6-7: beta = softmax_K(w5 ReLU(w4 P)); p* = sum_i beta_i ⊙ P_i, a 512-d vector."""

    def __init__(self, feat_dim: int = 512, hidden: int = 1024) -> None:
        super().__init__()
        # w4: 512->1024, w5: 1024->512, shared across heads, no biases (Eq 6 writes none; a w5 bias would
        # cancel in the softmax across heads anyway)
        self.score = nn.Sequential(
            nn.Linear(feat_dim, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, feat_dim, bias=False),
        )

    def forward(self, P: torch.Tensor) -> torch.Tensor:
        # softmax across the K heads, separately for each of the 512 channels
        beta = self.score(P).float().softmax(dim=1)
        return (beta * P.float()).sum(dim=1).to(P.dtype)


class ConcatFusion(nn.Module):
    """Table VIII "CONCAT": p* = the K head embeddings flattened to one (B, K*512) vector."""

    def forward(self, P: torch.Tensor) -> torch.Tensor:
        return P.flatten(1)


class SumFusion(nn.Module):
    """Table VIII "SUM": p* = the K head embeddings summed, (B, 512)."""

    def forward(self, P: torch.Tensor) -> torch.Tensor:
        return P.sum(dim=1)


def build_fusion(fusion: str, feat_dim: int) -> nn.Module:
    if fusion == "saffm":
        return SelfAttentionFusion(feat_dim)
    if fusion == "concat":
        return ConcatFusion()
    if fusion == "sum":
        return SumFusion()
    raise ValueError(f"fusion={fusion!r} must be one of {list(FUSIONS)}")


class ResidualLearning(nn.Module):
    """RLM, Eq 9: Z = LayerNorm(Q* + P) with Q* = q* copied K times; z = sum of Z over the K heads.

    ``residual=False`` ("w/o RLM", Table VIII) keeps the LayerNorm and the z losses but drops q*:
    Z = LayerNorm(P), so only the residual connection is ablated.
    """

    def __init__(self, feat_dim: int = 512, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.norm = nn.LayerNorm(feat_dim)

    def forward(self, q: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
        x = P.float()
        if self.residual:
            x = x + q.float().unsqueeze(1)  # broadcasting over K is the "copy q* K times" of Eq 9
        Z = F.layer_norm(
            x, self.norm.normalized_shape, self.norm.weight.float(), self.norm.bias.float(), self.norm.eps
        )
        return Z.sum(dim=1).to(P.dtype)

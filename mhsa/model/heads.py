"""Heads on top of Q(x): GFB (Section IV), MHSAM (Eq 1-2), SAFFM and its ablations (Eq 6-7), RLM (Eq 9).

Softmax and LayerNorm run in float32 so that the heads behave the same under autocast (fp16/bf16).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mhsa.switches import ATTENTION_LAYERS, ATTENTION_MLPS, ATTENTION_SOFTMAXES, FUSIONS

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


# The authors' public code: w_1 2048->1024, w_2 1024->256, w_3 256->K (models/networks.py:217-219)
AUTHORS_ATTENTION_HIDDEN = (1024, 256)


def attention_mlp(
    in_channels: int, num_heads: int, hidden: int = 512, layers: int = 2, form: str = "paper"
) -> nn.Sequential:
    """The MLP inside Eq 1, w2 ReLU(w1 Q^T), as 1x1 convolutions (one score per head and pixel).

    ``layers=2`` is the paper (w1: C->512, w2: 512->K, no biases as Eq 1 writes none);
    ``layers=3`` inserts one more 512->512 + ReLU layer. ``form="authors"`` is the authors' public
    code instead: C->1024->256->K with ReLUs, no biases (``layers`` is then not used).
    """
    if form not in ATTENTION_MLPS:
        raise ValueError(f"attention_mlp={form!r} must be one of {list(ATTENTION_MLPS)}")
    if layers not in ATTENTION_LAYERS:
        raise ValueError(f"attention_layers={layers!r} must be 2 (paper Eq 1) or 3")
    widths = [hidden] * (layers - 1) if form == "paper" else list(AUTHORS_ATTENTION_HIDDEN)
    modules: list[nn.Module] = []
    for width_in, width_out in zip([in_channels, *widths[:-1]], widths, strict=True):
        modules += [nn.Conv2d(width_in, width_out, 1, bias=False), nn.ReLU(inplace=True)]
    modules.append(nn.Conv2d(widths[-1], num_heads, 1, bias=False))
    return nn.Sequential(*modules)


class MultiHeadSelfAttention(nn.Module):
    """MHSAM, Eq 1-2: K pixel-wise attention maps alpha and K embeddings P = AvgPool(alpha ⊙ Q) w3 + b3.

    ``softmax="positions"`` is the authors' code: each head's alpha is a softmax over the h*w positions
    (sums to 1 over the map, so it starts near 1/(h*w)), and P is the alpha-weighted SUM of Q over the
    positions (``torch.bmm`` in the code), which is already an average because alpha sums to 1.
    """

    def __init__(
        self,
        in_channels: int,
        num_heads: int = 8,
        feat_dim: int = 512,
        layers: int = 2,
        softmax: str = "heads",
        mlp: str = "paper",
    ) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads={num_heads!r} must be >= 1")
        if softmax not in ATTENTION_SOFTMAXES:
            raise ValueError(f"attention_softmax={softmax!r} must be one of {list(ATTENTION_SOFTMAXES)}")
        self.num_heads = num_heads
        self.softmax_over = softmax
        self.attention = attention_mlp(in_channels, num_heads, hidden=512, layers=layers, form=mlp)  # Eq 1
        self.embed = nn.Linear(in_channels, feat_dim)  # Eq 2 (w3, b3)

    def forward(self, Q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q (B,C,h,w) -> (P (B,K,D), alpha (B,K,h,w) float32, summing to 1 over K at every pixel)."""
        if self.softmax_over == "positions":
            return self._forward_positions(Q)
        # Eq 1: softmax across the K heads, separately at every pixel. With K=1 alpha is all ones.
        alpha = self.attention(Q).float().softmax(dim=1)
        # Eq 2: AvgPool over the h*w pixels of the alpha-weighted Q, one pooled C-vector per head
        pooled = torch.einsum("bkhw,bchw->bkc", alpha.to(Q.dtype), Q) / (Q.shape[-2] * Q.shape[-1])
        return self.embed(pooled), alpha

    def _forward_positions(self, Q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.attention(Q).float()
        alpha = logits.flatten(2).softmax(dim=-1).view_as(logits)
        pooled = torch.einsum("bkhw,bchw->bkc", alpha.to(Q.dtype), Q)
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


class HeadWeightFusion(nn.Module):
    """SAFFM as the authors' code has it: ONE weight per head, beta = softmax_K(fc3 fc2 fc1 [P_1..P_K]).

    fc1: K*D->2048, fc2: 2048->512, fc3: 512->K, with biases and no non-linearity between them
    (models/networks.py:280-287); p* = sum_k beta_k P_k. The LayerNorm the code puts on p* lives in
    ``MHSANet`` (it shares the RLM's LayerNorm, as the code does).
    """

    def __init__(self, feat_dim: int = 512, num_heads: int = 8) -> None:
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(feat_dim * num_heads, 2048), nn.Linear(2048, 512), nn.Linear(512, num_heads)
        )

    def forward(self, P: torch.Tensor) -> torch.Tensor:
        beta = self.score(P.flatten(1)).float().softmax(dim=1)  # (B, K)
        return (beta.unsqueeze(-1) * P.float()).sum(dim=1).to(P.dtype)


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
    Z = LayerNorm(P), so only the residual connection is ablated. ``detach_q=True`` adds q* without its
    gradient (one reading of "the parameters of P-perp will be optimized"); ``norm_z=True`` puts the same
    LayerNorm once more on z, as the authors' code does (models/networks.py:276).
    """

    def __init__(
        self, feat_dim: int = 512, residual: bool = True, detach_q: bool = False, norm_z: bool = False
    ) -> None:
        super().__init__()
        self.residual = residual
        self.detach_q = detach_q
        self.norm_z = norm_z
        self.norm = nn.LayerNorm(feat_dim)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """This module's LayerNorm in float32 (also used on p* by the authors' SAFFM form)."""
        n = self.norm
        return F.layer_norm(x.float(), n.normalized_shape, n.weight.float(), n.bias.float(), n.eps)

    def forward(self, q: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
        x = P.float()
        if self.residual:
            q_in = q.detach() if self.detach_q else q
            x = x + q_in.float().unsqueeze(1)  # broadcasting over K is the "copy q* K times" of Eq 9
        Z = F.layer_norm(
            x, self.norm.normalized_shape, self.norm.weight.float(), self.norm.bias.float(), self.norm.eps
        )
        z = Z.sum(dim=1)
        if self.norm_z:
            z = self.normalize(z)
        return z.to(P.dtype)

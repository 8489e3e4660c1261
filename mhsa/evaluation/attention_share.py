"""Where the attention goes: the share of each head's attention on background, visible body and occluder.

The paper's Fig. 7 claims that the heads attend to visible, discriminative parts and not to occluders.
Real data sets have no occluder masks; the synthetic generator writes one label map per image
(`mhsa.data.synthetic.LABELS`: 0 background, 1 visible body, 2 occluder). Pure NumPy functions:

* `pool_labels`: a label map pooled to the feature map's grid, as the fraction of each class in each
  cell (the cells of adaptive average pooling: cell i spans rows floor(i*H/h) .. ceil((i+1)*H/h)).
* `attention_shares`: for each head k and class c, the attention-weighted fraction of class c,
  sum_p a_k(p) f_c(p) / sum_p a_k(p), averaged over images. A head spreading its attention evenly gets
  the class's share of the image (`chance_shares`); less than that on the occluder means the head
  avoids it. The Baseline has no heads: its implicit attention is the channel-summed activation of
  Q(x) (`activation_map`), normalised the same way (one "head").
"""

from __future__ import annotations

import math

import numpy as np

CLASSES = ("background", "body", "occluder")


def _bins(n: int, cells: int) -> list[tuple[int, int]]:
    return [(math.floor(i * n / cells), math.ceil((i + 1) * n / cells)) for i in range(cells)]


def pool_labels(labels, grid: tuple[int, int], classes: int = len(CLASSES)) -> np.ndarray:
    """(N, H, W) integer label maps -> (N, classes, h, w): the fraction of each class in each cell."""
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"labels must be (images, H, W), got shape {lab.shape}")
    n, height, width = lab.shape
    h, w = grid
    onehot = (lab[:, None] == np.arange(classes)[None, :, None, None]).astype(np.float64)
    out = np.empty((n, classes, h, w))
    for i, (r0, r1) in enumerate(_bins(height, h)):
        for j, (c0, c1) in enumerate(_bins(width, w)):
            out[:, :, i, j] = onehot[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return out


def attention_shares(alpha, fractions) -> np.ndarray:
    """(N, K, h, w) attention >= 0 and (N, C, h, w) class fractions -> (K, C): each head's share of its
    attention on each class, averaged over images (rows sum to 1). An image where a head has no mass
    counts as uniform attention."""
    a = np.asarray(alpha, dtype=np.float64)
    f = np.asarray(fractions, dtype=np.float64)
    if a.ndim != 4 or f.ndim != 4 or a.shape[0] != f.shape[0] or a.shape[2:] != f.shape[2:]:
        raise ValueError(f"alpha {a.shape} and fractions {f.shape} must be (N, K, h, w) and (N, C, h, w)")
    if (a < 0).any():
        raise ValueError("attention has negative entries")
    a = a.reshape(a.shape[0], a.shape[1], -1)
    mass = a.sum(-1, keepdims=True)
    p = np.divide(a, mass, out=np.full_like(a, 1.0 / a.shape[-1]), where=mass > 0)
    per_image = np.einsum("nkp,ncp->nkc", p, f.reshape(f.shape[0], f.shape[1], -1))
    return per_image.mean(0)


def chance_shares(fractions) -> np.ndarray:
    """(N, C, h, w) -> (C,): the shares of uniform attention, i.e. each class's share of the image."""
    f = np.asarray(fractions, dtype=np.float64)
    return f.reshape(f.shape[0], f.shape[1], -1).mean(-1).mean(0)


def activation_map(fmap) -> np.ndarray:
    """(N, C, h, w) feature map Q(x) -> (N, 1, h, w): the Baseline's implicit attention, the channel sum
    of the activation magnitudes (ReLU outputs are >= 0; |.| keeps it a weight either way)."""
    x = np.abs(np.asarray(fmap, dtype=np.float64))
    return x.sum(1, keepdims=True)


def share_report(alpha, labels) -> dict:
    """metrics.json's `attention_share`: per head and averaged over heads, with chance and the count of
    images. `alpha` (N, K, h, w); `labels` (N, H, W) label maps of the same images."""
    frac = pool_labels(labels, np.asarray(alpha).shape[2:])
    heads = attention_shares(alpha, frac)
    return {"classes": list(CLASSES), "heads": heads.round(6).tolist(), "mean": heads.mean(0).round(6).tolist(),
            "chance": chance_shares(frac).round(6).tolist(), "images": int(frac.shape[0])}

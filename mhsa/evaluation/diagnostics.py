"""Why a cell scores what it scores: per-branch retrieval, attention entropy and head overlap, and the
weighted contribution of each loss term over epochs (docs/demo-study.md).

Pure functions on numpy arrays and plain dicts (no torch, no plotting), so the training loop can call
``cell_diagnostics`` after its final evaluation and the figures (``mhsa.study.diagnostic_plots``) can be
drawn later from metrics.json alone.

* Attention entropy: each head's map alpha_k (B, K, h, w) normalised to a distribution over the h*w
  positions; H = -sum p log p in nats. A uniform map gives log(h*w) (the head selects nothing);
  ``entropy_norm`` = H / log(h*w) is in [0, 1].
* Head mass: the mean of alpha_k over positions and images; with alpha a softmax across the K heads
  (Eq 1) the masses sum to 1, 1/K each when balanced, ~0 for a dead head.
* Head overlap of the attention maps: cosine similarity of two heads' maps (flattened), averaged over
  images: 1 for identical maps, 0 for disjoint ones. With alpha a softmax across heads at every pixel
  (Eq 1), uniform heads all overlap 1.
* Head overlap of the embeddings, the quantity FDRT penalises (Eq 3): (1/K^2) ||G - I|| with G the
  Gram matrix of the L2-normalised head embeddings P_i, mean over images ((K-1)/K for identical
  heads, 0 for orthogonal ones).
* Weighted loss terms: ``history`` rows carry each term's UNWEIGHTED epoch mean (``Criterion``);
  the weight is 1 for the CE and triplet terms, lambda1 for FDRT, lambda2 for IHTL, lambda3 for L_C.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np

__all__ = [
    "attention_entropy", "attention_overlap", "embedding_overlap", "branch_metrics",
    "loss_weights", "weighted_loss_curves", "cell_diagnostics", "flat_metrics", "weighted_loss_steps",
]

_HEAD_RE = re.compile(r"^head([1-9][0-9]*)$")
_EPS = 1e-12


def _maps(alpha) -> np.ndarray:
    a = np.asarray(alpha, dtype=np.float64)
    if a.ndim != 4:
        raise ValueError(f"alpha must be (images, heads, h, w), got shape {a.shape}")
    if (a < 0).any():
        raise ValueError("alpha has negative entries: expected attention weights >= 0")
    return a.reshape(a.shape[0], a.shape[1], -1)


def attention_entropy(alpha) -> np.ndarray:
    """(B, K, h, w) -> (B, K): entropy in nats of each head's map normalised over its h*w positions.
    An all-zero map counts as uniform (it selects nothing)."""
    a = _maps(alpha)
    mass = a.sum(-1, keepdims=True)
    # a head with almost no mass (1e-30 everywhere) still has a shape: normalise, don't clamp
    p = np.divide(a, mass, out=np.full_like(a, 1.0 / a.shape[-1]), where=mass > 0)
    logp = np.log(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logp).sum(-1)


def attention_overlap(alpha) -> np.ndarray:
    """(B, K, h, w) -> (K, K): cosine similarity of the heads' maps, mean over images (diagonal 1)."""
    a = _maps(alpha)
    norm = np.linalg.norm(a, axis=-1, keepdims=True)
    unit = np.divide(a, norm, out=np.zeros_like(a), where=norm > 0)  # an all-zero map overlaps nothing
    return (unit @ unit.transpose(0, 2, 1)).mean(0)


def embedding_overlap(P, norm: str = "l1") -> float:
    """FDRT's quantity (Eq 3) on head embeddings P (B, K, D): (1/K^2) ||G - I||, mean over images;
    ``norm`` "l1" (entry-wise, Eq 3) or "fro" (as ``mhsa.losses.fdrt``)."""
    p = np.asarray(P, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"P must be (images, heads, dim), got shape {p.shape}")
    unit = p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), _EPS)
    dev = unit @ unit.transpose(0, 2, 1) - np.eye(p.shape[1])
    if norm == "l1":
        per_image = np.abs(dev).sum((1, 2))
    elif norm == "fro":
        per_image = np.sqrt((dev**2).sum((1, 2)))
    else:
        raise ValueError(f"norm={norm!r} must be 'l1' or 'fro'")
    return float((per_image / p.shape[1] ** 2).mean())


def branch_metrics(eval_results: Mapping, target: str | None = None) -> dict:
    """Rank-1/mAP per branch from metrics.json's ``eval`` (``{target: {mode: {...}}}``): q* alone
    (``global``), p* alone (``local``), ``concat`` and each head (``head<i>``), plus the best and mean
    head. ``target`` defaults to the first test set."""
    if not eval_results:
        raise ValueError("no evaluation results: the cell has no eval entry")
    target = target or next(iter(eval_results))
    if target not in eval_results:
        raise KeyError(f"test set {target!r} not evaluated; evaluated: {sorted(eval_results)}")
    modes = eval_results[target]
    out = {m: {"rank1": r["rank1"], "mAP": r["mAP"]} for m, r in modes.items()
           if m in ("global", "local", "concat") or _HEAD_RE.match(m)}
    heads = sorted((int(_HEAD_RE.match(m).group(1)), m) for m in out if _HEAD_RE.match(m))
    if heads:
        r1 = [out[m]["rank1"] for _, m in heads]
        out["heads"] = {"best": heads[int(np.argmax(r1))][1], "best_rank1": max(r1),
                        "mean_rank1": float(np.mean(r1)),
                        "mean_mAP": float(np.mean([out[m]["mAP"] for _, m in heads]))}
    return {"target": target, "branches": out}


def _get(cfg, key: str, default):
    return cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)


def loss_weights(loss_cfg) -> dict:
    """Weight of each ``Criterion`` term under a loss config (``LossConfig`` or its dict)."""
    return {"ce_global": 1.0 if _get(loss_cfg, "global_ce", True) else 0.0, "ce_local": 1.0,
            "triplet_local": 1.0, "ce_residual": 1.0, "triplet_residual": 1.0,
            "fdrt": float(_get(loss_cfg, "lambda1", 0.0)), "ihtl": float(_get(loss_cfg, "lambda2", 0.0)),
            "competition": float(_get(loss_cfg, "lambda3", 0.0))}


def weighted_loss_curves(history: list, loss_cfg) -> dict:
    """Per epoch, each term's weight x its mean and its share of the summed weighted terms.
    Returns ``{"epochs": [...], "weighted": {term: [...]}, "share": {term: [...]}}``."""
    weights = loss_weights(loss_cfg)
    terms = [t for t in weights if any(t in row for row in history)]
    epochs = [int(row["epoch"]) for row in history]
    weighted = {t: [weights[t] * float(row.get(t, math.nan)) for row in history] for t in terms}
    totals = [sum(abs(weighted[t][i]) for t in terms if math.isfinite(weighted[t][i]))
              for i in range(len(history))]
    share = {t: [w / tot if tot > 0 and math.isfinite(w) else math.nan for w, tot in zip(v, totals, strict=True)]
             for t, v in weighted.items()}
    return {"epochs": epochs, "weighted": weighted, "share": share}


def _attention_block(alpha, heads) -> dict:
    ent = attention_entropy(alpha)
    positions = int(np.prod(np.shape(alpha)[2:]))
    log_n = math.log(positions) if positions > 1 else 1.0
    per_head = ent.mean(0)
    # share of the attention each head takes (1/K each when balanced; ~0: a dead head whose normalised
    # map may still look sharp or uniform)
    mass = _maps(alpha).mean(-1).mean(0)
    block = {"positions": positions, "entropy": per_head.tolist(), "mass": mass.tolist(),
             "entropy_norm": (per_head / log_n).tolist(), "entropy_norm_mean": float(per_head.mean() / log_n)}
    k = np.shape(alpha)[1]
    if k > 1:
        ov = attention_overlap(alpha)
        block["overlap"] = ov.tolist()
        block["overlap_mean"] = float((ov.sum() - np.trace(ov)) / (k * (k - 1)))
    if heads is not None:
        block["fdrt_overlap"] = embedding_overlap(heads, "l1")
    return block


def cell_diagnostics(attention: Mapping, metrics: Mapping, loss_cfg=None) -> dict:
    """The ``diagnostics`` entry of metrics.json for one cell.

    ``attention``: the arrays of ``attention.npz`` (``alpha`` (B, K, h, w); optional ``heads`` = the
    eval output's P (B, K, D) of the same images); ``metrics``: the cell's metrics dict (``eval``,
    ``history``, and ``config`` whose ``loss`` is used when ``loss_cfg`` is None).
    """
    if "alpha" not in attention:
        raise KeyError(f"attention arrays need 'alpha'; got {sorted(attention)}")
    if loss_cfg is None:
        loss_cfg = metrics.get("config", {}).get("loss", {})
    heads = attention["heads"] if "heads" in attention else None
    out = {"attention": _attention_block(attention["alpha"], heads)}
    if metrics.get("eval"):
        out["branches"] = branch_metrics(metrics["eval"])
    if metrics.get("history"):
        out["losses"] = weighted_loss_curves(metrics["history"], loss_cfg)
    return out


def flat_metrics(diag: Mapping) -> dict:
    """Scalars for MLflow: ``diag.attention.*``, ``diag.<target>.<branch>.rank1|mAP``,
    ``diag.loss_share.<term>`` (last epoch)."""
    att, flat = diag["attention"], {}
    flat["diag.attention.entropy_norm_mean"] = att["entropy_norm_mean"]
    for key in ("overlap_mean", "fdrt_overlap"):
        if key in att:
            flat[f"diag.attention.{key}"] = att[key]
    for i, h in enumerate(att["entropy_norm"], 1):
        flat[f"diag.attention.entropy_norm.head{i}"] = h
    if "branches" in diag:
        t = diag["branches"]["target"]
        for mode, r in diag["branches"]["branches"].items():
            if mode != "heads":
                flat.update({f"diag.{t}.{mode}.rank1": r["rank1"], f"diag.{t}.{mode}.mAP": r["mAP"]})
    if "losses" in diag and diag["losses"]["epochs"]:
        for term, share in diag["losses"]["share"].items():
            if math.isfinite(share[-1]):
                flat[f"diag.loss_share.{term}"] = share[-1]
    if "attention_share" in diag:  # mean over heads, and the share a head spreading evenly would get
        s = diag["attention_share"]
        for cls, share, chance in zip(s["classes"], s["mean"], s["chance"], strict=True):
            flat[f"diag.attention_share.{cls}"] = share
            flat[f"diag.attention_share.{cls}_chance"] = chance
    return flat


def weighted_loss_steps(diag: Mapping) -> list:
    """[(epoch, {"diag.weighted.<term>": value})] for MLflow's step-wise logging."""
    losses = diag.get("losses")
    if not losses:
        return []
    return [(e, {f"diag.weighted.{t}": v[i] for t, v in losses["weighted"].items() if math.isfinite(v[i])})
            for i, e in enumerate(losses["epochs"])]

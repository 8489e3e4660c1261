"""Feature extraction, distances and per-test-mode evaluation."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from mhsa.errors import ConfigError
from mhsa.switches import RERANK_INPUTS

from .modes import RERANK_SUFFIX, parse_mode
from .protocol import evaluate
from .rerank import RERANK_DEFAULTS, re_ranking

__all__ = ["squared_euclidean", "extract_features", "evaluate_modes", "evaluate_modes_per_query"]
log = logging.getLogger("mhsa.evaluation")


def _as_tensor(x) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.detach().to(torch.float32)


def squared_euclidean(a, b, chunk: int = 4096) -> torch.Tensor:
    """Squared Euclidean distances ``||a_i - b_j||^2`` as float32 (N, M), computed in row chunks of
    ``a`` (``|a|^2 + |b|^2 - 2 a b^T``, clamped at 0). Accepts torch tensors or numpy arrays; the
    result lives on ``a``'s device."""
    a, b = _as_tensor(a), _as_tensor(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) inputs, got {tuple(a.shape)} and {tuple(b.shape)}")
    b = b.to(a.device)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.float32, device=a.device)
    b_sq = (b * b).sum(1)
    bt = b.t()
    for s in range(0, a.shape[0], chunk):
        blk = a[s : s + chunk]
        o = out[s : s + chunk]
        torch.mm(blk, bt, out=o)
        o.mul_(-2).add_((blk * blk).sum(1, keepdim=True)).add_(b_sq).clamp_(min=0)
    return out


def _check_mode_name(mode: str) -> None:
    if parse_mode(mode)[2]:
        base = mode.removesuffix(RERANK_SUFFIX)
        raise ValueError(f"test mode {mode!r}: re-ranking acts on distances; extract {base!r} instead")


def _select(out: Mapping, mode: str) -> torch.Tensor:
    k = parse_mode(mode)[1]
    if k is not None:
        heads = out.get("heads")
        if heads is None or k > heads.shape[1]:
            nheads = 0 if heads is None else heads.shape[1]
            raise ValueError(
                f"test mode {mode!r} unavailable: model output has {nheads} heads "
                f"(available keys: {sorted(out.keys())})"
            )
        return heads[:, k - 1]
    if mode not in out:
        raise ValueError(f"test mode {mode!r} unavailable: available keys: {sorted(out.keys())}")
    return out[mode]


def extract_features(
    model: torch.nn.Module,
    loader: Iterable,
    device="cpu",
    modes: Iterable[str] = ("global",),
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict:
    """Run ``model`` in eval mode over ``loader`` batches ``(img, pid, camid, index)``.

    Returns ``{"features": {mode: float32 CPU tensor (N, D)}, "pids": int64 array, "camids": int64
    array, "indices": int64 array}`` in loader order. Modes: ``global``, ``local``, ``concat``,
    ``head1``..``headK`` (1-based into the ``heads`` output). Features are computed in fp32 even
    inside a caller's autocast (the training's), unless ``amp_dtype`` asks for autocast on ``device``;
    ``channels_last`` converts the input images only (convert the model yourself). The model is not
    moved; its train/eval state is restored afterwards.
    """
    modes = list(modes)
    if not modes:
        raise ValueError("no test mode requested")
    for mode in modes:
        _check_mode_name(mode)
    device = torch.device(device)
    feats: dict[str, list[torch.Tensor]] = {m: [] for m in modes}
    pids, camids, indices = [], [], []
    was_training = model.training
    model.eval()
    # fp32 by default: an autocast around the caller (the training step's) is switched off here
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else torch.autocast(device_type=device.type, enabled=False)
    )
    try:
        with torch.inference_mode(), autocast:
            for batch in loader:
                img, pid, camid, index = batch[:4]
                img = img.to(device, non_blocking=True)
                if channels_last:
                    img = img.contiguous(memory_format=torch.channels_last)
                out = model(img)
                if not isinstance(out, Mapping):
                    raise TypeError(f"model eval forward must return a dict, got {type(out).__name__}")
                for mode in modes:
                    feats[mode].append(_select(out, mode).detach().float().cpu())
                pids.append(np.asarray(pid).reshape(-1))
                camids.append(np.asarray(camid).reshape(-1))
                indices.append(np.asarray(index).reshape(-1))
    finally:
        model.train(was_training)
    if not pids:
        raise ValueError("loader yielded no batch")
    return {
        "features": {m: torch.cat(v, 0) for m, v in feats.items()},
        "pids": np.concatenate(pids).astype(np.int64),
        "camids": np.concatenate(camids).astype(np.int64),
        "indices": np.concatenate(indices).astype(np.int64),
    }


def _percent(res: dict) -> dict:
    cmc = res["cmc"]
    return {
        "rank1": float(cmc[0]) * 100,
        "rank3": float(cmc[2]) * 100,
        "rank5": float(cmc[4]) * 100,
        "rank10": float(cmc[9]) * 100,
        "mAP": res["mAP"] * 100,
        "mINP": res["mINP"] * 100,
        "mAP@50": res["mAP@50"] * 100,
    }


def evaluate_modes(
    q_feats: Mapping,
    g_feats: Mapping,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    modes: Iterable[str],
    rerank_params: Mapping | None = None,
    rerank_input: str = RERANK_INPUTS[0],
) -> dict:
    """Evaluate each test mode (``global``, ``concat``, ``head3``, ``concat_rerank``, ...).

    Distances are squared Euclidean (torchreid's ``euclidean`` metric); ``<base>_rerank`` re-ranks
    the ``<base>`` q-g distances with the q-q and g-g ones, fed to re-ranking as plain Euclidean distances
    (``rerank_input="euclidean"``, the default: Zhong et al.'s code and the authors' evaluator,
    trainers/evaluator.py:102-114), which it squares into its original distance; ``"squared"`` feeds the
    squared ones as torchreid's engine does (re-ranking then works on fourth powers).
    Returns ``{mode: {rank1, rank3, rank5, rank10, mAP, mINP, mAP@50}}`` in percent (full floats).
    """
    return evaluate_modes_per_query(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, modes,
                                    rerank_params, rerank_input)[0]


def evaluate_modes_per_query(
    q_feats: Mapping,
    g_feats: Mapping,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    modes: Iterable[str],
    rerank_params: Mapping | None = None,
    rerank_input: str = RERANK_INPUTS[0],
) -> tuple[dict, dict]:
    """`evaluate_modes` and what each valid query contributes: ``(results, per_query)`` with
    ``per_query = {"index", "pids", "modes": {mode: {"first_hit", "AP", "INP", "AP@50"}}}`` (arrays over
    the valid queries, as `evaluate(..., per_query=True)` gives them; the valid queries are the same in
    every mode). ``mhsa.evaluation.per_query.to_json`` turns it into metrics.json's ``per_query`` entry."""
    params = dict(RERANK_DEFAULTS if rerank_params is None else rerank_params)
    if rerank_input not in RERANK_INPUTS:
        raise ConfigError(f"config key 'eval.rerank_input': {rerank_input!r} must be one of {list(RERANK_INPUTS)}")
    results: dict[str, dict] = {}
    per_query: dict = {"modes": {}}
    cache: dict[str, torch.Tensor] = {}
    modes = list(modes)
    # each base's q-g distances are kept until its last mode, then freed: at Market-1501's 3,368 x 15,913
    # they are 214 MB per base, and a K=8 cell evaluates 11 bases (global, local, concat, 8 heads)
    last_use = {parse_mode(m)[0]: i for i, m in enumerate(modes)}
    for i, mode in enumerate(modes):
        base, _, rerank = parse_mode(mode)
        if base not in q_feats or base not in g_feats:
            raise ValueError(
                f"test mode {mode!r} needs features {base!r}; "
                f"available: q {sorted(q_feats)}, g {sorted(g_feats)}"
            )
        if base not in cache:
            cache[base] = squared_euclidean(q_feats[base], g_feats[base])
        qg = cache[base]
        if rerank:
            qq = squared_euclidean(q_feats[base], q_feats[base])
            gg = squared_euclidean(g_feats[base], g_feats[base])
            if rerank_input == "euclidean":
                qg, qq, gg = qg.sqrt(), qq.sqrt(), gg.sqrt()
            t0 = time.perf_counter()
            dist = re_ranking(qg.cpu().numpy(), qq.cpu().numpy(), gg.cpu().numpy(), **params)
            log.info("%s: re-ranking %d x %d in %.1f s", mode, qg.shape[0], qg.shape[1], time.perf_counter() - t0)
            del qq, gg
        else:
            dist = qg.cpu().numpy()
        res = evaluate(dist, q_pids, g_pids, q_camids, g_camids, max_rank=50, per_query=True)
        results[mode] = _percent(res)
        pq = res.pop("per_query")
        per_query.setdefault("index", pq.pop("index"))
        per_query.setdefault("pids", pq.pop("pids"))
        per_query["modes"][mode] = pq
        del dist, qg
        if last_use[base] == i:
            del cache[base]
    return results, per_query

"""Market-1501 single-query evaluation protocol (CMC, mAP, mINP, mAP@50), vectorised.

Semantics follow torchreid's ``eval_market1501`` (see docs/evaluation.md):

* gallery items are ranked per query by ascending distance with a *stable* sort, i.e. ties are broken
  by gallery index (``np.argsort(kind="stable")``);
* gallery items with the same pid AND the same camera as the query are removed ("junk");
* a query with no true match left is skipped and excluded from every average;
* CMC: cumulative hit indicator clipped at 1; AP: mean of precision at each hit over the whole
  ranking; mINP: R / (1-based rank of the last true match); mAP@50: the same AP sum restricted to the
  top-50 ranks of the junk-free ranking, still divided by R.

Nothing is fully sorted: for each query only the stable-sort positions of its same-pid gallery items
matter, and those are obtained by counting (see ``_same_pid_positions``): a per-row histogram over a
monotone binning plus an exact lexsort of the few elements sharing a bin with a same-pid item. The
result is exactly the stable-argsort position, ties included.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["evaluate"]

MAP_CUTOFF = 50
# Elements (queries x gallery) processed per chunk; ~4M int64 intermediates = 32 MB each.
_CHUNK_ELEMS = 1 << 22
_NBINS = 2048  # bins per query row in _same_pid_positions


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _exact_positions(rows: np.ndarray, gidx: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Stable-sort positions via one argsort per row (fallback for non-finite rows)."""
    out = []
    for r in range(rows.shape[0]):
        order = np.argsort(rows[r], kind="stable")
        inv = np.empty_like(order)
        inv[order] = np.arange(order.size)
        out.append(inv[gidx[r][real[r]]])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _same_pid_positions(rows: np.ndarray, gidx: np.ndarray, real: np.ndarray) -> np.ndarray:
    """0-based stable-sort positions of gallery items ``gidx[real]`` in their distance ``rows``.

    Equivalent to ``argsort(row, kind="stable").argsort()[g]`` without sorting: with a monotone bin
    function ``bin(v) = trunc(v * scale)`` or ``trunc((v - lo) * scale)`` (IEEE subtraction and
    multiplication by a positive constant and truncation are all monotone), the position of item
    ``g`` with value ``s`` is
    ``#{v: bin(v) < bin(s)}`` (a per-row histogram) ``+ #{j: bin(v_j) == bin(s), (v_j, j) < (s, g)}``,
    the second term resolved exactly by a lexsort of the few elements that fall into occupied bins.
    Returns positions in the row-major order of ``real``'s True entries.
    """
    C, ng = rows.shape
    lo, hi = rows.min(), rows.max()
    span = hi - lo
    if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(span)):
        return _exact_positions(rows, gidx, real)
    dt = rows.dtype.type
    scale = dt((_NBINS - 1) / span) if span > 0 else dt(0)
    if not np.isfinite(scale):  # sub-normal span
        return _exact_positions(rows, gidx, real)
    # bin(v) = trunc(v * scale) (monotone); values are shifted by lo first only when v * scale is
    # too large for the rounding error to stay below one bin
    shift = max(abs(float(lo)), abs(float(hi))) * float(scale) > 2.0**20
    lo = dt(lo)

    def raw_bins(v):
        t = np.subtract(v, lo) if shift else np.multiply(v, scale)
        if shift:
            np.multiply(t, scale, out=t)
        return t.astype(np.intp)

    b_lo, b_hi = raw_bins(np.array([lo, hi], rows.dtype))
    nb = int(b_hi - b_lo) + 1  # exact number of bins per row (no clipping needed)
    bins = raw_bins(rows)
    bins += (np.arange(C, dtype=np.intp) * nb - b_lo)[:, None]
    bins = bins.ravel()
    hist = np.bincount(bins, minlength=C * nb)
    cum = np.cumsum(hist) - hist
    r_s, _ = np.nonzero(real)
    g_s = gidx[real]
    v_s = rows[r_s, g_s]
    fb_s = raw_bins(v_s) + (r_s * nb - b_lo)
    below = cum[fb_s] - r_s * ng  # elements in lower bins of the same row
    occ = np.zeros(C * nb, bool)
    occ[fb_s] = True
    e = np.flatnonzero(np.take(occ, bins))  # elements sharing a bin with some same-pid item
    fb_e = bins[e]
    # merge: key (bin, value, gallery index, type) with same-pid items (type 0) before elements (type 1)
    keys_bin = np.concatenate([fb_s, fb_e])
    keys_val = np.concatenate([v_s, rows.ravel()[e]])
    keys_col = np.concatenate([g_s, e % ng])
    keys_typ = np.concatenate([np.zeros(len(fb_s), np.int8), np.ones(len(e), np.int8)])
    order = np.lexsort((keys_typ, keys_col, keys_val, keys_bin))
    is_e = keys_typ[order].astype(np.int64)
    n_e_before = np.cumsum(is_e) - is_e
    where_s = np.empty(len(fb_s), np.int64)
    s_mask = is_e == 0
    where_s[order[s_mask]] = np.nonzero(s_mask)[0]
    same_bin_before = n_e_before[where_s] - np.searchsorted(np.sort(fb_e), fb_s, side="left")
    return below + same_bin_before


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, per_query: bool = False) -> dict:
    """Evaluate a query x gallery distance matrix with the Market-1501 protocol.

    Args:
        distmat: (num_q, num_g) distances (numpy or torch; smaller = more similar).
        q_pids, g_pids, q_camids, g_camids: 1-D integer arrays/tensors.
        max_rank: length of the returned CMC curve. If it exceeds the number of gallery images the
            curve is padded with its last value (torchreid truncates instead).
        per_query: also return what each valid query contributes (the averages are their means), for
            the test-set bootstrap of the tables (docs/evaluation.md, "Per-query results").

    Returns:
        dict with ``cmc`` (float64 array of length ``max_rank``, fractions), ``mAP``, ``mINP``,
        ``mAP@50`` (fractions) and ``num_valid_queries`` (int); with ``per_query``, also
        ``per_query``: ``{"index", "pids", "first_hit", "AP", "INP", "AP@50"}``, arrays over the valid
        queries in query order: the query's row, its pid, the 0-based junk-free rank of its first true
        match (Rank-k hit: ``first_hit < k``), and its AP, INP and AP@50 (fractions).

    Raises:
        ValueError: on shape mismatches or when no query has a valid gallery match.
    """
    dist = _to_numpy(distmat)
    q_pids, g_pids = _to_numpy(q_pids).reshape(-1), _to_numpy(g_pids).reshape(-1)
    q_camids, g_camids = _to_numpy(q_camids).reshape(-1), _to_numpy(g_camids).reshape(-1)
    if dist.ndim != 2:
        raise ValueError(f"distmat must be 2-D, got shape {dist.shape}")
    num_q, num_g = dist.shape
    if len(q_pids) != num_q or len(q_camids) != num_q:
        raise ValueError(f"distmat has {num_q} rows but {len(q_pids)} q_pids / {len(q_camids)} q_camids")
    if len(g_pids) != num_g or len(g_camids) != num_g:
        raise ValueError(f"distmat has {num_g} columns but {len(g_pids)} g_pids / {len(g_camids)} g_camids")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if dist.dtype not in (np.float32, np.float64):
        dist = dist.astype(np.float64)

    # Group gallery indices by pid (ascending index inside a group -> stable tie order).
    g_order = np.argsort(g_pids, kind="stable")
    uniq_pids, g_start, g_count = np.unique(g_pids[g_order], return_index=True, return_counts=True)
    if num_g == 0:  # keep indexing below well defined; reported as "no valid query"
        uniq_pids, g_start, g_count = np.zeros(1, g_pids.dtype), np.zeros(1, int), np.zeros(1, int)
    loc = np.minimum(np.searchsorted(uniq_pids, q_pids), len(uniq_pids) - 1)
    has_pid = (uniq_pids[loc] == q_pids) & (g_count[loc] > 0)
    n_same = np.where(has_pid, g_count[loc], 0)
    start = np.where(has_pid, g_start[loc], 0)
    # number of true matches (same pid, other camera) per query
    n_hits = np.zeros(num_q, np.int64)
    for gsize in np.unique(n_same[n_same > 0]):
        rows = np.nonzero(n_same == gsize)[0]
        cols = g_order[start[rows, None] + np.arange(gsize)]
        n_hits[rows] = (g_camids[cols] != q_camids[rows, None]).sum(1)
    valid_q = np.nonzero(n_hits > 0)[0]
    if valid_q.size == 0:
        raise ValueError(
            f"no valid query: none of the {num_q} queries has a true match (same pid, different camera) "
            f"among the {num_g} gallery images"
        )

    # per-query accumulators (only valid queries are filled / used)
    first_hit = np.zeros(num_q, np.int64)  # 0-based junk-free rank of the first true match
    last_hit = np.zeros(num_q, np.int64)
    ap_sum = np.zeros(num_q)
    ap50_sum = np.zeros(num_q)
    is_valid = n_hits > 0

    chunk = max(1, _CHUNK_ELEMS // max(num_g, 1))
    for c0 in range(0, num_q, chunk):
        c1 = min(c0 + chunk, num_q)
        if not is_valid[c0:c1].any():
            continue
        qi = np.arange(c0, c1)
        G = int(n_same[qi].max())
        slot = np.arange(G)
        real = (slot[None, :] < n_same[qi, None]) & is_valid[qi, None]  # (C, G) padded same-pid slots
        gidx = g_order[np.where(real, start[qi, None] + slot, 0)]  # (C, G) gallery indices
        pos = np.full(real.shape, np.iinfo(np.int64).max)
        pos[real] = _same_pid_positions(dist[c0:c1], gidx, real)  # contiguous view, no copy
        order = np.argsort(pos, axis=1, kind="stable")
        pos = np.take_along_axis(pos, order, 1)
        gidx = np.take_along_axis(gidx, order, 1)
        real = np.take_along_axis(real, order, 1)

        same_cam = g_camids[gidx] == q_camids[qi, None]
        junk = same_cam & real
        hit = (~same_cam) & real
        kept_pos = pos - (np.cumsum(junk, 1) - junk)  # 0-based rank after junk removal
        hit_no = np.cumsum(hit, 1)  # 1-based index of each hit among the hits
        prec = np.where(hit, hit_no / (kept_pos + 1.0), 0.0)
        ap_sum[qi] = prec.sum(1)
        ap50_sum[qi] = np.where(kept_pos < MAP_CUTOFF, prec, 0.0).sum(1)
        first_hit[qi] = np.where(hit, kept_pos, np.iinfo(np.int64).max).min(1)
        last_hit[qi] = np.where(hit, kept_pos, -1).max(1)

    R = n_hits[valid_q].astype(np.float64)
    first_hit, last_hit = first_hit[valid_q], last_hit[valid_q]
    ap_sum, ap50_sum = ap_sum[valid_q], ap50_sum[valid_q]
    nv = valid_q.size
    counts = np.bincount(np.minimum(first_hit, max_rank), minlength=max_rank + 1)[:max_rank]
    cmc = np.cumsum(counts) / nv
    ap, inp, ap50 = ap_sum / R, R / (last_hit + 1.0), ap50_sum / R
    out = {
        "cmc": cmc.astype(np.float64),
        "mAP": float(np.mean(ap)),
        "mINP": float(np.mean(inp)),
        "mAP@50": float(np.mean(ap50)),
        "num_valid_queries": int(nv),
    }
    if per_query:
        out["per_query"] = {"index": valid_q.astype(np.int64), "pids": q_pids[valid_q].astype(np.int64),
                            "first_hit": first_hit.astype(np.int64), "AP": ap, "INP": inp, "AP@50": ap50}
    return out

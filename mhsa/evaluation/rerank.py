"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), vectorised and sparse.

Same semantics as the published reference code (zhunzhong07/person-re-ranking
``python-version/re_ranking_ranklist.py`` == torchreid ``torchreid/utils/rerank.py``):

1. the (q+g) x (q+g) matrix ``D = [[q_q, q_g], [q_g.T, g_g]]`` is squared element-wise
   (``np.power(D, 2)``, in the input dtype) and cast to float32 -> ``D2``;
2. ``original_dist = (D2 / D2.max(axis=0)).T``: row ``i`` is column ``i`` of ``D2`` divided by its
   maximum (for symmetric inputs: row ``i`` of ``D2`` divided by its row maximum);
3. ``initial_rank`` = ascending order of each row of ``original_dist``; k-reciprocal sets with ``k1``,
   expansion with the ``round(k1/2)`` sets of each member when more than 2/3 of that set lies in the
   k-reciprocal set; ``V[i, j] = exp(-original_dist[i, j])`` normalised over the expanded set;
4. local query expansion (if ``k2 != 1``): ``V[i] <- mean(V[initial_rank[i, :k2]])``;
5. Jaccard distance ``1 - sum_k min(V_ik, V_jk) / (2 - sum_k min(V_ik, V_jk))``;
6. ``final = (1 - lambda) * jaccard + lambda * original_dist`` restricted to query rows / gallery columns.

Differences in implementation only (not in semantics): no dense (q+g)^2 matrix is ever built (rows of
``original_dist`` are produced in blocks from the three inputs, only the top-K indices per row are
kept); ``V`` is a float32 ``scipy.sparse`` matrix; set operations are vectorised with boolean masks;
the Jaccard numerator is accumulated (float64) per query block through the inverted index of ``V``
restricted to gallery rows. Ties in ``initial_rank`` are broken by index (the reference uses numpy's
unstable default sort, so on exactly tied distances the two may pick different neighbours).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from .modes import RERANK_DEFAULTS

__all__ = ["RERANK_DEFAULTS", "re_ranking"]

_ROW_ELEMS = 1 << 20  # elements of original_dist materialised at once (rows = _ROW_ELEMS // n)
_PAIR_BLOCK = 1 << 19  # (query, gallery, k) triples expanded at once in the Jaccard step


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class _FullDist:
    """Read access to the virtual matrix ``D = [[q_q, q_g], [q_g.T, g_g]]`` without building it."""

    def __init__(self, q_g, q_q, g_g):
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.nq, self.ng = q_g.shape
        self.n = self.nq + self.ng

    def columns_t(self, a: int, b: int) -> np.ndarray:
        """``D[:, a:b].T`` as a contiguous (b-a, n) array (input dtype)."""
        nq = self.nq
        parts = []
        if a < nq:
            qa, qb = a, min(b, nq)
            parts.append(np.concatenate([self.q_q[:, qa:qb].T, self.q_g[qa:qb]], axis=1))
        if b > nq:
            ga, gb = max(a, nq) - nq, b - nq
            parts.append(np.concatenate([self.q_g[:, ga:gb].T, self.g_g[:, ga:gb].T], axis=1))
        return np.ascontiguousarray(np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0])

    def gather(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``D[rows, cols]`` element-wise."""
        nq = self.nq
        out = np.empty(rows.shape, dtype=np.result_type(self.q_g, self.q_q, self.g_g))
        rq, cq = rows < nq, cols < nq
        m = rq & cq
        out[m] = self.q_q[rows[m], cols[m]]
        m = rq & ~cq
        out[m] = self.q_g[rows[m], cols[m] - nq]
        m = ~rq & cq
        out[m] = self.q_g[cols[m], rows[m] - nq]
        m = ~rq & ~cq
        out[m] = self.g_g[rows[m] - nq, cols[m] - nq]
        return out


def _absmax(x: np.ndarray, axis: int) -> np.ndarray:
    """max |x| along ``axis`` without an |x| copy."""
    if x.size == 0:
        return np.zeros(x.shape[1 - axis], x.dtype)
    return np.maximum(x.max(axis), -x.min(axis))


def _sq32(x: np.ndarray) -> np.ndarray:
    return np.square(x).astype(np.float32, copy=False)


def _reciprocal_mask(rank: np.ndarray) -> np.ndarray:
    """mask[i, a] = i is among the first k columns of rank[rank[i, a]] (k = rank.shape[1])."""
    n = rank.shape[0]
    out = np.empty(rank.shape, bool)
    step = max(1, _ROW_ELEMS // max(rank.shape[1] ** 2, 1))
    for a in range(0, n, step):
        b = min(a + step, n)
        back = rank[rank[a:b]]  # (B, k, k)
        out[a:b] = (back == np.arange(a, b)[:, None, None]).any(2)
    return out


def re_ranking(
    q_g_dist,
    q_q_dist,
    g_g_dist,
    k1: int = RERANK_DEFAULTS["k1"],
    k2: int = RERANK_DEFAULTS["k2"],
    lambda_value: float = RERANK_DEFAULTS["lambda_value"],
) -> np.ndarray:
    """k-reciprocal re-ranking of a query x gallery distance matrix.

    Args:
        q_g_dist: (num_q, num_g) distances; q_q_dist: (num_q, num_q); g_g_dist: (num_g, num_g).
            Numpy arrays or torch tensors. They are SQUARED inside (as in the reference): pass the same
            kind of distance the reference would receive (torchreid passes squared Euclidean distances,
            so effectively ``||a-b||^4`` enters, before per-column max normalisation).
        k1, k2, lambda_value: the paper's parameters (``RERANK_DEFAULTS``: 20, 6, 0.3).

    Returns:
        float32 array (num_q, num_g) of re-ranked distances.
    """
    q_g, q_q, g_g = _np(q_g_dist), _np(q_q_dist), _np(g_g_dist)
    nq, ng = q_g.shape
    if q_q.shape != (nq, nq) or g_g.shape != (ng, ng):
        raise ValueError(f"shape mismatch: q_g {q_g.shape}, q_q {q_q.shape}, g_g {g_g.shape}")
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    D = _FullDist(q_g, q_q, g_g)
    n = D.n
    row_block = max(1, _ROW_ELEMS // n)

    # column maxima of D2 (max of squares == square of max |x|; rounding is monotone)
    absmax_q = np.maximum(_absmax(q_q, 0), _absmax(q_g, 1))
    absmax_g = _absmax(q_g, 0)
    for a in range(0, ng, row_block):
        absmax_g = np.maximum(absmax_g, _absmax(g_g[a : a + row_block], 0))
    colmax = _sq32(np.concatenate([absmax_q, absmax_g]))

    # top-K of each row of original_dist, ascending (ties by index)
    K = min(max(k1 + 1, k2), n)
    rank = np.empty((n, K), np.int64)
    for a in range(0, n, row_block):
        b = min(a + row_block, n)
        od = _sq32(D.columns_t(a, b))
        od /= colmax[a:b, None]
        if K < n:
            part = np.argpartition(od, K - 1, axis=1)[:, :K]
        else:
            part = np.broadcast_to(np.arange(n), od.shape)
        vals = np.take_along_axis(od, part, 1)
        order = np.lexsort((part, vals), axis=1) if part.size else part
        rank[a:b] = np.take_along_axis(part, order, 1)
        del od, part, vals

    def original(rows, cols):
        return _sq32(D.gather(cols, rows)) / colmax[rows]

    # k-reciprocal sets (k1) and the half-size sets used for expansion
    kf = min(k1 + 1, n)
    kh = min(int(np.around(k1 / 2.0)) + 1, n)
    R = rank[:, :kf]
    Rh = rank[:, :kh]
    recip = _reciprocal_mask(R)
    recip_h = _reciprocal_mask(Rh)
    size_h = recip_h.sum(1)

    rows_l, cols_l = [], []
    ii, aa = np.nonzero(recip)
    rows_l.append(ii)
    cols_l.append(R[ii, aa])
    step = max(1, _ROW_ELEMS // max(kf * kh * kf, 1))
    for a in range(0, n, step):
        b = min(a + step, n)
        Rb, recb = R[a:b], recip[a:b]
        cand = Rh[Rb]  # (B, kf, kh) members of each candidate's half set
        cand_ok = recip_h[Rb]  # (B, kf, kh)
        member = ((cand[..., None] == Rb[:, None, None, :]) & recb[:, None, None, :]).any(3)
        cnt = (member & cand_ok).sum(2)
        accept = recb & (cnt > 2.0 / 3 * size_h[Rb])
        bi, ai, ci = np.nonzero(accept[:, :, None] & cand_ok)
        rows_l.append(bi + a)
        cols_l.append(cand[bi, ai, ci])
    rows_a = np.concatenate(rows_l)
    cols_a = np.concatenate(cols_l)
    code = np.unique(rows_a * n + cols_a)
    rows_a, cols_a = code // n, code % n
    del code, rows_l, cols_l

    w = np.exp(-original(rows_a, cols_a)).astype(np.float32)
    rsum = np.bincount(rows_a, weights=w, minlength=n)
    data = (w / rsum[rows_a]).astype(np.float32)
    V = sp.csr_matrix((data, (rows_a, cols_a)), shape=(n, n), dtype=np.float32)
    del rows_a, cols_a, w, data

    if k2 != 1:
        kq = min(k2, n)
        qe_rows = np.repeat(np.arange(n), kq)
        A = sp.csr_matrix(
            (np.ones(n * kq, np.float32), (qe_rows, rank[:, :kq].ravel())), shape=(n, n), dtype=np.float32
        )
        V = (A @ V).tocsr()
        V.data /= np.float32(kq)
        del A, qe_rows
    del rank, R, Rh, recip, recip_h
    V.eliminate_zeros()

    # Jaccard numerator sum_k min(V[i,k], V[j,k]) for query rows i and gallery rows j
    Vq = V[:nq].tocsr()
    Vg = V[nq:].tocsc()  # column k -> gallery rows holding k (inverted index)
    del V
    col_len = np.diff(Vg.indptr)
    q_of_nnz = np.repeat(np.arange(nq), np.diff(Vq.indptr))
    pairs_per_q = np.bincount(q_of_nnz, weights=col_len[Vq.indices], minlength=nq).astype(np.int64)
    final = np.empty((nq, ng), np.float32)
    cum = np.cumsum(pairs_per_q)
    a = 0
    while a < nq:
        base = cum[a - 1] if a else 0
        b = int(np.searchsorted(cum, base + _PAIR_BLOCK, side="right"))
        b = min(max(b, a + 1), nq, a + max(1, _ROW_ELEMS // max(ng, 1)))  # bounds pairs and dense rows
        s0, s1 = Vq.indptr[a], Vq.indptr[b]
        k = Vq.indices[s0:s1]
        val = Vq.data[s0:s1]
        r = np.repeat(np.arange(b - a), np.diff(Vq.indptr[a : b + 1]))
        lens = col_len[k]
        tot = int(lens.sum())
        starts = np.repeat(Vg.indptr[k] - (np.cumsum(lens) - lens), lens)
        idx = starts + np.arange(tot)
        mins = np.minimum(np.repeat(val, lens), Vg.data[idx])
        tgt = np.repeat(r, lens) * ng + Vg.indices[idx]
        tmin = np.bincount(tgt, weights=mins, minlength=(b - a) * ng).reshape(b - a, ng)
        jac = (1.0 - tmin / (2.0 - tmin)).astype(np.float32)
        orig = _sq32(q_g[a:b]) / colmax[a:b, None]
        final[a:b] = jac * np.float32(1 - lambda_value) + orig * np.float32(lambda_value)
        a = b
    return final

"""Slow, obviously-correct references used by the tests and by ``benchmarks/``.

* ``evaluate_loop``: per-query Python loop of the Market-1501 protocol (torchreid ``eval_market1501``
  semantics, stable sort, plus mINP and mAP@50), padded CMC like ``mhsa.evaluation.evaluate``.
* ``re_ranking_loop``: plain NumPy transcription of the k-reciprocal re-ranking reference code
  (zhunzhong07/person-re-ranking ``python-version/re_ranking_ranklist.py``, identical to torchreid's
  ``torchreid/utils/rerank.py``): dense (N x N) matrices, per-probe loops, float32.

Benchmarks import this module by putting ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import numpy as np


def evaluate_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, cutoff=50):
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    num_q, num_g = distmat.shape
    all_cmc, all_ap, all_inp, all_ap50 = [], [], [], []
    for i in range(num_q):
        order = np.argsort(distmat[i], kind="stable")
        pid_sorted = g_pids[order]
        cam_sorted = g_camids[order]
        keep = ~((pid_sorted == q_pids[i]) & (cam_sorted == q_camids[i]))
        raw = (pid_sorted[keep] == q_pids[i]).astype(np.int64)
        if not raw.any():
            continue
        cmc = raw.cumsum()
        last = np.nonzero(raw)[0].max()
        all_inp.append(cmc[last] / (last + 1.0))
        cmc = np.minimum(cmc, 1)
        if len(cmc) < max_rank:
            cmc = np.concatenate([cmc, np.full(max_rank - len(cmc), cmc[-1])])
        all_cmc.append(cmc[:max_rank])
        num_rel = raw.sum()
        prec = raw.cumsum() / np.arange(1.0, len(raw) + 1)
        all_ap.append((prec * raw).sum() / num_rel)
        all_ap50.append((prec * raw)[:cutoff].sum() / num_rel)
    if not all_cmc:
        raise ValueError("no valid query")
    return {
        "cmc": np.asarray(all_cmc, dtype=np.float64).mean(0),
        "mAP": float(np.mean(all_ap)),
        "mINP": float(np.mean(all_inp)),
        "mAP@50": float(np.mean(all_ap50)),
        "num_valid_queries": len(all_cmc),
    }


def per_query_loop(distmat, q_pids, g_pids, q_camids, g_camids, cutoff=50):
    """Per valid query, by a plain loop: (index, pid, 0-based junk-free rank of the first true match,
    AP, INP, AP@50), as lists."""
    distmat = np.asarray(distmat)
    out = {"index": [], "pids": [], "first_hit": [], "AP": [], "INP": [], "AP@50": []}
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        pid_sorted, cam_sorted = np.asarray(g_pids)[order], np.asarray(g_camids)[order]
        keep = ~((pid_sorted == q_pids[i]) & (cam_sorted == q_camids[i]))
        raw = (pid_sorted[keep] == q_pids[i]).astype(np.int64)
        if not raw.any():
            continue
        hits = np.nonzero(raw)[0]
        prec = raw.cumsum() / np.arange(1.0, len(raw) + 1)
        out["index"].append(i)
        out["pids"].append(int(q_pids[i]))
        out["first_hit"].append(int(hits[0]))
        out["AP"].append((prec * raw).sum() / raw.sum())
        out["INP"].append(raw.sum() / (hits[-1] + 1.0))
        out["AP@50"].append((prec * raw)[:cutoff].sum() / raw.sum())
    return out


def re_ranking_loop(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    q_g_dist, q_q_dist, g_g_dist = (np.asarray(x) for x in (q_g_dist, q_q_dist, g_g_dist))
    num_q = q_g_dist.shape[0]
    full = np.block([[q_q_dist, q_g_dist], [q_g_dist.T, g_g_dist]])
    n = full.shape[0]
    # square, column-normalise, transpose (exactly as the reference)
    dist = np.power(full, 2).astype(np.float32)
    del full
    dist = np.transpose(dist / np.max(dist, axis=0))
    V = np.zeros_like(dist, dtype=np.float32)
    rank = np.argsort(dist).astype(np.int32)
    half = int(np.around(k1 / 2.0))

    def reciprocal(rank, i, k):
        fwd = rank[i, : k + 1]
        bwd = rank[fwd, : k + 1]
        return fwd[np.where(bwd == i)[0]]

    for i in range(n):
        krec = reciprocal(rank, i, k1)
        expansion = krec
        for cand in krec:
            cand_rec = reciprocal(rank, cand, half)
            if len(np.intersect1d(cand_rec, krec)) > 2.0 / 3 * len(cand_rec):
                expansion = np.append(expansion, cand_rec)
        expansion = np.unique(expansion)
        w = np.exp(-dist[i, expansion])
        V[i, expansion] = w / np.sum(w)
    dist = dist[:num_q]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(n):
            V_qe[i] = np.mean(V[rank[i, :k2]], axis=0)
        V = V_qe
        del V_qe
    del rank
    inv_index = [np.where(V[:, j] != 0)[0] for j in range(n)]
    jaccard = np.zeros_like(dist, dtype=np.float32)
    for i in range(num_q):
        temp_min = np.zeros((1, n), dtype=np.float32)
        nz = np.where(V[i] != 0)[0]
        for j in nz:
            imgs = inv_index[j]
            temp_min[0, imgs] = temp_min[0, imgs] + np.minimum(V[i, j], V[imgs, j])
        jaccard[i] = 1 - temp_min / (2.0 - temp_min)
    final = jaccard * (1 - lambda_value) + dist * lambda_value
    return final[:num_q, num_q:]


# ------------------------------------------------------------------ the authors' public code (317160e)
# Transcribed for tests only (hongchenphd/MHSA-Net, archives of commit 317160e): what their training
# pipeline does, to compare the harness's `authors` switches with (docs/paper-to-code.md, "Reading 2").


class AuthorsRandomIdentitySampler:
    """datasets/samplers.py:11-33 (their `data_source` items are (path, pid, camid))."""

    def __init__(self, data_source, num_instances=4):
        from collections import defaultdict

        self.data_source = data_source
        self.num_instances = num_instances
        self.index_dic = defaultdict(list)
        for index, (_, pid, _) in enumerate(data_source):
            self.index_dic[pid].append(index)
        self.pids = list(self.index_dic.keys())
        self.num_identities = len(self.pids)

    def __iter__(self):
        import torch

        indices = torch.randperm(self.num_identities)
        ret = []
        for i in indices:
            pid = self.pids[i]
            t = self.index_dic[pid]
            replace = False if len(t) >= self.num_instances else True
            t = np.random.choice(t, size=self.num_instances, replace=replace)
            ret.extend(t)
        return iter(ret)

    def __len__(self):
        return self.num_identities * self.num_instances


class AuthorsCutout:
    """utils/random_erasing.py:11-36, applied after Normalize with mean=[0, 0, 0] (utils/transforms.py:82)."""

    def __init__(self, probability=0.5, size=64, mean=(0.0, 0.0, 0.0)):
        self.probability = probability
        self.mean = mean
        self.size = size

    def __call__(self, img):
        import random

        if random.uniform(0, 1) > self.probability:
            return img
        h = self.size
        w = self.size
        for _attempt in range(100):
            if w < img.size()[2] and h < img.size()[1]:
                x1 = random.randint(0, img.size()[1] - h)
                y1 = random.randint(0, img.size()[2] - w)
                if img.size()[0] == 3:
                    img[0, x1:x1 + h, y1:y1 + w] = self.mean[0]
                    img[1, x1:x1 + h, y1:y1 + w] = self.mean[1]
                    img[2, x1:x1 + h, y1:y1 + w] = self.mean[2]
                else:
                    img[0, x1:x1 + h, y1:y1 + w] = self.mean[0]
                return img
        return img


def authors_adjust_lr(ep):
    """main_reid.py:152-160, called with the 1-based epoch (`adjust_lr(optimizer, epoch + 1)`, :169)."""
    if ep < 50:
        return 1e-4 * (ep // 5 + 1)
    elif ep < 200:
        return 1e-3
    elif ep < 300:
        return 1e-4
    return 1e-5

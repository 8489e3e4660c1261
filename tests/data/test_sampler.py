"""PKSampler: P x K batch structure, determinism per (seed, epoch), errors."""

from __future__ import annotations

import pytest

from mhsa.data.sampler import PKSampler
from mhsa.errors import UserError

# 6 identities: 4 with 8 images, one with 5, one with a single image (sampled with replacement)
COUNTS = {10: 8, 11: 8, 12: 8, 13: 8, 14: 5, 15: 1}
PIDS = [pid for pid, n in COUNTS.items() for _ in range(n)]


def batches(sampler, p, k):
    out = list(sampler)
    assert len(out) == len(sampler)
    return [out[i : i + p * k] for i in range(0, len(out), p * k)]


def test_batches_are_p_ids_times_k_images():
    p, k = 3, 4
    s = PKSampler(PIDS, p, k, seed=1)
    # chunks of 4: 2+2+2+2+1+1 = 10 -> 3 batches of 3 ids (the incomplete 4th batch is dropped)
    assert len(s) == 3 * p * k
    for batch in batches(s, p, k):
        assert len(batch) == p * k
        groups = [batch[j * k : (j + 1) * k] for j in range(p)]
        ids = [{PIDS[i] for i in g} for g in groups]
        assert all(len(g) == 1 for g in ids)  # each group of k is one identity
        assert len({next(iter(g)) for g in ids}) == p  # p different identities
        for g in groups:
            if COUNTS[PIDS[g[0]]] >= k:
                assert len(set(g)) == k  # k distinct images where the identity has them
            else:
                assert set(g) == {PIDS.index(PIDS[g[0]])}  # single image repeated


def test_deterministic_per_seed_and_epoch():
    a, b = PKSampler(PIDS, 2, 2, seed=5), PKSampler(PIDS, 2, 2, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != first
    assert list(PKSampler(PIDS, 2, 2, seed=6)) != first


def test_length_is_exact_for_skewed_counts():
    # 23 chunks of 2, but every batch needs a second identity and ids 1-3 have one chunk each:
    # exactly 3 batches (a chunk-count estimate would promise 11)
    pids = [0] * 40 + [1, 2, 3]
    s = PKSampler(pids, 2, 2)
    assert len(s) == 3 * 2 * 2 and len(list(s)) == len(s)


@pytest.mark.parametrize(
    "pids, p, k, match",
    [
        ([], 2, 2, "empty"),
        (PIDS, 1, 4, "at least 2 identities"),
        (PIDS, 4, 1, "at least 2 images"),
        (PIDS, 7, 2, "only 6 identities"),
    ],
)
def test_impossible_settings(pids, p, k, match):
    with pytest.raises(UserError, match=match):  # ConfigError naming data.p/data.k, or DataError
        PKSampler(pids, p, k)


def test_works_with_a_dataloader():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.tensor(PIDS))
    loader = DataLoader(data, batch_size=8, sampler=PKSampler(PIDS, 4, 2))
    for (pids,) in loader:
        assert pids.numel() == 8 and len(set(pids.tolist())) == 4

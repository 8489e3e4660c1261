"""PKSampler and AuthorsSampler (data.sampler): P x K batch structure, determinism per (seed, epoch), errors."""

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


# ------------------------------------------------------- the authors' epoch (data.sampler: authors)
def _authors_batches(sampler, p, k):
    """Batches as their DataLoader(batch_size=p * k, drop_last=True) cuts the sampler's indices."""
    out = [int(i) for i in sampler]
    return [out[i : i + p * k] for i in range(0, len(out) - p * k + 1, p * k)]


@pytest.mark.parametrize("counts", [COUNTS, {i: 3 + i % 7 for i in range(40)}, {i: 1 + i % 3 for i in range(33)}])
def test_authors_sampler_draws_an_epoch_as_the_authors_code(counts):
    """datasets/samplers.py:21-33 (tests/reference_impls.py): each identity once with K images, without
    replacement when it has K; their epoch and ours have the same length, the same identities K times each,
    and DataLoader batches of P identities."""
    import numpy as np
    import torch
    from reference_impls import AuthorsRandomIdentitySampler

    from mhsa.data.sampler import AuthorsSampler, build_sampler

    pids = [pid for pid, n in counts.items() for _ in range(n)]
    p, k = 2, 4
    ours = build_sampler("authors", pids, p, k, seed=3)
    assert isinstance(ours, AuthorsSampler)
    theirs = AuthorsRandomIdentitySampler([(None, pid, 0) for pid in pids], num_instances=k)
    torch.manual_seed(0)
    np.random.seed(0)
    for epoch in range(3):
        ours.set_epoch(epoch)
        a, b = list(ours), [int(i) for i in theirs]
        assert len(a) == len(b) == len(ours) == len(theirs) == len(counts) * k
        for drawn in (a, b):
            by_pid = {}
            for j in range(0, len(drawn), k):
                group = drawn[j : j + k]
                (pid,) = {pids[i] for i in group}  # K consecutive indices: one identity
                by_pid.setdefault(pid, []).append(group)
            assert sorted(by_pid) == sorted(counts) and all(len(g) == 1 for g in by_pid.values())
            for pid, (group,) in by_pid.items():
                if counts[pid] >= k:
                    assert len(set(group)) == k  # without replacement
        assert len(_authors_batches(a, p, k)) == len(_authors_batches(b, p, k)) == len(counts) // p
        assert all(len({pids[i] for i in batch}) == p for batch in _authors_batches(a, p, k))


def test_authors_epoch_is_shorter_than_the_pk_epoch():
    """Market-1501's shape (751 identities, ~17 images each): their epoch is 751 // 32 = 23 batches of 32 x 4,
    ours walks the images: ~100 (docs/paper-to-code.md, "Reading 2")."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from mhsa.data.sampler import build_sampler

    counts = {i: 12 + (i * 7) % 12 for i in range(751)}
    pids = [pid for pid, n in counts.items() for _ in range(n)]
    data = TensorDataset(torch.tensor(pids))
    authors = DataLoader(data, batch_size=128, sampler=build_sampler("authors", pids, 32, 4), drop_last=True)
    pk = DataLoader(data, batch_size=128, sampler=build_sampler("pk", pids, 32, 4), drop_last=True)
    assert len(authors) == len(list(authors)) == 23
    assert 90 <= len(pk) == len(list(pk)) and len(pk) / len(authors) > 4
    first = build_sampler("authors", pids, 32, 4, seed=1)
    again = build_sampler("authors", pids, 32, 4, seed=1)
    assert list(first) == list(again)  # deterministic per (seed, epoch)
    again.set_epoch(1)
    assert list(first) != list(again)
    with pytest.raises(UserError, match="data.sampler"):
        build_sampler("walk", pids, 32, 4)
    with pytest.raises(UserError, match="only 751 identities"):
        build_sampler("authors", pids, 800, 4)

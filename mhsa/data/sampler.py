"""P x K identity samplers for batch-hard triplet training: what one epoch is (`data.sampler`).

`PKSampler` (`pk`, the default; reid-strong-baseline's RandomIdentitySampler): every identity's images
are shuffled and cut into chunks of K (an identity with fewer than K images gets one chunk, filled up by
sampling with replacement; a remainder shorter than K is dropped); batches then take one chunk from each
of P different identities until no full batch is left. Unlike the reference sampler, the batch schedule
is planned so that the number of batches is known in advance (``__len__`` is exact) and only depends on
the per-identity image counts. An epoch walks (almost) every image: ~100 batches of 32 x 4 on
Market-1501.

`AuthorsSampler` (`authors`; the authors' datasets/samplers.py:21-33): each identity once per epoch, in a
random order, with K of its images (without replacement when it has K, else with); consecutive P x K
indices form a batch, the last partial batch is dropped (their DataLoader's `drop_last`). An epoch is
num_ids // P batches: 751 // 32 = 23 on Market-1501, 4-5x fewer steps per epoch than `pk`
(docs/paper-to-code.md, "Reading 2").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from mhsa.errors import ConfigError
from mhsa.errors import DataError


def _check_batch(p: int, k: int, n_ids: int) -> None:
    if p < 2 or k < 2:
        raise ConfigError(
            f"config keys 'data.p', 'data.k': p={p}, k={k}; triplet losses need at least 2 identities (p >= 2) "
            "and at least 2 images per identity (k >= 2) in every batch"
        )
    if p > n_ids:
        raise ConfigError(f"config key 'data.p' is {p} (identities per batch) but the training set has only "
                          f"{n_ids} identities; set data.p to at most {n_ids}")


def _index_by_pid(pids: Sequence[int], name: str) -> dict[int, list[int]]:
    if not pids:
        raise DataError(f"{name}: the training set is empty (no images); check data.root")
    index_by_pid: dict[int, list[int]] = defaultdict(list)
    for i, pid in enumerate(pids):
        index_by_pid[int(pid)].append(i)
    return index_by_pid


class PKSampler(Sampler[int]):
    """Yield dataset indices in batches of ``p * k``: ``p`` identities x ``k`` images each.

    Deterministic per ``(seed, epoch)`` (own numpy Generator, no global RNG); call ``set_epoch``
    before each epoch to get a new order. Use with ``DataLoader(batch_size=p * k, sampler=...)``.
    """

    def __init__(self, pids: Sequence[int], p: int, k: int, seed: int = 0):
        self.index_by_pid = _index_by_pid([int(x) for x in pids], "PKSampler")
        _check_batch(p, k, len(self.index_by_pid))
        self.p, self.k, self.seed, self.epoch = p, k, seed, 0
        self.pid_order = sorted(self.index_by_pid)
        self.chunks_per_pid = [max(len(self.index_by_pid[q]), k) // k for q in self.pid_order]
        self.num_batches = self._max_batches(self.chunks_per_pid, p)

    @staticmethod
    def _max_batches(counts: Sequence[int], p: int) -> int:
        """Largest b such that b batches of p distinct identities fit: sum(min(c, b)) >= p * b."""
        b = 0
        while sum(min(c, b + 1) for c in counts) >= p * (b + 1):
            b += 1
        return b

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches * self.p * self.k

    def _chunks(self, rng: np.random.Generator) -> list[list[list[int]]]:
        out = []
        for pid in self.pid_order:
            idx = np.array(self.index_by_pid[pid])
            if len(idx) < self.k:  # all images once, the rest drawn with replacement
                extra = rng.choice(idx, size=self.k - len(idx), replace=True)
                out.append([rng.permutation(np.concatenate([idx, extra])).tolist()])
            else:
                idx = rng.permutation(idx)
                out.append([idx[j * self.k : (j + 1) * self.k].tolist() for j in range(len(idx) // self.k)])
        return out

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks = self._chunks(rng)
        left = np.array(self.chunks_per_pid)
        for remaining in range(self.num_batches, 0, -1):
            # Pick P random identities, but keep the plan feasible: with r batches to go, an identity
            # holding >= r chunks that is skipped loses one usable chunk; the slack says how many such
            # skips are affordable, so force just enough of them into this batch.
            slack = int(np.minimum(left, remaining).sum()) - self.p * remaining
            order = rng.permutation(np.flatnonzero(left > 0))
            big = [i for i in order if left[i] >= remaining]
            need = max(0, len(big) - slack)
            forced = set(big[:need])
            chosen = big[:need] + [i for i in order if i not in forced][: self.p - need]
            for i in rng.permutation(chosen):
                left[i] -= 1
                yield from chunks[i][left[i]]


class AuthorsSampler(Sampler[int]):
    """The authors' epoch (datasets/samplers.py:21-33): each identity once, in a random order, with ``k``
    of its images (drawn without replacement when it has ``k``, else with replacement), ``num_ids * k``
    indices; with ``DataLoader(batch_size=p * k, drop_last=True)`` every batch holds ``p`` identities and
    an epoch is ``num_ids // p`` batches.

    Deterministic per ``(seed, epoch)`` like `PKSampler` (the authors draw from torch's and NumPy's global
    generators: the same distribution, not the same stream).
    """

    def __init__(self, pids: Sequence[int], p: int, k: int, seed: int = 0):
        self.index_by_pid = _index_by_pid([int(x) for x in pids], "AuthorsSampler")
        _check_batch(p, k, len(self.index_by_pid))
        self.p, self.k, self.seed, self.epoch = p, k, seed, 0
        self.pid_order = sorted(self.index_by_pid)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pid_order) * self.k

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        for i in rng.permutation(len(self.pid_order)):
            idx = self.index_by_pid[self.pid_order[i]]
            yield from (int(j) for j in rng.choice(idx, size=self.k, replace=len(idx) < self.k))


SAMPLER_CLASSES = {"pk": PKSampler, "authors": AuthorsSampler}  # data.sampler (mhsa.switches.SAMPLERS)


def build_sampler(kind: str, pids: Sequence[int], p: int, k: int, seed: int = 0) -> PKSampler | AuthorsSampler:
    """The sampler `data.sampler` names."""
    if kind not in SAMPLER_CLASSES:
        raise ConfigError(f"config key 'data.sampler': {kind!r} must be one of {', '.join(SAMPLER_CLASSES)}")
    return SAMPLER_CLASSES[kind](pids, p, k, seed=seed)

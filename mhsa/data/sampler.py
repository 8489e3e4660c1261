"""P x K identity sampler for batch-hard triplet training (as reid-strong-baseline's RandomIdentitySampler).

An epoch: every identity's images are shuffled and cut into chunks of K (an identity with fewer than
K images gets one chunk, filled up by sampling with replacement; a remainder shorter than K is
dropped); batches then take one chunk from each of P different identities until no full batch is
left. Unlike the reference sampler, the batch schedule is planned so that the number of batches is
known in advance (``__len__`` is exact) and only depends on the per-identity image counts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from mhsa.errors import ConfigError
from mhsa.errors import DataError


class PKSampler(Sampler[int]):
    """Yield dataset indices in batches of ``p * k``: ``p`` identities x ``k`` images each.

    Deterministic per ``(seed, epoch)`` (own numpy Generator, no global RNG); call ``set_epoch``
    before each epoch to get a new order. Use with ``DataLoader(batch_size=p * k, sampler=...)``.
    """

    def __init__(self, pids: Sequence[int], p: int, k: int, seed: int = 0):
        pids = [int(x) for x in pids]
        if not pids:
            raise DataError("PKSampler: the training set is empty (no images); check data.root")
        if p < 2 or k < 2:
            raise ConfigError(
                f"config keys 'data.p', 'data.k': p={p}, k={k}; triplet losses need at least 2 identities (p >= 2) "
                "and at least 2 images per identity (k >= 2) in every batch"
            )
        self.index_by_pid: dict[int, list[int]] = defaultdict(list)
        for i, pid in enumerate(pids):
            self.index_by_pid[pid].append(i)
        if p > len(self.index_by_pid):
            n = len(self.index_by_pid)
            raise ConfigError(f"config key 'data.p' is {p} (identities per batch) but the training set has only "
                              f"{n} identities; set data.p to at most {n}")
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

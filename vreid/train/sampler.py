"""P×K identity batch sampler for batch-hard triplet training (BoT; seed 000: 64×4, seed 003
code: 8 identities × 12 images), distributed over data-parallel workers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class PKSampler(Sampler[list[int]]):
    """Batches of ``p`` identities × ``k`` images (a batch sampler: yields lists of indices).

    Every epoch (``set_epoch``) the identities are reshuffled with ``seed + epoch`` and dealt to
    the ``num_replicas`` workers: each rank gets whole identities, disjoint from the other ranks'
    within the epoch. On a rank, each identity's images are shuffled and cut into chunks of ``k``
    (identities with fewer than ``k`` images are sampled with replacement, one chunk); batches
    take one chunk from each of ``p`` distinct identities, drawn with probability proportional
    to their remaining chunks (fewer chunks left over than BoT's uniform draw), until fewer than
    ``p`` identities have chunks left; so large identities appear in several batches.

    Every rank yields the same number of batches (required by collective training):
    ``drop_last=True`` keeps the minimum over ranks and drops the leftover chunks;
    ``drop_last=False`` keeps the maximum, completing the last batch and padding shorter ranks
    with extra batches drawn again from their own identities. Negative pids (unknown) are
    skipped. Raises ValueError when a rank cannot get ``p`` identities.
    """

    def __init__(
        self,
        pids: Sequence[int] | np.ndarray,
        p: int,
        k: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        drop_last: bool = True,
    ):
        if p < 1 or k < 1:
            raise ValueError(f"PKSampler: p and k must be >= 1, got p={p}, k={k}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"PKSampler: need 0 <= rank < num_replicas, got rank={rank}, "
                f"num_replicas={num_replicas}"
            )
        labels = np.asarray(pids, dtype=np.int64).ravel()
        order = np.argsort(labels, kind="stable")
        ids, starts = np.unique(labels[order], return_index=True)
        groups = np.split(order, starts[1:])
        self._images = {int(i): g for i, g in zip(ids, groups) if i >= 0}
        self._ids = np.array(sorted(self._images), dtype=np.int64)
        if len(self._ids) // num_replicas < p:
            raise ValueError(
                f"PKSampler: cannot fill batches of p={p} identities x k={k} images: "
                f"{len(self._ids)} identities over num_replicas={num_replicas} gives "
                f"{len(self._ids) // num_replicas} per replica, need at least {p}"
            )
        self.p, self.k = p, k
        self.num_replicas, self.rank = num_replicas, rank
        self.seed, self.drop_last = seed, drop_last
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle the next iteration uses (seed + epoch)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()

    def __len__(self) -> int:
        return len(self._batches())

    def _batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._plan(self.epoch))
        return self._cache[1]

    def _chunk(self, pid: int, rng: np.random.Generator) -> list[int]:
        idx = self._images[pid]
        return rng.choice(idx, size=self.k, replace=len(idx) < self.k).tolist()

    def _rank_plan(
        self, ids: np.ndarray, rng: np.random.Generator
    ) -> tuple[list[list[int]], dict[int, list[int]]]:
        """Full batches of one rank, and one left-over chunk for each of the (fewer than p)
        identities that still have chunks."""
        chunks: dict[int, list[list[int]]] = {}
        for pid in ids.tolist():
            idx = self._images[pid]
            if len(idx) < self.k:
                chunks[pid] = [rng.choice(idx, size=self.k, replace=True).tolist()]
            else:
                perm = rng.permutation(idx)
                n = len(idx) // self.k
                chunks[pid] = [perm[i * self.k : (i + 1) * self.k].tolist() for i in range(n)]
        available = ids.tolist()
        batches: list[list[int]] = []
        while len(available) >= self.p:
            batch: list[int] = []
            left = np.array([len(chunks[pid]) for pid in available], dtype=np.float64)
            picks = rng.choice(len(available), size=self.p, replace=False, p=left / left.sum())
            for j in picks.tolist():
                batch.extend(chunks[available[j]].pop())
            batches.append(batch)
            available = [pid for pid in available if chunks[pid]]
        return batches, {pid: chunks[pid][-1] for pid in available}

    def _plan(self, epoch: int) -> list[list[int]]:
        """This rank's batches for ``epoch``; every rank computes all ranks' counts the same way."""
        perm = np.random.default_rng(self.seed + epoch).permutation(self._ids)
        rank_ids = [perm[r :: self.num_replicas] for r in range(self.num_replicas)]
        rngs = [np.random.default_rng([self.seed + epoch, r]) for r in range(self.num_replicas)]
        plans = [self._rank_plan(ids, rng) for ids, rng in zip(rank_ids, rngs)]
        batches, leftover = plans[self.rank]
        ids, rng = rank_ids[self.rank], rngs[self.rank]
        if self.drop_last:
            return batches[: min(len(b) for b, _ in plans)]
        counts = [len(b) + bool(left) for b, left in plans]
        if leftover:
            others = [pid for pid in ids.tolist() if pid not in leftover]
            extra = rng.choice(others, size=self.p - len(leftover), replace=False).tolist()
            last = [i for chunk in leftover.values() for i in chunk]
            batches.append(last + [i for pid in extra for i in self._chunk(pid, rng)])
        while len(batches) < max(counts):
            chosen = rng.choice(ids, size=self.p, replace=False).tolist()
            batches.append([i for pid in chosen for i in self._chunk(pid, rng)])
        return batches

"""PKSampler invariants over several workers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from vreid.train.sampler import PKSampler

P, K = 4, 3


def _pids(n_ids: int = 30, seed: int = 0) -> np.ndarray:
    counts = np.random.default_rng(seed).integers(1, 20, n_ids)  # some identities < K images
    return np.repeat(np.arange(n_ids) * 7 + 3, counts)  # non-contiguous pid values


def _epoch(pids, replicas, epoch=0, seed=0, drop_last=True):
    out = []
    for rank in range(replicas):
        s = PKSampler(pids, P, K, num_replicas=replicas, rank=rank, seed=seed, drop_last=drop_last)
        s.set_epoch(epoch)
        out.append(list(s))
        assert len(s) == len(out[-1])
    return out


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_batches_are_p_ids_by_k_images(replicas, drop_last):
    pids = _pids()
    for batches in _epoch(pids, replicas, drop_last=drop_last):
        assert batches
        for batch in batches:
            assert len(batch) == P * K
            per_id = Counter(pids[batch].tolist())
            assert len(per_id) == P and set(per_id.values()) == {K}


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_get_disjoint_identities_and_equal_batch_counts(drop_last):
    pids = _pids()
    for epoch in range(3):
        ranks = _epoch(pids, 3, epoch=epoch, drop_last=drop_last)
        assert len({len(b) for b in ranks}) == 1
        seen = [set(pids[np.concatenate(b)].tolist()) for b in ranks]
        for i in range(3):
            for j in range(i + 1, 3):
                assert not seen[i] & seen[j]


def test_large_identities_fill_several_batches_without_repeats():
    pids = np.repeat(np.arange(8), 12)  # every identity has 4 chunks of K
    (batches,) = _epoch(pids, 1)
    assert 8 * 4 // P - 1 <= len(batches) <= 8 * 4 // P  # at most one batch's worth left over
    flat = np.concatenate(batches)
    assert len(set(flat.tolist())) == len(flat)  # no image twice in an epoch


def test_identities_with_fewer_than_k_images_are_sampled_with_replacement():
    pids = np.array([0] * 1 + [1] * 2 + [2] * 3 + [3] * 3)
    (batches,) = _epoch(pids, 1)
    assert len(batches) == 1
    assert Counter(pids[batches[0]].tolist()) == {0: K, 1: K, 2: K, 3: K}


def test_reshuffled_each_epoch_and_deterministic_for_a_seed():
    pids = _pids()
    e0, e1 = _epoch(pids, 2, epoch=0), _epoch(pids, 2, epoch=1)
    assert e0 != e1
    assert _epoch(pids, 2, epoch=1) == e1
    assert _epoch(pids, 2, epoch=1, seed=5) != e1
    s = PKSampler(pids, P, K)
    assert list(s) == list(s)  # same epoch, same batches


def test_unknown_pids_are_skipped():
    pids = np.array([-1] * 10 + [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3)
    for batch in PKSampler(pids, P, K):
        assert (pids[batch] >= 0).all()


def test_too_few_identities_per_replica_is_an_error():
    pids = np.repeat(np.arange(7), 4)
    PKSampler(pids, 3, K, num_replicas=2)
    with pytest.raises(ValueError, match=r"p=4.*7 identities.*num_replicas=2.*3 per replica"):
        PKSampler(pids, 4, K, num_replicas=2)
    with pytest.raises(ValueError, match="rank"):
        PKSampler(pids, 2, K, num_replicas=2, rank=2)

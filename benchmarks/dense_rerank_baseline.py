"""Dense k-reciprocal re-ranking: a straightforward port of the original algorithm (baseline).

Zhong et al. 2017, "Re-ranking Person Re-identification with k-reciprocal Encoding" (CVPR);
the authors' python-version ``re_ranking`` (zhunzhong07/person-re-ranking), written from the
algorithm, loop for loop: dense (N x N) distance matrix normalised per row, ``initial_rank`` by
a full sort, k-reciprocal sets with Python loops over the N points, dense V, query expansion by
averaging V rows, an inverted index over V's columns and the Jaccard loop over queries.

Deliberate differences from the released code, so that results are comparable to 1e-5:
- float64 / float32 instead of float16 for the distance matrix and V;
- the ``argsort`` is made deterministic: ties are ordered by (distance, j != i, j), i.e. self
  first, then lower index (``np.argsort``'s default quicksort leaves tie order unspecified);
- a row whose maximum distance is <= 0 (all points identical) is divided by 1 instead of 0.

This module is the reference of ``tests/test_rerank.py`` and the baseline of
``benchmarks/rerank.py``. It is O(N^2) memory: for tests and baselines only.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist


def dense_distances(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """(Q+G) x (Q+G) squared Euclidean distances, computed as in the original with cdist."""
    feat = np.concatenate([query, gallery], axis=0).astype(np.float64)
    return cdist(feat, feat, "sqeuclidean")


def _initial_rank(dist: np.ndarray) -> np.ndarray:
    """Row-wise argsort with ties ordered by (value, j != i, j)."""
    n = dist.shape[0]
    diag = np.diagonal(dist)
    if (diag == 0).all() and (dist >= 0).all():
        # Feature distances: self is a minimum; put it first, then a stable sort keeps index order.
        tmp = dist.copy()
        np.fill_diagonal(tmp, -1.0)
        return np.argsort(tmp, axis=1, kind="stable").astype(np.int32)
    cols = np.broadcast_to(np.arange(n), dist.shape)
    notself = cols != np.arange(n)[:, None]
    return np.lexsort((cols, notself, dist), axis=-1).astype(np.int32)


def dense_rerank(
    dist: np.ndarray, num_query: int, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """Original dense re-ranking on a full (N, N) distance matrix whose row i holds d(i, .).

    Query rows first. Returns the (Q, G) final distance (steps 1-7 of METHODS.md).
    """
    dist = np.asarray(dist, dtype=np.float64)
    all_num = dist.shape[0]
    query_num = num_query
    # step 1: each row divided by its maximum
    row_max = dist.max(axis=1)
    row_max = np.where(row_max > 0, row_max, 1.0)
    original_dist = dist / row_max[:, None]
    V = np.zeros_like(original_dist, dtype=np.float64)
    initial_rank = _initial_rank(original_dist)

    half = int(np.around(k1 / 2.0))
    for i in range(all_num):
        # step 2: k-reciprocal neighbours
        forward_k_neigh_index = initial_rank[i, : k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, : k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        # step 3: expansion by the round(k1/2)-reciprocal sets of the candidates (2/3 rule)
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            candidate_forward_k_neigh_index = initial_rank[candidate, : half + 1]
            candidate_backward_k_neigh_index = initial_rank[candidate_forward_k_neigh_index, : half + 1]
            fi_candidate = np.where(candidate_backward_k_neigh_index == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward_k_neigh_index[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > 2.0 / 3 * len(
                candidate_k_reciprocal_index
            ):
                k_reciprocal_expansion_index = np.append(
                    k_reciprocal_expansion_index, candidate_k_reciprocal_index
                )
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        # step 4: Gaussian-kernel weights on the normalised distance
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = weight / np.sum(weight)
    original_dist = original_dist[:query_num,]
    # step 5: local query expansion over the k2 nearest (self included)
    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
        del V_qe
    del initial_rank
    # step 6: Jaccard distance through the inverted index of V's columns
    invIndex = []
    for i in range(all_num):
        invIndex.append(np.where(V[:, i] != 0)[0])
    jaccard_dist = np.zeros_like(original_dist)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=np.float64)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(
                V[i, indNonZero[j]], V[indImages[j], indNonZero[j]]
            )
        jaccard_dist[i] = 1 - temp_min / (2.0 - temp_min)
    # step 7
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


def dense_rerank_features(
    query: np.ndarray, gallery: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """Original re-ranking on features (``re_ranking_feature``): cdist, then :func:`dense_rerank`."""
    return dense_rerank(dense_distances(query, gallery), len(query), k1, k2, lambda_value)


def dense_topk(final: np.ndarray, dist_qg: np.ndarray, k: int) -> np.ndarray:
    """Top-k gallery columns per query by (final, distance, index) — the tie order of the project."""
    g = final.shape[1]
    cols = np.broadcast_to(np.arange(g), final.shape)
    return np.lexsort((cols, dist_qg, final), axis=-1)[:, :k]

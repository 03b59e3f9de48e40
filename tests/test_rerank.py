"""Exact sparse k-reciprocal re-ranking vs the dense original (Zhong et al. 2017).

The reference is the loop-for-loop port in benchmarks/dense_rerank_baseline.py (dense N x N).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from vreid.postprocess.knn import KNNGraph, knn_graph, knn_graph_from_blocks
from vreid.postprocess.rerank import (
    FeatureDistance,
    k_reciprocal_encode,
    k_reciprocal_rerank,
    k_reciprocal_rerank_distances,
    rerank_from_graph,
)

_spec = importlib.util.spec_from_file_location(
    "dense_rerank_baseline", Path(__file__).resolve().parents[1] / "benchmarks" / "dense_rerank_baseline.py"
)
dense = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dense)

Q, G, DIM = 40, 200, 24
PARAMS = [
    (20, 6, 0.3),  # paper defaults
    (7, 2, 0.6),  # DMT 2021 track level
    (3, 1, 0.0),  # k2 = 1, lambda = 0: pure Jaccard
    (1, 1, 1.0),  # smallest k1 (round(1/2) = 0), lambda = 1
    (4, 3, 0.5),
    (5, 6, 0.2),  # round(5/2) = 2 (half to even), k2 > k1
    (50, 15, 0.3),  # DMT 2021 image level
]


def clustered(n: int, dim: int, seed: int, n_ids: int = 25, dtype=np.float32) -> np.ndarray:
    """Clustered L2-normalised features with exact duplicates, including a group of 25 copies."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, dim))
    x = centres[rng.integers(0, n_ids, n)] + 0.7 * rng.standard_normal((n, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)
    if n >= 210:
        x[60:85] = x[70]  # 25 identical gallery rows: more than k1 + 1 = 21
        x[3] = x[150]  # query == gallery
        x[5] = x[6]  # two identical queries
        x[200] = x[201] = x[120]
    else:
        x[n // 2 : n // 2 + n // 8] = x[n // 2 + 1]
        x[3 % n] = x[n - 5]
    return x


@pytest.fixture(scope="module")
def feats() -> np.ndarray:
    return clustered(Q + G, DIM, seed=0)


def assert_topk_equal_up_to_ties(idx: np.ndarray, ref_final: np.ndarray, ref_idx: np.ndarray) -> None:
    diff = idx != ref_idx
    if diff.any():
        rows = np.nonzero(diff)[0]
        a = ref_final[rows, idx[diff]]
        b = ref_final[rows, ref_idx[diff]]
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9, err_msg="top-K differs beyond ties")


@pytest.mark.parametrize("k1,k2,lam", PARAMS)
def test_matches_dense_original(feats, k1, k2, lam):
    q, g = feats[:Q], feats[Q:]
    ref = dense.dense_rerank_features(q, g, k1, k2, lam)
    ours = k_reciprocal_rerank(q, g, k1, k2, lam)
    assert ours.shape == (Q, G) and ours.dtype == np.float32
    assert np.isfinite(ours).all()
    assert np.abs(ours - ref).max() <= 1e-5
    dqg = dense.dense_distances(q, g)[:Q, Q:]
    k = 30
    ref_idx = dense.dense_topk(ref, dqg, k)
    idx, val = k_reciprocal_rerank(q, g, k1, k2, lam, top_k=k)
    assert idx.shape == val.shape == (Q, k)
    assert_topk_equal_up_to_ties(idx, ref, ref_idx)
    np.testing.assert_allclose(val, np.take_along_axis(ref, idx, 1), rtol=0, atol=1e-5)
    # the top-K path equals the dense path's top-K
    assert_topk_equal_up_to_ties(idx, ours, dense.dense_topk(ours, dqg, k))
    np.testing.assert_array_equal(val, np.take_along_axis(ours, idx, 1))


@pytest.mark.parametrize("seed", [1, 2])
def test_other_layouts_and_float64(seed):
    x = clustered(210, 8, seed=seed, n_ids=12, dtype=np.float64)
    q, g = x[:37], x[37:]
    for k1, k2, lam in [(20, 6, 0.3), (9, 4, 0.1)]:
        ref = dense.dense_rerank_features(q, g, k1, k2, lam)
        ours = k_reciprocal_rerank(q, g, k1, k2, lam, chunk_size=16)
        assert np.abs(ours - ref).max() <= 1e-5


@pytest.mark.parametrize(
    "n,nq,k1,k2", [(2, 1, 1, 1), (6, 2, 5, 5), (6, 3, 1, 1), (7, 1, 3, 2), (12, 11, 11, 4)]
)
def test_small_n(n, nq, k1, k2):
    x = clustered(max(n, 210), 5, seed=n)[-n:]
    for lam in (0.0, 0.3, 1.0):
        ref = dense.dense_rerank_features(x[:nq], x[nq:], k1, k2, lam)
        ours = k_reciprocal_rerank(x[:nq], x[nq:], k1, k2, lam)
        assert np.abs(ours - ref).max() <= 1e-5
        idx, _ = k_reciprocal_rerank(x[:nq], x[nq:], k1, k2, lam, top_k=n - nq)
        dqg = dense.dense_distances(x[:nq], x[nq:])[:nq, nq:]
        assert_topk_equal_up_to_ties(idx, ref, dense.dense_topk(ref, dqg, n - nq))


def test_all_identical_features_no_nan():
    x = np.tile(np.array([[0.6, 0.8, 0.0]], np.float32), (12, 1))
    ours = k_reciprocal_rerank(x[:4], x[4:], 5, 3, 0.3)
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, dense.dense_rerank_features(x[:4], x[4:], 5, 3, 0.3), atol=1e-6)
    idx, val = k_reciprocal_rerank(x[:4], x[4:], 5, 3, 0.3, top_k=8)
    assert np.isfinite(val).all() and (np.sort(idx, axis=1) == np.arange(8)).all()


def test_zero_overlap_keeps_distance_order(feats):
    """Pairs with m = 0 have J = 1; with lambda = 0 they tie and must keep the order of d."""
    q, g = feats[:Q], feats[Q:]
    idx, val = k_reciprocal_rerank(q, g, 5, 1, 0.0, top_k=G)
    dqg = cdist(q.astype(np.float64), g.astype(np.float64), "sqeuclidean")
    d = np.take_along_axis(dqg, idx, 1)
    ones = val == 1.0
    assert ones.sum() > Q * 50  # most pairs do not overlap
    for r in range(Q):
        dr = d[r, ones[r]]
        assert (np.diff(dr) >= 0).all()


def test_graph_reuse_identical(feats):
    q, g = feats[:Q], feats[Q:]
    graph = knn_graph(feats, 50)
    fd = FeatureDistance(feats)
    qg = fd.block(np.arange(Q), Q, Q + G)
    for k1, k2, lam in PARAMS:
        direct = k_reciprocal_rerank(q, g, k1, k2, lam)
        reused = rerank_from_graph(graph, Q, k1, k2, lam, distance_fn=fd)
        np.testing.assert_array_equal(reused, direct)
        cached = rerank_from_graph(graph, Q, k1, k2, lam, distance_fn=fd, query_gallery_dist=qg)
        np.testing.assert_array_equal(cached, direct)
        no_fn = rerank_from_graph(
            graph, Q, k1, k2, lam, query_gallery_dist=qg, pair_distance_fn=fd.pairs
        )
        np.testing.assert_array_equal(no_fn, direct)
        i1, v1 = rerank_from_graph(graph, Q, k1, k2, lam, top_k=25, distance_fn=fd)
        i2, v2 = k_reciprocal_rerank(q, g, k1, k2, lam, top_k=25)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(v1, v2)


def test_precomputed_distances_equal_feature_variant(feats):
    q, g = feats[:Q], feats[Q:]
    x64 = feats.astype(np.float64)
    calls = []

    def rows_fn(rows):
        calls.append(len(rows))
        return cdist(x64[rows], x64, "sqeuclidean")

    def pairs_fn(r, c):
        return ((x64[r] - x64[c]) ** 2).sum(1)

    for k1, k2, lam in [(20, 6, 0.3), (7, 2, 0.6), (3, 1, 0.0)]:
        want = k_reciprocal_rerank(q, g, k1, k2, lam)
        got = k_reciprocal_rerank_distances(rows_fn, Q, G, k1, k2, lam, chunk_size=64)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        got2 = k_reciprocal_rerank_distances(rows_fn, Q, G, k1, k2, lam, pair_distance_fn=pairs_fn)
        np.testing.assert_allclose(got2, want, rtol=0, atol=1e-6)
        i1, _ = k_reciprocal_rerank_distances(rows_fn, Q, G, k1, k2, lam, top_k=20)
        i2, _ = k_reciprocal_rerank(q, g, k1, k2, lam, top_k=20)
        assert_topk_equal_up_to_ties(i1, want.astype(np.float64), i2)
    assert max(calls) <= 64 or max(calls) <= Q + G  # row blocks only


def test_precomputed_biased_distances_match_dense():
    """Bias-fused distances (D_r - 0.1 D_c, can be negative): same result as the dense original."""
    x = clustered(120, 10, seed=3, n_ids=10)
    rng = np.random.default_rng(3)
    cam = rng.standard_normal((120, 4))
    dist = cdist(x.astype(np.float64), x.astype(np.float64), "sqeuclidean")
    dist -= 0.1 * cdist(cam, cam, "sqeuclidean")
    assert (dist < 0).any()
    nq = 20
    for k1, k2, lam in [(20, 6, 0.3), (7, 2, 0.6), (2, 1, 0.0)]:
        ref = dense.dense_rerank(dist, nq, k1, k2, lam)
        got = k_reciprocal_rerank_distances(lambda r: dist[r], nq, 100, k1, k2, lam, chunk_size=7)
        assert np.abs(got - ref).max() <= 1e-5
        idx, _ = k_reciprocal_rerank_distances(lambda r: dist[r], nq, 100, k1, k2, lam, top_k=10)
        assert_topk_equal_up_to_ties(idx, ref, dense.dense_topk(ref, dist[:nq, nq:], 10))


def test_knn_graph_exact_and_backend_independent(feats):
    x64 = feats.astype(np.float64)
    dist = cdist(x64, x64, "sqeuclidean")
    n = len(feats)
    k = 25
    order = np.lexsort((np.broadcast_to(np.arange(n), (n, n)), ~np.eye(n, dtype=bool), dist), axis=-1)
    want = order[:, : k + 1]
    assert (want[:, 0] == np.arange(n)).all()
    graphs = [knn_graph(feats, k, backend="numpy", chunk_size=cs) for cs in (1, 7, 1000)]
    graphs.append(knn_graph(feats, k, backend="numpy", slack=0))  # exercises the fallback rows
    pytest.importorskip("torch")
    graphs.append(knn_graph(feats, k, backend="torch", device="cpu", chunk_size=50))
    pytest.importorskip("faiss")
    graphs.append(knn_graph(feats, k, backend="faiss", device="cpu", chunk_size=50))
    for gr in graphs:
        np.testing.assert_array_equal(gr.indices, want)
        np.testing.assert_allclose(gr.distances, np.take_along_axis(dist, want, 1), atol=1e-6)
        np.testing.assert_allclose(gr.row_max, dist.max(1), rtol=1e-6)
        assert gr.indices.shape == (n, k + 1) and gr.distances.dtype == np.float32
    blocks = knn_graph_from_blocks(lambda r: dist[r], n, k, chunk_size=33)
    np.testing.assert_array_equal(blocks.indices, want)
    # truncation equals building with the smaller k
    np.testing.assert_array_equal(graphs[0].truncate(5).indices, knn_graph(feats, 5).indices)


def test_encode_rows_are_distributions(feats):
    graph = knn_graph(feats, 20)
    fd = FeatureDistance(feats)
    v = k_reciprocal_encode(graph, 20, 6, fd.pairs)
    np.testing.assert_allclose(np.asarray(v.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    assert v.nnz < len(feats) * 200


@pytest.mark.skipif(
    not (importlib.util.find_spec("torch") and __import__("torch").cuda.is_available()),
    reason="no CUDA device",
)
def test_torch_cuda_backend(feats):
    want = knn_graph(feats, 20, backend="numpy")
    got = knn_graph(feats, 20, backend="torch", device="cuda")
    np.testing.assert_array_equal(got.indices, want.indices)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "q,g,kw,match",
    [
        (np.zeros((3, 4)), np.zeros((9, 5)), {}, "dims differ"),
        (np.full((3, 4), np.nan), np.ones((9, 4)), {}, "NaN/Inf"),
        (np.ones((3, 4)), np.full((9, 4), np.inf), {}, "NaN/Inf"),
        (np.zeros((0, 4)), np.ones((9, 4)), {}, "empty"),
        (np.ones((3, 4)), np.zeros((0, 4)), {}, "empty"),
        (np.ones(4), np.ones((9, 4)), {}, "2-D"),
        (np.ones((3, 4)), np.ones((9, 4)), {"k1": 0}, "k1"),
        (np.ones((3, 4)), np.ones((9, 4)), {"k1": 12}, "k1"),
        (np.ones((3, 4)), np.ones((9, 4)), {"k1": 2.5}, "k1"),
        (np.ones((3, 4)), np.ones((9, 4)), {"k2": 0}, "k2"),
        (np.ones((3, 4)), np.ones((9, 4)), {"k2": 12}, "k2"),
        (np.ones((3, 4)), np.ones((9, 4)), {"lambda_value": -0.1}, "lambda"),
        (np.ones((3, 4)), np.ones((9, 4)), {"lambda_value": 1.5}, "lambda"),
        (np.ones((3, 4)), np.ones((9, 4)), {"lambda_value": float("nan")}, "lambda"),
        (np.ones((3, 4)), np.ones((9, 4)), {"top_k": 10}, "top_k"),
        (np.ones((3, 4)), np.ones((9, 4)), {"top_k": 0}, "top_k"),
        (np.ones((3, 4)), np.ones((9, 4)), {"backend": "cupy"}, "backend"),
    ],
)
def test_bad_input_raises(q, g, kw, match):
    args = {"k1": 2, "k2": 2, **kw}
    with pytest.raises(ValueError, match=match):
        k_reciprocal_rerank(q, g, **args)


def test_bad_graph_and_distance_fn(feats):
    graph = knn_graph(feats, 5)
    fd = FeatureDistance(feats)
    with pytest.raises(ValueError, match="graph"):
        rerank_from_graph(graph, Q, 20, 6, 0.3, distance_fn=fd)
    with pytest.raises(ValueError, match="k2"):
        rerank_from_graph(graph, Q, 5, 8, 0.3, distance_fn=fd)
    with pytest.raises(ValueError, match="empty"):
        rerank_from_graph(graph, Q + G, 5, 2, 0.3, distance_fn=fd)
    with pytest.raises(ValueError, match="query_gallery_dist"):
        rerank_from_graph(graph, Q, 5, 2, 0.3, distance_fn=fd, query_gallery_dist=np.zeros((Q, 3)))
    with pytest.raises(ValueError, match="distance_fn"):
        rerank_from_graph(graph, Q, 5, 2, 0.3)
    with pytest.raises(ValueError, match="outside the k-NN graph"):
        rerank_from_graph(knn_graph(feats, 20), Q, 20, 6, 0.3, query_gallery_dist=np.zeros((Q, G)))
    with pytest.raises(ValueError, match="shape"):
        k_reciprocal_rerank_distances(lambda r: np.zeros((len(r), 5)), Q, G, 5, 2, 0.3)
    with pytest.raises(ValueError, match="NaN"):
        k_reciprocal_rerank_distances(lambda r: np.full((len(r), Q + G), np.nan), Q, G, 5, 2, 0.3)
    with pytest.raises(ValueError, match="KNNGraph"):
        KNNGraph(np.zeros((4, 3), int), np.zeros((4, 2), np.float32), np.zeros(4))


@pytest.mark.parametrize("copies", [1, 5, 30])
def test_knn_graph_tracks_of_duplicates_equal_brute_force(copies):
    """Images sharing their track's feature (image-level tracklet fusion, beta 0): the graph is
    the brute-force one under the key (distance, j != i, j), for any track length."""
    rng = np.random.default_rng(copies)
    tracks = rng.normal(size=(12, 6)).astype(np.float32)
    x = np.concatenate([tracks[rng.integers(0, 12, 20)], np.repeat(tracks, copies, axis=0)])
    k = 15
    g = knn_graph(x, k)
    d = cdist(x.astype(np.float64), x.astype(np.float64), "sqeuclidean")
    j = np.arange(len(x))
    want = np.array([np.lexsort((j, j != i, d[i]))[: k + 1] for i in range(len(x))])
    np.testing.assert_array_equal(g.indices, want)
    np.testing.assert_allclose(g.distances, np.take_along_axis(d, want, 1), atol=1e-6)
    np.testing.assert_allclose(g.row_max, d.max(1), atol=1e-6)

"""Pseudo-labels (vreid.train.pseudo) on synthetic features with known identities."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from vreid.postprocess.camera_bias import remove_camera_mean
from vreid.postprocess.ensemble import l2_normalize
from vreid.postprocess.knn import knn_graph
from vreid.postprocess.rerank import FeatureDistance, k_reciprocal_encode
from vreid.train.pseudo import (
    PseudoLabelError,
    centroids,
    check_labels,
    clustering_features,
    dbscan_labels,
    identity_mining,
    jaccard_cosine_graph,
    kmeans_labels,
    pseudo_label_quality,
)

P, K, D = 30, 12, 32  # identities, images per identity (3 tracks of 4, one per camera), dim


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_ids(num_ids=P, per_id=K, *, cam_offset=0.0, sigma=0.2, seed=0):
    """Well-separated unit centres + noise (|noise| ~ sigma) + a per-camera offset.

    Image j of identity p belongs to track ``(p * per_id + j) // 4`` (4 consecutive images) on
    camera ``(p + j // 4) % 3``, so every identity is seen by every camera.
    """
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(num_ids, D)))
    offsets = _unit(rng.normal(size=(3, D)))
    pids = np.repeat(np.arange(num_ids), per_id)
    j = np.arange(num_ids * per_id) % per_id
    cams = (pids + j // 4) % 3
    tracks = np.arange(num_ids * per_id) // 4
    x = centres[pids] + sigma * rng.normal(size=(len(pids), D)) / np.sqrt(D) + cam_offset * offsets[cams]
    return x.astype(np.float32), pids, cams, tracks


def cluster(x, cams=None, tracks=None, *, alpha=None, beta=None, k1=10, k2=6):
    # k1 below the 12 images of an identity: with k1 > identity size, reciprocal neighbours
    # reach into nearby identities and the Jaccard distance merges them.
    f = clustering_features(x, cams, tracks, camera_alpha=alpha, tracklet_beta=beta)
    return dbscan_labels(jaccard_cosine_graph(f, k1=k1, k2=k2), eps=0.55, min_samples=4)


# ----------------------------------------------------------------------------- DBSCAN


def test_dbscan_on_jaccard_graph_recovers_identities():
    x, pids, cams, tracks = make_ids()
    labels = cluster(x, cams, tracks, alpha=1.0, beta=0.0005)
    q = pseudo_label_quality(labels, pids)
    assert q["pair_precision"] >= 0.95 and q["pair_recall"] >= 0.95
    assert q["labelled_fraction"] >= 0.95
    assert q["num_clusters"] == P and q["num_true_ids"] == P


def test_isolated_outlier_is_noise():
    x, pids, _, _ = make_ids()
    rng = np.random.default_rng(5)
    x = np.vstack([x, rng.normal(size=(1, D))]).astype(np.float32)
    # k2=1: no query expansion. With k2 > 1 the outlier's encoding is the mean of its nearest
    # neighbours' (all from one identity), which pulls it into that cluster as a border point.
    labels = cluster(x, k2=1)
    assert labels[-1] == -1
    assert pseudo_label_quality(labels[:-1], pids)["pair_precision"] == 1.0


def test_camera_bias_removal_rescues_clustering():
    x, pids, cams, _ = make_ids(cam_offset=1.0)  # same camera closer than same identity
    raw = pseudo_label_quality(cluster(x, cams), pids)
    fixed = pseudo_label_quality(cluster(x, cams, alpha=1.0), pids)
    assert raw["pair_precision"] < 0.6
    assert fixed["pair_precision"] >= 0.95 and fixed["pair_recall"] >= 0.95


def test_dbscan_labels_first_appearance_and_noise():
    # points 0, 2, 4 close together; 1, 3 close together; 5 far from everything
    rows, cols, vals = [0, 0, 2, 1], [2, 4, 4, 3], [0.1, 0.2, 0.1, 0.3]
    g = sp.coo_matrix((vals, (rows, cols)), shape=(6, 6))
    g = (g + g.T).tocsr()
    labels = dbscan_labels(g, eps=0.5, min_samples=2)
    assert labels.dtype == np.int64
    assert labels.tolist() == [0, 1, 0, 1, 0, -1]
    assert dbscan_labels(g, eps=0.5, min_samples=4).tolist() == [-1] * 6
    with pytest.raises(ValueError, match="eps"):
        dbscan_labels(g, eps=0)
    with pytest.raises(ValueError, match="square"):
        dbscan_labels(sp.csr_matrix((3, 4)))


# ----------------------------------------------------------------------------- the graph


def _dense_distance(x, k1, k2, w=0.9):
    """The 003 DBSCAN distance over all pairs, dense (tests only), and the overlaps m."""
    f = l2_normalize(x)
    v = k_reciprocal_encode(knn_graph(f, k1), k1, k2, FeatureDistance(f).pairs).toarray()
    m = np.minimum(v[:, None, :], v[None, :, :]).sum(-1)
    cos = 1.0 - f.astype(np.float64) @ f.T.astype(np.float64)
    return w * (1.0 - m / (2.0 - m)) + (1.0 - w) * cos, m


def test_graph_holds_every_overlapping_pair():
    x, _, _, _ = make_ids()
    n, k1 = len(x), 10
    g = jaccard_cosine_graph(x, k1=k1)
    assert sp.isspmatrix_csr(g) and g.shape == (n, n)
    assert abs(g - g.T).max() == 0
    assert g.diagonal().max() == 0 and (g.data >= 1e-12).all() and (g.data <= 1).all()
    _, m = _dense_distance(x, k1, 6)
    overlap = sp.csr_matrix(np.triu(m > 0, 1) | np.triu(m > 0, 1).T)
    assert (abs((g > 0).astype(np.int8) - overlap.astype(np.int8))).nnz == 0
    nn = knn_graph(l2_normalize(x), k1).indices
    knn = sp.csr_matrix((np.ones(nn.size), (np.repeat(np.arange(n), k1 + 1), nn.ravel())), shape=(n, n))
    beyond_knn = overlap.astype(np.int8) - overlap.multiply((knn + knn.T) > 0).astype(np.int8)
    assert beyond_knn.nnz > 0  # pairs that share encoded neighbours without being k1-NN edges


def test_dbscan_on_the_graph_equals_dbscan_on_the_dense_matrix():
    """Identities of 30 images with k1 = 5: most same-identity pairs are no k-NN edge, yet share
    encoded neighbours; DBSCAN must see them all to find the clusters it finds on the dense matrix."""
    x, pids, _, _ = make_ids(num_ids=8, per_id=30, sigma=0.3, seed=4)
    n, k1, k2 = len(x), 5, 2
    dense, _ = _dense_distance(x, k1, k2)
    np.fill_diagonal(dense, 0.0)
    graph = jaccard_cosine_graph(x, k1=k1, k2=k2)
    for eps, min_samples in [(0.8, 10), (0.85, 12), (0.7, 10)]:
        np.testing.assert_array_equal(dbscan_labels(graph, eps=eps, min_samples=min_samples),
                                      dbscan_labels(dense, eps=eps, min_samples=min_samples))
    labels = dbscan_labels(graph, eps=0.8, min_samples=10)
    q = pseudo_label_quality(labels, pids)
    assert q["num_clusters"] == 8 and q["pair_precision"] >= 0.95 and q["labelled_fraction"] >= 0.95
    # the k1-NN edges alone (what the graph held before) leave a third of the images as noise
    nn = knn_graph(l2_normalize(x), k1).indices
    knn = sp.csr_matrix((np.ones(nn.size), (np.repeat(np.arange(n), k1 + 1), nn.ravel())), shape=(n, n))
    edges = ((knn + knn.T) > 0).toarray() & ~np.eye(n, dtype=bool)
    knn_only = sp.csr_matrix(np.where(edges, np.maximum(dense, 1e-12), 0.0))
    assert pseudo_label_quality(dbscan_labels(knn_only, eps=0.8, min_samples=10), pids)["labelled_fraction"] < 0.8


def test_graph_jaccard_and_cosine_match_dense_reference():
    x, _, _, _ = make_ids(num_ids=6, per_id=10, sigma=0.4, seed=3)
    f = l2_normalize(x)
    n, k1, k2 = len(x), 8, 3
    v = k_reciprocal_encode(knn_graph(f, k1), k1, k2, FeatureDistance(f).pairs).toarray()
    m = np.minimum(v[:, None, :], v[None, :, :]).sum(-1)
    jac = 1.0 - m / (2.0 - m)
    cos = 1.0 - f.astype(np.float64) @ f.T.astype(np.float64)
    for w, ref in [(1.0, jac), (0.0, cos), (0.9, 0.9 * jac + 0.1 * cos)]:
        g = jaccard_cosine_graph(x, k1=k1, k2=k2, jaccard_weight=w).tocoo()
        assert g.nnz > n
        np.testing.assert_allclose(g.data, np.maximum(ref[g.row, g.col], 1e-12), rtol=1e-6, atol=1e-6)


def test_graph_validates_arguments():
    x, _, _, _ = make_ids(num_ids=2, per_id=4)
    with pytest.raises(ValueError, match="k1"):
        jaccard_cosine_graph(x, k1=8)
    with pytest.raises(ValueError, match="jaccard_weight"):
        jaccard_cosine_graph(x, k1=3, k2=2, jaccard_weight=1.5)


# ----------------------------------------------------------------------------- features


def test_clustering_features_removes_camera_mean():
    x, _, cams, tracks = make_ids(cam_offset=1.0)
    f = clustering_features(x, cams, tracks, camera_alpha=1.0, tracklet_beta=None)
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, remove_camera_mean(l2_normalize(x), cams), atol=1e-6)
    # the camera offset is gone: images of one camera are no longer closer than of another
    same = (cams[:, None] == cams[None, :]) & ~np.eye(len(x), dtype=bool)
    raw = l2_normalize(x) @ l2_normalize(x).T
    assert raw[same].mean() - raw[cams[:, None] != cams[None, :]].mean() > 0.3
    g = f @ f.T
    assert abs(g[same].mean() - g[cams[:, None] != cams[None, :]].mean()) < 0.05


def test_tracklet_fusion_collapses_tracks_and_keeps_untracked():
    x, _, cams, tracks = make_ids()
    tracks = tracks.copy()
    tracks[:4] = -1  # the first track loses its ids
    f = clustering_features(x, cams, tracks, camera_alpha=None, tracklet_beta=0.0005)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(f[:4], l2_normalize(x[:4]), atol=1e-7)
    for t in (1, 17, 89):
        rows = np.flatnonzero(tracks == t)
        spread = ((f[rows, None] - f[None, rows]) ** 2).sum(-1).max()
        before = ((l2_normalize(x)[rows, None] - l2_normalize(x)[None, rows]) ** 2).sum(-1).max()
        assert spread < 1e-6 and before > 0.01


def test_clustering_features_needs_tracks_for_fusion():
    x, _, cams, _ = make_ids(num_ids=3, per_id=4)
    no_tracks = np.full(len(x), -1)
    with pytest.raises(ValueError, match="tracklet_beta: null"):
        clustering_features(x, cams, no_tracks)
    f = clustering_features(x, cams, no_tracks, tracklet_beta=None)
    np.testing.assert_allclose(f, remove_camera_mean(l2_normalize(x), cams), atol=1e-6)


# ----------------------------------------------------------------------------- Identity Mining


def _sqdist(a, b):
    a, b = l2_normalize(a).astype(np.float64), l2_normalize(b).astype(np.float64)
    return np.maximum(2.0 - 2.0 * a @ b.T, 0.0)


def _reference_mining(query, test, d_n, d_p, first):
    """Seed 001 §3.3 with dense matrices: L = {l1}; while some query has min Dist(q, L) > d_n, add
    the one of those with the largest sum of distances to L ("the most dissimilar candidate with
    all samples in set L"); then each test image closer than d_p to its nearest l takes its ID."""
    dq = _sqdist(query, query)
    chosen = [first]
    while True:
        candidates = [i for i in range(len(query)) if min(dq[i, l] for l in chosen) > d_n]
        if not candidates:
            break
        chosen.append(max(candidates, key=lambda i: (sum(dq[i, l] for l in chosen), -i)))
    dt = _sqdist(test, query[chosen])
    return chosen, np.where(dt.min(1) < d_p, dt.argmin(1), -1)


def test_identity_mining_follows_the_paper():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(200, 3)).astype(np.float32)  # crowded sphere: the order of picks matters
    t = np.vstack([q, rng.normal(size=(100, 3))]).astype(np.float32)
    first = int(np.random.default_rng(7).integers(len(q)))
    chosen, ref = _reference_mining(q, t, 0.49, 0.23, first)
    assert 10 < len(chosen) < 150
    labels = identity_mining(q, t, seed=7)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, ref)
    assert labels[first] == 0  # the random probe l1 is identity 0
    # walking the queries in index order (what this replaced) mines another set
    in_order = []
    dq = _sqdist(q, q)
    for i in range(len(q)):
        if all(dq[i, p] > 0.49 for p in in_order):
            in_order.append(i)
    assert set(in_order) != set(chosen)
    dp = _sqdist(q[chosen], q[chosen])
    assert (dp[~np.eye(len(chosen), dtype=bool)] > 0.49).all()
    lab = np.flatnonzero(ref >= 0)
    assert (_sqdist(t, q[chosen])[lab, ref[lab]] < 0.23).all()
    other = identity_mining(q, t, seed=8)
    assert not np.array_equal(other, labels)  # another probe, another mining
    np.testing.assert_array_equal(identity_mining(q, t, seed=7), labels)


def test_identity_mining_beats_kmeans_with_distractors():
    # 30 identities have 2 queries each; 20 distractor identities appear only in the gallery.
    x, pids, _, _ = make_ids(num_ids=50, per_id=10, seed=2)
    is_query = (pids < 30) & (np.arange(len(x)) % 10 < 2)
    order = np.concatenate([np.flatnonzero(is_query), np.flatnonzero(~is_query)])
    test, test_pids = x[order], pids[order]
    im = identity_mining(x[is_query], test)
    assert im.max() + 1 == 30  # one identity per query vehicle, the second query is not picked
    km = kmeans_labels(test, 30)
    q_im, q_km = pseudo_label_quality(im, test_pids), pseudo_label_quality(km, test_pids)
    assert q_im["pair_precision"] >= 0.98 and q_im["pair_recall"] >= 0.5
    assert q_km["pair_precision"] < 0.9 and q_km["num_clusters"] == 30
    assert (im[test_pids >= 30] == -1).all()  # distractors stay unlabelled
    assert (im[test_pids < 30] >= 0).all()  # every image of a query vehicle is mined


def test_kmeans_labels():
    x, pids, _, _ = make_ids(num_ids=10, per_id=8)
    labels = kmeans_labels(x, 10, seed=0)
    assert labels.dtype == np.int64 and len(np.unique(labels)) == 10
    np.testing.assert_array_equal(labels, kmeans_labels(x, 10, seed=0))
    # mis-specified number of identities: clusters must merge identities
    assert pseudo_label_quality(kmeans_labels(x, 5), pids)["pair_precision"] < 0.8
    for bad in (0, len(x) + 1):
        with pytest.raises(ValueError, match="num_ids"):
            kmeans_labels(x, bad)


# ----------------------------------------------------------------------------- metrics, checks


def test_quality_hand_counts():
    labels = np.array([0, 0, 0, 1, 1, -1, 2])
    pids = np.array([5, 5, 6, 6, 6, 6, 7])
    q = pseudo_label_quality(labels, pids)
    # same-label pairs: C(3,2) + C(2,2) = 4, of which (0,1) and (3,4) share a pid -> 2/4;
    # same-pid pairs among all images: pid 5: 1, pid 6: C(4,2) = 6, pid 7: 0 -> 2/7
    assert q["pair_precision"] == pytest.approx(0.5)
    assert q["pair_recall"] == pytest.approx(2 / 7)
    assert q["labelled_fraction"] == pytest.approx(6 / 7)
    assert (q["num_clusters"], q["num_true_ids"], q["num_images"]) == (3, 3, 7)
    q = pseudo_label_quality([0, 1, -1], [4, 4, 4])
    assert np.isnan(q["pair_precision"]) and q["pair_recall"] == 0.0


def test_check_labels():
    with pytest.raises(PseudoLabelError, match="all 5 points are noise.*skip stage 2"):
        check_labels(np.full(5, -1), "DBSCAN")
    with pytest.raises(ValueError, match="one cluster.*at least 2"):
        check_labels([0, 0, -1, 0], "DBSCAN")
    check_labels([0, 1, -1], "DBSCAN")


def test_centroids():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(9, 5)).astype(np.float32)
    labels = np.array([1, 0, -1, 1, 2, 0, 2, -1, 2])
    c = centroids(x, labels)
    assert c.shape == (3, 5) and c.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-6)
    for k in range(3):
        np.testing.assert_allclose(c[k], _unit(x[labels == k].mean(0)), atol=1e-6)
    with pytest.raises(ValueError, match="no points"):
        centroids(x, np.where(labels == 1, 3, labels))

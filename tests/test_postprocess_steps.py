"""Unit tests of the post-processing steps (pure numpy functions) on hand-made arrays.

Expected values are worked out by hand in each test; two integration tests on synthetic
clustered features check that camera-mean removal and weighted tracklet features raise mAP.
"""

from __future__ import annotations

import numpy as np
import pytest

from vreid.eval.metrics import evaluate
from vreid.postprocess.attribute_constraint import attribute_constraint
from vreid.postprocess.bias_fusion import bias_fusion
from vreid.postprocess.camera_bias import camera_whitening, remove_camera_mean
from vreid.postprocess.camera_verification import camera_verification, predict_camids
from vreid.postprocess.ensemble import ensemble_features, l2_normalize
from vreid.postprocess.kernels import squared_distances, topk
from vreid.postprocess.group_rerank import group_rerank
from vreid.postprocess.query_expansion import dbscan_query_expansion, group_queries
from vreid.postprocess.temporal_filter import temporal_filter
from vreid.postprocess.tracklets import (
    average_tracklet_features,
    fuse_with_tracklet,
    image_to_track_distances,
    weighted_tracklet_features,
)


def _unit(rng, n, d):
    return l2_normalize(rng.normal(size=(n, d)))


# --------------------------------------------------------------------------- ensemble


def test_l2_normalize_rows_and_zero_row():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    out = l2_normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]], atol=1e-7)
    with pytest.raises(ValueError, match="2-D"):
        l2_normalize(np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        l2_normalize(np.array([[np.nan, 1.0]]))


def test_ensemble_weights_and_sqrt_n():
    a = np.array([[3.0, 4.0], [1.0, 0.0]])
    b = np.array([[0.0, 0.0, 2.0], [0.0, 5.0, 0.0]])
    out = ensemble_features([a, b], [1.0, 2.0])
    np.testing.assert_allclose(out, [[0.6, 0.8, 0, 0, 2], [1, 0, 0, 2, 0]], atol=1e-7)
    out = ensemble_features([a, b], [1.0, 1.0], divide_by_sqrt_n=True)
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(out, [[0.6 * s, 0.8 * s, 0, 0, s], [s, 0, 0, s, 0]], atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(ensemble_features([a, b]), ensemble_features([a, b], [1, 1]))


def test_ensemble_bad_input():
    a, b = np.ones((2, 2)), np.ones((3, 2))
    with pytest.raises(ValueError, match=r"features\[1\] has 3 rows"):
        ensemble_features([a, b], [1, 1])
    with pytest.raises(ValueError, match="one number per model"):
        ensemble_features([a, a], [1.0])
    with pytest.raises(ValueError, match="weights must be finite"):
        ensemble_features([a, a], [1.0, -1.0])
    with pytest.raises(ValueError, match="at least one"):
        ensemble_features([], [])
    with pytest.raises(ValueError, match="list"):
        ensemble_features(a, [1.0])


# --------------------------------------------------------------------------- camera bias


def test_remove_camera_mean_zero_camera_means_before_normalisation():
    f = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    cam = np.array([0, 0, 0, 5, 5])
    out = remove_camera_mean(f, cam)
    m0, m5 = np.array([2 / 3, 2 / 3]), np.array([1.0, 1.5])
    raw = f - np.array([m0, m0, m0, m5, m5])
    np.testing.assert_allclose(out, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    # Undo the normalisation: per camera the centred features average to 0.
    rec = out * np.linalg.norm(raw, axis=1, keepdims=True)
    for c in (0, 5):
        np.testing.assert_allclose(rec[cam == c].mean(0), 0.0, atol=1e-6)
    # alpha scales the mean; alpha 0 only normalises.
    half = f - 0.5 * np.array([m0, m0, m0, m5, m5])
    np.testing.assert_allclose(
        remove_camera_mean(f, cam, alpha=0.5), half / np.linalg.norm(half, axis=1, keepdims=True), atol=1e-6
    )
    np.testing.assert_allclose(remove_camera_mean(f, cam, alpha=0.0), l2_normalize(f), atol=1e-7)
    assert not np.shares_memory(out, f)


def test_remove_camera_mean_reference_set_and_errors():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [4.0, 4.0]])
    ref_cam = np.array([1, 1, 2])
    q = np.array([[2.0, 0.0], [5.0, 4.0]])
    out = remove_camera_mean(q, [1, 2], ref_features=ref, ref_camids=ref_cam)
    expected = np.array([[1.5, -0.5], [1.0, 0.0]])
    np.testing.assert_allclose(out, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(ValueError, match=r"camids \[3\] have no images"):
        remove_camera_mean(q, [1, 3], ref_features=ref, ref_camids=ref_cam)
    with pytest.raises(ValueError, match="unknown cameras"):
        remove_camera_mean(q, [1, -1])
    with pytest.raises(ValueError, match="one camera id per row"):
        remove_camera_mean(q, [1, 2, 2])
    with pytest.raises(ValueError, match="together"):
        remove_camera_mean(q, [1, 2], ref_features=ref)
    with pytest.raises(ValueError, match="alpha"):
        remove_camera_mean(q, [1, 2], alpha=-1)


def test_camera_whitening_matches_released_code_formula():
    rng = np.random.default_rng(1)
    g, gc = _unit(rng, 12, 4), np.array([0] * 5 + [1] * 7)
    q, qc = _unit(rng, 3, 4), np.array([1, 0, 1])
    la = 0.18

    def expected(x, xc):
        out = []
        for f, c in zip(x.astype(np.float64), xc):
            xs = g[gc == c].astype(np.float64)
            p = np.linalg.inv(xs.T @ xs + len(xs) * la * np.eye(4))
            v = p @ (f - xs.mean(0))
            out.append(v / np.linalg.norm(v))
        return np.array(out)

    np.testing.assert_allclose(camera_whitening(g, gc, la), expected(g, gc), atol=1e-5)
    np.testing.assert_allclose(
        camera_whitening(q, qc, la, ref_features=g, ref_camids=gc), expected(q, qc), atol=1e-5
    )
    no_mean = camera_whitening(g, gc, la, subtract_mean=False)
    xs = g[gc == 0].astype(np.float64)
    v = np.linalg.solve(xs.T @ xs + 5 * la * np.eye(4), g[0])
    np.testing.assert_allclose(no_mean[0], v / np.linalg.norm(v), atol=1e-5)
    with pytest.raises(ValueError, match="la must be"):
        camera_whitening(g, gc, la=0.0)


# --------------------------------------------------------------------------- tracklets


def test_average_tracklet_features():
    f = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [4.0, 0.0]])
    ids, tf = average_tracklet_features(f, np.array([7, 3, 7, 3]))
    np.testing.assert_array_equal(ids, [3, 7])
    np.testing.assert_allclose(tf, [[2.0, 0.5], [1.5, 1.0]])
    _, tfn = average_tracklet_features(f, np.array([7, 3, 7, 3]), normalize=True)
    np.testing.assert_allclose(np.linalg.norm(tfn, axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="without a track id"):
        average_tracklet_features(f, np.array([7, -1, 7, 3]))


def test_weighted_tracklet_features_exact_weights():
    q = np.array([[1.0, 0.0], [-1.0, 0.0]])
    g = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [-0.6, -0.8]])
    tid = np.array([10, 10, 20, 20])
    # Squared distances q x g: q0 -> [0, 2, 2, 3.2], q1 -> [4, 2, 2, 0.8].
    # Track 10: q0 min 0 < 0.6 selected, q1 min 2 not -> A = [0, 2].
    w10 = np.array([1 / 0.01, 1 / 2.01])
    w10 /= w10.sum()
    # Track 20: minima q0 2, q1 0.8, none < 0.6 -> nearest query q1 only -> A = [2, 0.8].
    w20 = np.array([1 / 2.01, 1 / 0.81])
    w20 /= w20.sum()
    for chunk in (None, 1):
        ids, tf = weighted_tracklet_features(q, g, tid, chunk=chunk)
        np.testing.assert_array_equal(ids, [10, 20])
        np.testing.assert_allclose(tf[0], w10 @ g[:2], atol=1e-6)
        np.testing.assert_allclose(tf[1], w20 @ g[2:], atol=1e-6)
    # Threshold 2.5 selects both queries for track 10: A = [(0+4)/2, (2+2)/2] = [2, 2] -> equal.
    _, tf = weighted_tracklet_features(q, g, tid, threshold=2.5)
    np.testing.assert_allclose(tf[0], 0.5 * g[0] + 0.5 * g[1], atol=1e-6)
    # eps is an argument: eps=1 on track 20 -> W ∝ [1/3, 1/1.8].
    _, tf = weighted_tracklet_features(q, g, tid, eps=1.0)
    w = np.array([1 / 3, 1 / 1.8])
    np.testing.assert_allclose(tf[1], (w / w.sum()) @ g[2:], atol=1e-6)
    _, tfn = weighted_tracklet_features(q, g, tid, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(tfn, axis=1), 1.0, atol=1e-6)
    # the first pass may read the query x gallery distances the caller has (the ablation row's)
    d = np.array([[0, 2, 2, 3.2], [4, 2, 2, 0.8]], np.float32)
    _, tfd = weighted_tracklet_features(q, g, tid, dist=d)
    np.testing.assert_allclose(tfd, weighted_tracklet_features(q, g, tid)[1], atol=1e-6)
    with pytest.raises(ValueError, match=r"dist must have shape \(Q, G\) = \(2, 4\)"):
        weighted_tracklet_features(q, g, tid, dist=d[:, :3])


def test_weighted_tracklet_features_fallback_keeps_tied_nearest_queries():
    q = np.array([[0.0, 1.0], [0.0, -1.0]])
    g = np.array([[1.0, 0.0], [0.6, 0.8]])
    # q0 -> [2, 0.4]: min 0.4; q1 -> [2, 3.6]: min 2. Threshold 0.1: none -> q0 alone.
    _, tf = weighted_tracklet_features(q, g, np.array([1, 1]), threshold=0.1)
    w = np.array([1 / 2.01, 1 / 0.41])
    np.testing.assert_allclose(tf[0], (w / w.sum()) @ g, atol=1e-6)
    # Both queries at the same minimum distance are both kept: A = [2, 2] -> equal weights.
    g2 = np.array([[1.0, 0.0], [-1.0, 0.0]])
    _, tf = weighted_tracklet_features(q, g2, np.array([1, 1]), threshold=0.1)
    np.testing.assert_allclose(tf[0], [0.0, 0.0], atol=1e-6)


def test_weighted_tracklet_features_bad_input():
    q, g = np.eye(2), np.eye(2)
    with pytest.raises(ValueError, match="g_trackids has 1 images without a track id"):
        weighted_tracklet_features(q, g, np.array([0, -1]))
    with pytest.raises(ValueError, match="one track id per row of gallery"):
        weighted_tracklet_features(q, g, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="threshold"):
        weighted_tracklet_features(q, g, np.array([0, 1]), threshold=-1)
    with pytest.raises(ValueError, match="eps"):
        weighted_tracklet_features(q, g, np.array([0, 1]), eps=0)
    with pytest.raises(ValueError, match="feature dim"):
        weighted_tracklet_features(q, np.eye(3), np.array([0, 1, 2]))


def test_fuse_with_tracklet_and_image_to_track():
    f = np.array([[1.0, 0.0], [0.0, 1.0]])
    track_ids = np.array([9, 4])
    tf = np.array([[0.0, 1.0], [1.0, 1.0]])
    out = fuse_with_tracklet(f, np.array([4, 9]), track_ids, tf, beta=0.25)
    raw = np.array([[0.25 + 0.75, 0.75], [0.0, 0.25 + 0.75]])
    np.testing.assert_allclose(out, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(
        fuse_with_tracklet(f, np.array([4, 9]), track_ids, tf, beta=0.25, normalize=False), raw, atol=1e-6
    )
    with pytest.raises(ValueError, match=r"track ids \[5\] that are not in track_ids"):
        fuse_with_tracklet(f, np.array([4, 5]), track_ids, tf, beta=0.5)
    with pytest.raises(ValueError, match="beta"):
        fuse_with_tracklet(f, np.array([4, 9]), track_ids, tf, beta=1.5)
    with pytest.raises(ValueError, match="one per track id"):
        fuse_with_tracklet(f, np.array([4, 9]), track_ids, tf[:1], beta=0.5)

    d_qt = np.array([[0.1, 0.9], [0.5, 0.2]])
    d = image_to_track_distances(d_qt, np.array([4, 9, 9, 4, 4]), track_ids)
    np.testing.assert_allclose(d, [[0.9, 0.1, 0.1, 0.9, 0.9], [0.2, 0.5, 0.5, 0.2, 0.2]])
    with pytest.raises(ValueError, match=r"\[3\] that are not in track_ids"):
        image_to_track_distances(d_qt, np.array([4, 3]), track_ids)
    with pytest.raises(ValueError, match="dist_q_track must have shape"):
        image_to_track_distances(d_qt[:, :1], np.array([4]), track_ids)
    with pytest.raises(ValueError, match="without a track id"):
        image_to_track_distances(d_qt, np.array([4, -1]), track_ids)


# --------------------------------------------------------------------------- query expansion


def test_group_queries_connected_components():
    a = np.array([1.0, 0.0])
    b = np.array([np.cos(0.2), np.sin(0.2)])  # |a-b|^2 = 2 - 2cos(0.2) ~ 0.0399
    c = np.array([np.cos(0.4), np.sin(0.4)])  # b-c close, a-c ~ 0.158 far
    e = np.array([0.0, 1.0])
    x = np.array([e, a, b, c])
    labels, expanded = group_queries(x, theta=0.05)
    np.testing.assert_array_equal(labels, [0, 1, 1, 1])  # a-b-c chained, e alone
    mean = (a + b + c) / 3
    np.testing.assert_allclose(expanded[1:], np.tile(mean / np.linalg.norm(mean), (3, 1)), atol=1e-6)
    np.testing.assert_allclose(expanded[0], e, atol=1e-7)
    labels, expanded = group_queries(x, theta=0.05, normalize=False)
    np.testing.assert_allclose(expanded[1], mean, atol=1e-6)
    labels, _ = group_queries(x, theta=0.03)  # below every pair distance: all singletons
    np.testing.assert_array_equal(labels, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="theta"):
        group_queries(x, theta=-1.0)


def test_dbscan_query_expansion_clusters_and_noise():
    a = np.array([1.0, 0.0])
    b = np.array([np.cos(0.2), np.sin(0.2)])
    c = np.array([np.cos(0.4), np.sin(0.4)])
    e = np.array([0.0, 1.0])
    x = np.array([a, e, b, c])
    labels, expanded = dbscan_query_expansion(x, eps=0.05, min_samples=2)
    assert labels[1] == -1 and labels[0] == labels[2] == labels[3] >= 0
    mean = (a + b + c) / 3
    np.testing.assert_allclose(expanded[[0, 2, 3]], np.tile(mean / np.linalg.norm(mean), (3, 1)), atol=1e-6)
    np.testing.assert_allclose(expanded[1], e)  # noise unchanged
    # min_samples 4: no query has 4 neighbours (self included): all noise, all unchanged.
    labels, expanded = dbscan_query_expansion(x, eps=0.05, min_samples=4)
    np.testing.assert_array_equal(labels, [-1, -1, -1, -1])
    np.testing.assert_allclose(expanded, x, atol=1e-7)
    with pytest.raises(ValueError, match="eps"):
        dbscan_query_expansion(x, eps=0.0)
    with pytest.raises(ValueError, match="min_samples"):
        dbscan_query_expansion(x, eps=0.1, min_samples=0)


# --------------------------------------------------------------------------- distance steps


def test_attribute_constraint_eq6():
    d = np.zeros((2, 4))
    q_type = np.array([[0.9, 0.1], [0.2, 0.8]])  # types 0, 1
    g_type = np.array([[0.7, 0.3], [0.4, 0.6], [0.6, 0.4], [0.1, 0.9]])  # 0, 1, 0, 1
    q_col = np.array([[0.1, 0.8, 0.1], [0.6, 0.2, 0.2]])  # colours 1, 0
    g_col = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # 1 1 0 0
    out = attribute_constraint(d, q_type, g_type, q_col, g_col, delta_type=0.3, delta_color=0.5)
    # q0 (t0,c1): g0 same/same 0; g1 t differs 0.3; g2 c differs 0.5; g3 both 0.8.
    # q1 (t1,c0): g0 both 0.8; g1 c differs 0.5; g2 t differs 0.3; g3 same 0.
    np.testing.assert_allclose(out, [[0, 0.3, 0.5, 0.8], [0.8, 0.5, 0.3, 0]], atol=1e-7)
    assert d.sum() == 0  # input untouched
    only_type = attribute_constraint(d, q_type, g_type, None, None, 0.3, 0.5)
    np.testing.assert_allclose(only_type, [[0, 0.3, 0, 0.3], [0.3, 0, 0.3, 0]], atol=1e-7)
    # Integer labels are accepted; -1 (unknown) never adds a penalty.
    lab = attribute_constraint(d, None, None, np.array([1, -1]), np.array([1, 1, 0, -1]), 0.3, 0.5)
    np.testing.assert_allclose(lab, [[0, 0, 0.5, 0], [0, 0, 0, 0]], atol=1e-7)


def test_attribute_constraint_bad_input():
    d = np.zeros((2, 3))
    p2, p3 = np.ones((2, 2)), np.ones((3, 2))
    with pytest.raises(ValueError, match="given together"):
        attribute_constraint(d, p2, None, None, None, 1, 1)
    with pytest.raises(ValueError, match="at least one attribute"):
        attribute_constraint(d, None, None, None, None, 1, 1)
    with pytest.raises(ValueError, match="g_type_prob has 2 rows, expected one per gallery image"):
        attribute_constraint(d, p2, p2, None, None, 1, 1)
    with pytest.raises(ValueError, match="2 classes but g_type_prob has 3"):
        attribute_constraint(d, p2, np.ones((3, 3)), None, None, 1, 1)
    with pytest.raises(ValueError, match="delta_type"):
        attribute_constraint(d, p2, p3, None, None, -1, 1)


def test_bias_fusion():
    dr = np.array([[1.0, 2.0]])
    dc = np.array([[1.0, 0.0]])
    do = np.array([[2.0, 4.0]])
    np.testing.assert_allclose(bias_fusion(dr, dc, do), [[1 - 0.1 - 0.1, 2 - 0.2]], atol=1e-7)
    np.testing.assert_allclose(bias_fusion(dr, dist_camera=dc), [[0.9, 2.0]], atol=1e-7)
    np.testing.assert_allclose(
        bias_fusion(dr, dist_orientation=do, lambda_orientation=0.5), [[0.0, 0.0]], atol=1e-7
    )
    with pytest.raises(ValueError, match="expected the shape of dist_reid"):
        bias_fusion(dr, dc.T)
    with pytest.raises(ValueError, match="None for both"):
        bias_fusion(dr)
    with pytest.raises(ValueError, match="lambda_camera"):
        bias_fusion(dr, dc, lambda_camera=-0.1)


def test_camera_verification_and_predict_camids():
    d = np.zeros((2, 4), dtype=np.float32)
    out = camera_verification(d, np.array([1, -1]), np.array([1, 2, 1, -1]))
    np.testing.assert_allclose(out, [[10, 0, 10, 0], [0, 0, 0, 0]])
    assert out.dtype == np.float32
    out = camera_verification(d, [1, 3], [1, 2, 1, 3], penalty=1.0, q_scenes=[0, 1], g_scenes=[0, 0, 1, 1])
    np.testing.assert_allclose(out, [[1, 0, 2, 1], [1, 1, 0, 1]])
    cams = predict_camids(np.array([[0.1, 0.9], [0.8, 0.2]]))
    np.testing.assert_array_equal(cams, [1, 0])
    with pytest.raises(ValueError, match="q_camids must be a 1-D array with one id per query"):
        camera_verification(d, [1], [1, 2, 1, 1])
    with pytest.raises(ValueError, match="penalty"):
        camera_verification(d, [1, 1], [1, 2, 1, 1], penalty=np.nan)
    with pytest.raises(ValueError, match="together"):
        camera_verification(d, [1, 1], [1, 2, 1, 1], q_scenes=[0, 0])
    with pytest.raises(ValueError, match="camera_prob"):
        predict_camids(np.ones(3))


def test_temporal_filter():
    d = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    tq = np.array([100.0, np.nan])
    tg = np.array([100.0, 200.0, 150.0, np.nan])
    out = temporal_filter(d, tq, tg, tau=60.0, penalty=5.0)
    # q0: g1 is 100 away > 60 -> +5; g2 at 50 kept; unknown g3 kept. q1 unknown: nothing.
    np.testing.assert_allclose(out, [[0.1, 5.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]], atol=1e-6)
    auto = temporal_filter(d, tq, tg, tau=10.0)  # g1, g2 far: pushed behind g0, g3, order kept
    idx, _ = topk(auto, 4)
    np.testing.assert_array_equal(idx[0], [0, 3, 1, 2])
    np.testing.assert_allclose(auto[0], [0.1, 0.2 + 1.3, 0.3 + 1.3, 0.4], atol=1e-6)
    inf = temporal_filter(d, tq, tg, tau=10.0, penalty=np.inf)
    assert np.isinf(inf[0, 1]) and np.isinf(inf[0, 2])
    np.testing.assert_allclose(temporal_filter(d, tq, tg, tau=np.inf), d)
    with pytest.raises(ValueError, match="tau"):
        temporal_filter(d, tq, tg, tau=-1.0)
    with pytest.raises(ValueError, match="g_timestamps must be a 1-D array"):
        temporal_filter(d, tq, tg[:3], tau=1.0)


# --------------------------------------------------------------------------- group re-ranking


def test_group_rerank_insertion_order():
    d = np.array([[0.1, 0.5, 0.9, 0.2, 0.8, 0.3, 0.7, 0.95]])
    tracks = np.array([0, 1, 0, 2, 1, 2, 0, 3])
    idx, _ = topk(d, 5)
    np.testing.assert_array_equal(idx, [[0, 3, 5, 1, 6]])
    out = group_rerank(idx, d, tracks, theta=0.25)
    # Anchors (d < 0.25): g0 (track 0), g3 (track 2). After g0 its track mates g6 (0.7), g2
    # (0.9) by distance; after g3 its mate g5 (already listed later) moves up; g1 follows.
    np.testing.assert_array_equal(out, [[0, 6, 2, 3, 5]])
    # No anchor: unchanged. A later anchor of an expanded track adds nothing new.
    np.testing.assert_array_equal(group_rerank(idx, d, tracks, theta=0.05), idx)
    out = group_rerank(idx, d, tracks, theta=0.75)
    # Anchors g0 (t0), g3 (t2), g5 (t2, expanded), g1 (t1), g6 (t0, expanded): 0 6 2 3 5 | 1 4 ...
    np.testing.assert_array_equal(out, [[0, 6, 2, 3, 5]])
    full, _ = topk(d, 8)
    np.testing.assert_array_equal(group_rerank(full, d, tracks, theta=0.75)[0], [0, 6, 2, 3, 5, 1, 4, 7])
    # A track mate listed *before* the anchor stays where it is.
    d2 = np.array([[0.3, 0.1, 0.2]])
    np.testing.assert_array_equal(group_rerank(np.array([[0, 1, 2]]), d2, np.array([5, 5, 6]), 0.15), [[0, 1, 2]])


def test_group_rerank_bad_input():
    d = np.zeros((1, 3))
    with pytest.raises(ValueError, match="repeats a gallery index"):
        group_rerank(np.array([[0, 0]]), d, np.array([0, 1, 2]), 0.1)
    with pytest.raises(ValueError, match="must lie in"):
        group_rerank(np.array([[0, 3]]), d, np.array([0, 1, 2]), 0.1)
    with pytest.raises(ValueError, match="without a track id"):
        group_rerank(np.array([[0, 1]]), d, np.array([0, -1, 2]), 0.1)
    with pytest.raises(ValueError, match="ranked_indices must have shape"):
        group_rerank(np.array([[0, 1], [1, 2]]), d, np.array([0, 1, 2]), 0.1)
    with pytest.raises(ValueError, match="theta"):
        group_rerank(np.array([[0, 1]]), d, np.array([0, 1, 2]), np.nan)


# --------------------------------------------------------------------------- integration


def _synthetic_city(rng, n_ids=40, n_cams=4, per_cam=3, dim=32, noise=0.35, cam_shift=0.9):
    """Identity centres + noise + a strong per-camera offset; one query per identity."""
    centres = _unit(rng, n_ids, dim).astype(np.float64)
    offsets = rng.normal(size=(n_cams, dim))
    offsets *= cam_shift / np.linalg.norm(offsets, axis=1, keepdims=True)
    pids = np.repeat(np.arange(n_ids), n_cams * per_cam)
    cams = np.tile(np.repeat(np.arange(n_cams), per_cam), n_ids)
    x = centres[pids] + noise * rng.normal(size=(len(pids), dim)) / np.sqrt(dim) + offsets[cams]
    is_q = np.zeros(len(pids), dtype=bool)
    is_q[np.arange(n_ids) * n_cams * per_cam + (np.arange(n_ids) % n_cams) * per_cam] = True
    return l2_normalize(x), pids, cams, is_q


def test_camera_mean_removal_raises_map():
    rng = np.random.default_rng(0)
    x, pids, cams, is_q = _synthetic_city(rng)
    q, g = is_q, ~is_q

    def m_ap(feats):
        d = squared_distances(feats[q], feats[g])
        return evaluate(d, pids[q], pids[g], cams[q], cams[g]).mAP

    before = m_ap(x)
    after = m_ap(remove_camera_mean(x, cams))
    # Released-code form: statistics from the gallery, applied to queries and gallery alike.
    after_white = m_ap(camera_whitening(x, cams, ref_features=x[g], ref_camids=cams[g]))
    assert after > before + 0.15, (before, after)
    assert after_white > before + 0.15, (before, after_white)


def test_weighted_tracklet_features_raise_map_on_noisy_tracks():
    rng = np.random.default_rng(1)
    n_ids, dim, tracks_per_id, frames = 40, 32, 2, 8
    centres = _unit(rng, n_ids, dim).astype(np.float64)
    q = l2_normalize(centres + 0.8 * rng.normal(size=(n_ids, dim)) / np.sqrt(dim))
    q_pids = np.arange(n_ids)
    g_pids = np.repeat(q_pids, tracks_per_id * frames)
    g_tracks = np.repeat(np.arange(n_ids * tracks_per_id), frames)
    g = centres[g_pids] + 0.6 * rng.normal(size=(len(g_pids), dim)) / np.sqrt(dim)
    # Noisy frames (occluded / dark, 0 to 6 of the 8 per track) all look alike: mostly one
    # shared appearance. The average feature is dragged toward it by a per-track amount; the
    # weighted feature trusts the frames that are close to the matching query.
    shared = _unit(rng, 1, dim)[0].astype(np.float64)
    n_noisy = rng.integers(0, 7, size=n_ids * tracks_per_id)
    noisy = (np.arange(len(g_pids)) % frames) < n_noisy[g_tracks]
    g[noisy] = 0.2 * g[noisy] + 0.8 * shared + 0.2 * rng.normal(size=(int(noisy.sum()), dim)) / np.sqrt(dim)
    g = l2_normalize(g)
    q_cams, g_cams = np.zeros(n_ids, dtype=np.int64), np.ones(len(g_pids), dtype=np.int64)

    def m_ap(d):
        return evaluate(d, q_pids, g_pids, q_cams, g_cams).mAP

    image_level = m_ap(squared_distances(q, g))
    ids_af, tf_af = average_tracklet_features(g, g_tracks)
    af = m_ap(image_to_track_distances(squared_distances(q, tf_af), g_tracks, ids_af))
    ids_wf, tf_wf = weighted_tracklet_features(q, g, g_tracks)
    wf = m_ap(image_to_track_distances(squared_distances(q, tf_wf), g_tracks, ids_wf))
    assert wf > image_level + 0.15, (image_level, af, wf)
    assert wf > af + 0.02, (image_level, af, wf)

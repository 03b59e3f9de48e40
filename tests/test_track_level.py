"""Track-level post-processing (001 §3.4 WF-TRR, 003): re-ranking over the Q query + T track
items against a dense reference written here from METHODS.md, the tiling of tracks into the
image ranking, the distance steps on track items, the options that must act or fail, bad input,
and track2.txt alignment with left-out images through the actor."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vreid.config import PostprocessConfig
from vreid.eval import read_submission
from vreid.postprocess.items import GalleryItems, ItemState, PostprocessInputs, Side, tile_ranking
from vreid.postprocess.pipeline import PostprocessError, ensemble, run_postprocess
from vreid.postprocess.registry import STEPS, StepContext

sys.path.insert(0, str(Path(__file__).parent))
from test_postprocess_pipeline import _city  # noqa: E402


# --------------------------------------------------------------------------- dense references


def dense_wf(q: np.ndarray, g: np.ndarray, codes: np.ndarray, threshold: float, eps: float) -> np.ndarray:
    """WF (METHODS.md "Tracklet features"), track by track with plain loops."""
    out = []
    for t in range(codes.max() + 1):
        imgs = g[codes == t]
        d = ((q[:, None, :] - imgs[None, :, :]) ** 2).sum(-1)  # (Q, |T|)
        mins = d.min(axis=1)
        sel = mins < threshold
        if not sel.any():
            sel = mins == mins.min()
        a = d[sel].mean(axis=0)
        w = 1.0 / (a + eps)
        w /= w.sum()
        out.append((w[:, None] * imgs).sum(0))
    return np.asarray(out)


def dense_rerank(x: np.ndarray, nq: int, k1: int, k2: int, lam: float) -> np.ndarray:
    """k-reciprocal re-ranking, METHODS.md steps 1-7, on a dense (N, N) matrix; (Q, N-Q)."""
    n = len(x)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    dn = d / d.max(axis=1, keepdims=True)  # step 1
    j = np.arange(n)
    order = np.array([np.lexsort((j, j != i, d[i])) for i in range(n)])  # ties: self first, then index

    def r(i, k):  # step 2
        return {int(c) for c in order[i, : k + 1] if i in order[c, : k + 1]}

    v = np.zeros((n, n))
    half = int(np.around(k1 / 2))
    for i in range(n):  # step 3, 4
        base = r(i, k1)
        e = set(base)
        for c in base:
            rc = r(c, half)
            if len(rc & base) > 2 / 3 * len(rc):
                e |= rc
        e = sorted(e)
        w = np.exp(-dn[i, e])
        v[i, e] = w / w.sum()
    if k2 > 1:  # step 5
        v = np.array([v[order[i, :k2]].mean(0) for i in range(n)])
    m = np.minimum(v[:nq, None, :], v[None, nq:, :]).sum(-1)  # step 6
    jac = 1 - m / (2 - m)
    return (1 - lam) * jac + lam * dn[:nq, nq:]  # step 7


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _hand_tracks(seed=0):
    """6 queries, a gallery of 5 tracks of 1-4 images plus 2 images without a track."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 8))
    g_track = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, -1, -1])
    g_pid = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 0, 1, 2])
    q_pid = np.array([0, 1, 2, 3, 0, 2])
    g = _unit(centres[g_pid] + 0.6 * rng.normal(size=(len(g_pid), 8))).astype(np.float32)
    q = _unit(centres[q_pid] + 0.6 * rng.normal(size=(len(q_pid), 8))).astype(np.float32)

    def side(n, pids, tracks, cam):
        return Side(np.asarray([f"i{i}" for i in range(n)], object), np.arange(n, dtype=np.int32),
                    pids.astype(np.int32), np.full(n, cam, np.int32), tracks.astype(np.int64),
                    np.arange(n, dtype=np.float64))

    inputs = PostprocessInputs(query=side(len(q), q_pid, np.full(len(q), -1), 0),
                               gallery=side(len(g), g_pid, g_track, 1),
                               features={"m": (q, g)}, extras={}, tasks={"m": "reid"}, weights={"m": 1.0})
    return inputs, q.astype(np.float64), g.astype(np.float64), g_track


@pytest.mark.parametrize("method", ["wf", "af"])
@pytest.mark.parametrize("k1,k2,lam", [(7, 2, 0.6), (3, 1, 0.3), (4, 3, 0.0), (10, 5, 1.0), (1, 1, 0.5)])
def test_track_rerank_equals_dense_reference(method, k1, k2, lam):
    inputs, q, g, g_track = _hand_tracks()
    cfg = PostprocessConfig.model_validate({"top_k": 13, "steps": [
        {"step": "tracklet", "method": method, "threshold": 0.6},
        {"step": "rerank", "level": "track", "k1": k1, "k2": k2, "lambda_value": lam}]})
    res = run_postprocess(inputs, cfg)
    assert res.level == "track"
    # items: tracks 0..4 by id, then the two images without a track, in gallery order
    codes = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 5, 6])
    items = dense_wf(q, g, codes, 0.6, 0.01) if method == "wf" else \
        np.asarray([g[codes == t].mean(0) for t in range(7)])
    ref = dense_rerank(np.concatenate([q, items]), len(q), k1, k2, lam)  # (Q, T)
    np.testing.assert_allclose(res.distances, np.take_along_axis(ref, codes[res.indices], 1), atol=1e-5)
    for i in range(len(q)):  # tiled: items by ascending distance, each item's images nearest first
        want = []
        for t in np.lexsort((np.arange(7), ref[i])):
            imgs = np.flatnonzero(codes == t)
            want += imgs[np.lexsort((imgs, ((g[imgs] - q[i]) ** 2).sum(1)))].tolist()
        np.testing.assert_array_equal(res.indices[i], want)


def test_tile_ranking_order():
    items = GalleryItems.of_tracks(np.array([5, 2, 5, -1, 2, 5]))  # items: track 2, track 5, image 3
    assert items.track_ids.tolist() == [2, 5, -1] and items.item_of_image.tolist() == [1, 0, 1, 2, 0, 1]
    q = np.array([[0.0, 0.0]], np.float32)
    g = np.array([[3, 0], [1, 0], [1, 0], [0, 0], [2, 0], [0, 1]], np.float32)  # image distances 9 1 1 0 4 1
    dist = np.array([[0.2, 0.1, 0.5]], np.float32)  # track 5 first, then track 2, then image 3
    idx, d = tile_ranking(dist, items, q, g, 6)
    assert idx.tolist() == [[2, 5, 0, 1, 4, 3]]  # track 5: images 2, 5 (tied 1: lower index), 0; ...
    np.testing.assert_allclose(d, [[0.1, 0.1, 0.1, 0.2, 0.2, 0.5]])
    idx, _ = tile_ranking(dist, items, q, g, 4)  # only the items reaching the first 4 images
    assert idx.tolist() == [[2, 5, 0, 1]]


def _track_state():
    """2 queries; gallery: track 7 = images 0, 1 (camera 3), track 9 = image 2 (camera 4)."""
    items = GalleryItems.of_tracks(np.array([7, 7, 9]))
    qf = np.zeros((2, 2), np.float32)
    state = ItemState(items, qf, np.zeros((2, 2), np.float32), np.zeros((3, 2), np.float32),
                      dist=np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    q = Side(np.array(["a", "b"], object), np.arange(2), np.zeros(2, np.int32), np.array([3, 4], np.int32),
             np.full(2, -1), np.array([0.0, 100.0]))
    g = Side(np.array(["x", "y", "z"], object), np.arange(3), np.zeros(3, np.int32), np.array([3, 3, 4], np.int32),
             np.array([7, 7, 9]), np.array([10.0, 40.0, 500.0]))
    cam_q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    cam_g = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], np.float32)  # track 7 mean (0.5, 0)
    typ_q = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    typ_g = np.array([[0.9, 0.1], [0.0, 1.0], [0.3, 0.7]], np.float32)  # track 7 mean (0.45, 0.55): type 1
    inputs = PostprocessInputs(q, g, {"m": (qf, qf), "cam": (cam_q, cam_g)},
                               {"m": {"type_prob": (typ_q, typ_g)},
                                "cam": {"camera_prob": (cam_q, np.array([[0.2, 0.8], [0.6, 0.4], [0.9, 0.1]],
                                                                        np.float32))}},
                               {"m": "reid", "cam": "camera"}, {"m": 1.0}, camera_classes={"cam": [3, 4]})
    return inputs, state


def _apply(name, params, inputs, state, **ens):
    cfg = PostprocessConfig.model_validate({"ensemble": ens, "steps": [{"step": name, **params}]})
    ctx = StepContext(inputs, cfg.ensemble, "track", 100, graph=None)
    return STEPS.get(name).apply(cfg.steps[0], state, ctx).dist


def test_bias_fusion_on_track_mean_camera_feature():
    inputs, state = _track_state()
    d = _apply("bias_fusion", {"lambda_camera": 0.1}, inputs, state, camera_model="cam")
    # D_c: query (1,0) to track 7's mean (0.5,0) = 0.25, to track 9 (0,1) = 2; query (0,1): 1.25, 0
    np.testing.assert_allclose(d, [[1 - 0.025, 2 - 0.2], [3 - 0.125, 4 - 0.0]], atol=1e-6)


def test_attribute_constraint_on_track_mean_probabilities():
    inputs, state = _track_state()
    d = _apply("attribute_constraint", {"delta_type": 0.5, "delta_color": 0.0}, inputs, state,
               attribute_model="m")
    # query types 0, 1; track 7 mean type 1, track 9 type 1 -> query 0 differs from both
    np.testing.assert_allclose(d, [[1.5, 2.5], [3.0, 4.0]])


def test_camera_verification_on_track_camera_labels_and_predictions():
    inputs, state = _track_state()
    d = _apply("camera_verification", {"penalty": 10}, inputs, state)
    np.testing.assert_allclose(d, [[11, 2], [3, 14]])  # track 7 camera 3, track 9 camera 4
    # predicted: track 7 mean prob (0.4, 0.6) -> camera 4; track 9 -> camera 3; queries 3, 4
    inputs, state = _track_state()
    d = _apply("camera_verification", {"penalty": 10, "predicted": True}, inputs, state, camera_model="cam")
    np.testing.assert_allclose(d, [[1, 12], [13, 4]])


def test_temporal_filter_on_track_time_span():
    inputs, state = _track_state()
    d = _apply("temporal_filter", {"tau": 50}, inputs, state)
    pen = 3 + 1  # (max - min of the distances) + 1
    # query t=0: track 7 spans [10, 40] (inside tau), track 9 at 500 (out); query t=100: 60 past 40 (out)
    np.testing.assert_allclose(d, [[1, 2 + pen], [3 + pen, 4 + pen]])


# --------------------------------------------------------------------------- item 5: act or fail


def test_divide_by_sqrt_n_is_not_undone():
    inputs = _city()
    qf, gf = inputs.features["m"]
    inputs.features["n"] = (qf[:, ::-1].copy(), gf[:, ::-1].copy())
    inputs.tasks["n"] = "reid"
    cfg = PostprocessConfig.model_validate({"ensemble": {"weights": {"m": 1.0, "n": 3.0}}})
    plain = ensemble(inputs, cfg, ["m", "n"])[0]
    div = ensemble(inputs, cfg.model_copy(update={"ensemble": cfg.ensemble.model_copy(
        update={"divide_by_sqrt_n": True})}), ["m", "n"])[0]
    np.testing.assert_allclose(np.linalg.norm(plain, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(div, axis=1), np.sqrt((1 + 9) / 2), atol=1e-5)  # 002 code


def test_camera_verification_without_camera_ids_names_the_way_out():
    inputs = _city()
    inputs.query.camids[:] = -1
    cfg = PostprocessConfig.model_validate({"steps": [{"step": "camera_verification"}]})
    with pytest.raises(PostprocessError, match=r"camera_verification .* query and 0 gallery .*predicted: true"):
        run_postprocess(inputs, cfg)


@pytest.mark.parametrize("early", ["camera_verification", "bias_fusion", "attribute_constraint", "temporal_filter"])
def test_distance_steps_before_rerank_rejected_with_reason(early):
    cfg = PostprocessConfig.model_validate({"ensemble": {"camera_model": "m", "attribute_model": "m"},
                                            "steps": [{"step": early}, {"step": "rerank"}]})
    with pytest.raises(PostprocessError, match=rf"'rerank' .* must come before '{early}' \(before rerank "):
        run_postprocess(_city(), cfg)


def test_whitening_averages_raw_and_whitened_distances():
    from vreid.postprocess.camera_bias import camera_whitening
    from vreid.postprocess.ensemble import l2_normalize
    from vreid.postprocess.kernels import squared_distances

    inputs = _city(dim=8)
    steps = [{"step": "camera_bias", "method": "whitening", "la": 0.5}]
    res = run_postprocess(inputs, PostprocessConfig.model_validate({"steps": steps, "top_k": 5}))
    qf, gf = (l2_normalize(x) for x in inputs.features["m"])
    q, g = inputs.query, inputs.gallery
    wq = camera_whitening(qf, q.camids, 0.5, ref_features=gf, ref_camids=g.camids)
    wg = camera_whitening(gf, g.camids, 0.5)
    want = (squared_distances(qf, gf) + squared_distances(wq, wg)) / 2  # 003 released code
    np.testing.assert_allclose(res.distances, np.take_along_axis(want, res.indices, 1), atol=1e-5)
    alone = run_postprocess(inputs, PostprocessConfig.model_validate(
        {"steps": [{**steps[0], "average_raw": False}], "top_k": 5}))
    np.testing.assert_allclose(alone.distances, np.take_along_axis(squared_distances(wq, wg), alone.indices, 1),
                               atol=1e-5)


# --------------------------------------------------------------------------- levels, AQE, bad input


def test_level_auto_and_defaults_and_image_variant():
    inputs = _city()
    steps = [{"step": "tracklet"}, {"step": "rerank"}]
    track = run_postprocess(inputs, PostprocessConfig.model_validate({"steps": steps, "top_k": 10}))
    assert track.level == "track"
    explicit = run_postprocess(inputs, PostprocessConfig.model_validate(
        {"steps": [steps[0], {"step": "rerank", "level": "track", "k1": 7, "k2": 2, "lambda_value": 0.6}],
         "top_k": 10}))
    np.testing.assert_array_equal(track.indices, explicit.indices)  # 003's track defaults
    image = run_postprocess(inputs, PostprocessConfig.model_validate(
        {"steps": [steps[0], {"step": "rerank", "level": "image"}], "top_k": 10}))
    assert image.level == "image"
    assert run_postprocess(inputs, PostprocessConfig.model_validate({"steps": [{"step": "rerank"}]})).level == "image"
    with pytest.raises(PostprocessError, match="level: track needs a tracklet step"):
        run_postprocess(inputs, PostprocessConfig.model_validate({"steps": [{"step": "rerank", "level": "track"}]}))
    with pytest.raises(PostprocessError, match="beta=0.1 fuses image features"):
        run_postprocess(inputs, PostprocessConfig.model_validate({"steps": [{"step": "tracklet", "beta": 0.1}]}))


def test_aqe_on_items_follows_fast_reid():
    inputs, q, g, _ = _hand_tracks()
    cfg = PostprocessConfig.model_validate({"top_k": 13, "steps": [
        {"step": "tracklet", "method": "af"}, {"step": "aqe", "qe_k": 3, "alpha": 3.0},
        {"step": "rerank", "level": "track", "k1": 3, "k2": 1, "lambda_value": 1.0}]})
    res = run_postprocess(inputs, cfg)
    codes = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 5, 6])
    x = np.concatenate([q, [g[codes == t].mean(0) for t in range(7)]])
    unit = _unit(x)
    sims = unit @ unit.T
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    new = []
    for i in range(len(x)):  # fast-reid aqe: mean of the qe_k nearest (self included) weighted by cos^alpha;
        nb = np.argsort(d[i], kind="stable")[:3]  # nearest by the items' distance (cosine ones on unit items)
        new.append((x[nb] * sims[i, nb, None] ** 3.0).mean(0))
    new = _unit(np.asarray(new))
    ref = dense_rerank(new, len(q), 3, 1, 1.0)  # lambda 1: the normalised distance of the expanded items
    np.testing.assert_allclose(res.distances, np.take_along_axis(ref, codes[res.indices], 1), atol=1e-5)


def test_images_without_track_are_one_image_items():
    inputs = _city()
    inputs.gallery.trackids[3] = -1
    res = run_postprocess(inputs, PostprocessConfig.model_validate({"steps": [{"step": "tracklet"}], "top_k": 5}))
    assert res.level == "track"  # no rerank step: auto, a tracklet step and tracks -> track
    res = run_postprocess(inputs, PostprocessConfig.model_validate(
        {"steps": [{"step": "tracklet", "method": "af"}, {"step": "rerank", "level": "track"}], "top_k": 200}))
    assert res.level == "track" and 3 in res.indices[0]


def test_bad_track_input_fails_before_work():
    inputs = _city()
    inputs.query.trackids[0] = inputs.gallery.trackids[0]
    with pytest.raises(PostprocessError, match=rf"tracks \[{inputs.gallery.trackids[0]}\] mix query and gallery"):
        run_postprocess(inputs, PostprocessConfig.model_validate({"steps": [{"step": "tracklet"}]}))
    inputs = _city()
    g = inputs.features["m"][1].copy()
    g[5] = np.nan
    inputs.features["m"] = (inputs.features["m"][0], g)
    with pytest.raises(PostprocessError, match=rf"track items \[{inputs.gallery.trackids[5]}\] have no finite "
                                               "feature in store 'm'"):
        run_postprocess(inputs, PostprocessConfig.model_validate({"steps": [{"step": "tracklet"}]}))


# --------------------------------------------------------------------------- track2.txt through the actor


def _leave_out(run_dir: Path, image_ids: list[str]) -> None:
    """What extraction under on_bad_image: skip leaves: the rows absent, the images recorded."""
    for store in (run_dir / "features").iterdir():
        for part in store.glob("*.parquet"):
            table = pq.read_table(part)
            keep = ~np.isin(np.asarray(table.column("image_id").to_pylist(), object), image_ids)
            pq.write_table(table.filter(keep), part)
        meta = json.loads((store / "_SUCCESS.json").read_text())
        meta["skipped"] = [{"image_id": i, "reason": "not an image file"} for i in image_ids]
        meta["rows"] -= len(image_ids)
        (store / "_SUCCESS.json").write_text(json.dumps(meta))


def test_track2_alignment_with_left_out_images(tiny_stores, tiny_manifest, tmp_path, ray_session):
    from vreid.data import split_table
    from vreid.postprocess.actor import postprocess_run

    cfg, _ = tiny_stores
    run = tmp_path / "run"
    shutil.copytree(Path(cfg.run_dir) / "models", run / "models")
    shutil.copytree(Path(cfg.run_dir) / "features", run / "features")
    cfg = cfg.model_copy(deep=True, update={"run_dir": str(run)})
    cfg.postprocess.ensemble.models = ["attr"]
    cfg.postprocess.top_k = 200
    gallery = split_table(tiny_manifest, "gallery")
    query = split_table(tiny_manifest, "query")
    g_ids, g_orders = gallery.column("image_id").to_pylist(), gallery.column("order").to_numpy()
    gone = g_ids[4]
    _leave_out(run, [gone])
    full = postprocess_run(cfg)
    ng, nq = gallery.num_rows, query.num_rows
    ranks = read_submission(Path(full["out_dir"]) / "track2.txt", num_gallery=ng, num_queries=nq)
    assert ranks.shape == (nq, min(100, ng))
    table = pq.read_table(Path(full["out_dir"]) / "rankings.parquet")
    by_order = dict(zip(table.column("query_order").to_pylist(), table.column("gallery_orders").to_pylist()))
    for line, row in enumerate(ranks):  # line i is the query of official order i, orders of the official list
        present = by_order[line]
        assert row.tolist() == (present + [int(g_orders[4])])[: len(row)]
    assert int(g_orders[4]) not in sum(by_order.values(), [])
    if ng <= 100:
        assert (ranks[:, -1] == g_orders[4]).all(), "the left-out gallery image is ranked last"

    q_gone = query.column("image_id")[2].as_py()
    _leave_out(run, [gone, q_gone])
    shutil.rmtree(full["out_dir"])
    with pytest.raises(Exception, match=rf"query images \['{q_gone}'\] were left out .* every query"):
        postprocess_run(cfg)
    assert not Path(full["out_dir"]).exists(), "nothing written"


def test_track_level_metrics_equal_the_tiled_distance_matrix():
    from vreid.eval import evaluate, evaluate_tracks

    inputs = _city()
    inputs.gallery.trackids[[0, 7]] = -1  # one-image items among the tracks
    res = run_postprocess(inputs, PostprocessConfig.model_validate(
        {"steps": [{"step": "tracklet"}, {"step": "rerank", "k1": 6}], "top_k": 20}))
    items = GalleryItems.of_tracks(inputs.gallery.trackids)
    rng = np.random.default_rng(0)
    dist = rng.random((len(inputs.query.pids), items.num_items)).astype(np.float32)
    tiled = dist[:, items.item_of_image]
    q, g = inputs.query, inputs.gallery
    for top_k in (None, 100):
        want = evaluate(tiled, q.pids, g.pids, q.camids, g.camids, top_k_ap=top_k)
        got = evaluate_tracks(dist, items.item_of_image, q.pids, g.pids, q.camids, g.camids, top_k_ap=top_k)
        assert got.mAP == pytest.approx(want.mAP) and got.mINP == pytest.approx(want.mINP)
        np.testing.assert_allclose(got.cmc, want.cmc)
    assert res.ablation[-1]["step"] == "rerank" and res.level == "track"

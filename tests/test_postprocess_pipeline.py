"""The post-processing pipeline: ablation rows, order and input checks, and the end-to-end run
from tiny stores to rankings.parquet, track2.txt and metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vreid.config import PostprocessConfig
from vreid.eval import read_submission
from vreid.postprocess.actor import load_inputs, postprocess_run
from vreid.postprocess.pipeline import (
    PostprocessError,
    PostprocessInputs,
    Side,
    ablation_table,
    run_postprocess,
)


def _city(seed=0, n_ids=12, per_cam=3, cams=3, dim=16, cam_shift=0.6, noise=1.0):
    """Clustered identities seen by cameras that add their own offset (camera bias), in tracks."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_ids, dim))
    offsets = rng.normal(size=(cams, dim)) * cam_shift
    feats, pids, camids, tracks = [], [], [], []
    for p in range(n_ids):
        for c in range(cams):
            for _ in range(per_cam):
                feats.append(centers[p] + offsets[c] + rng.normal(scale=noise, size=dim))
                pids.append(p)
                camids.append(c)
                tracks.append(p * cams + c)
    feats = np.asarray(feats, np.float32)
    pids, camids, tracks = map(np.asarray, (pids, camids, tracks))
    is_q = np.zeros(len(pids), bool)
    is_q[::per_cam * 2] = True  # one query per (identity, camera) every other visit

    def side(mask):
        n = int(mask.sum())
        return Side(np.asarray([f"img{i}" for i in np.flatnonzero(mask)], object), np.arange(n, dtype=np.int32),
                    pids[mask].astype(np.int32), camids[mask].astype(np.int32),
                    tracks[mask].astype(np.int64),
                    np.arange(n, dtype=np.float64))

    q, g = side(is_q), side(~is_q)
    q.trackids[:] = -1
    color = np.eye(4, dtype=np.float32)[pids % 4]
    return PostprocessInputs(query=q, gallery=g, features={"m": (feats[is_q], feats[~is_q])},
                             extras={"m": {"color_prob": (color[is_q], color[~is_q])}},
                             tasks={"m": "reid"}, weights={"m": 1.0})


def _cfg(*steps, **ens):
    return PostprocessConfig.model_validate({"ensemble": ens, "steps": list(steps), "top_k": 20})


def test_ablation_one_row_per_step_in_order():
    inputs = _city()
    cfg = _cfg({"step": "camera_bias"}, {"step": "tracklet"}, {"step": "rerank", "k1": 6, "k2": 2},
               {"step": "attribute_constraint", "delta_type": 0, "delta_color": 0.5},
               {"step": "camera_verification"}, {"step": "group_rerank", "theta": 0.5}, attribute_model="m")
    res = run_postprocess(inputs, cfg)
    assert [r["step"] for r in res.ablation] == ["ensemble", "camera_bias", "tracklet", "rerank",
                                                 "attribute_constraint", "camera_verification", "group_rerank"]
    maps = [r["mAP"] for r in res.ablation]
    assert maps[1] > maps[0], "camera-bias removal helps on camera-shifted features"
    assert maps[2] > maps[1], "tracklet features help on tracks"
    assert maps[3] > maps[2], "re-ranking helps"
    assert res.indices.shape == (len(inputs.query.pids), 20)
    assert len(ablation_table(res.ablation).splitlines()) == 8


def test_ablation_rows_share_the_query_gallery_products(monkeypatch):
    """The ablation ranks like the plain run, and WF's first pass reuses the camera_bias row's
    query x gallery distances: one product per image-level row, none again in the tracklet step."""
    import vreid.postprocess.tracklets as tracklets

    inputs = _city()
    cfg = _cfg({"step": "camera_bias"}, {"step": "tracklet"}, {"step": "rerank", "k1": 6, "k2": 2})
    plain = run_postprocess(inputs, cfg, with_ablation=False)
    calls = []
    real = tracklets.squared_distances
    monkeypatch.setattr(tracklets, "squared_distances", lambda a, b, **kw: calls.append(len(a)) or real(a, b, **kw))
    with_rows = run_postprocess(inputs, cfg)
    np.testing.assert_array_equal(plain.indices, with_rows.indices)
    np.testing.assert_array_equal(plain.distances, with_rows.distances)
    # pass 2 only: a few selected queries per track, never the whole query side
    assert calls and max(calls) < len(inputs.query.pids)


def test_cache_reuses_features_and_graph():
    inputs = _city()
    cache: dict = {}
    a = run_postprocess(inputs, _cfg({"step": "camera_bias"}, {"step": "rerank", "k1": 6, "k2": 2}), cache)
    graph = next(v for k, v in cache.items() if k[0] == "graph")
    b = run_postprocess(inputs, _cfg({"step": "camera_bias"}, {"step": "rerank", "k1": 5, "k2": 3}), cache)
    assert next(v for k, v in cache.items() if k[0] == "graph") is graph
    c = run_postprocess(inputs, _cfg({"step": "camera_bias"}, {"step": "rerank", "k1": 5, "k2": 3}))
    np.testing.assert_array_equal(b.indices, c.indices)
    assert not np.array_equal(a.distances, b.distances)


@pytest.mark.parametrize("steps,ens,match", [
    ([{"step": "rerank"}, {"step": "camera_bias"}], {}, "'camera_bias' .* must come before 'rerank' .*every feature"),
    ([{"step": "attribute_constraint"}], {}, "needs ensemble.attribute_model"),
    ([{"step": "bias_fusion"}], {}, "needs ensemble.camera_model"),
    ([{"step": "bias_fusion"}], {"camera_model": "m"}, "has task 'reid', expected 'camera'"),
    ([], {"models": ["nope"]}, "names 'nope', which has no feature store"),
    ([{"step": "camera_verification", "predicted": True}], {}, "needs ensemble.camera_model with a camera_prob"),
])
def test_bad_configs_fail_before_work(steps, ens, match):
    with pytest.raises(PostprocessError, match=match):
        run_postprocess(_city(), _cfg(*steps, **ens))


def test_parameters_out_of_range_and_unknown_steps():
    with pytest.raises(ValueError, match="lambda_value"):
        _cfg({"step": "rerank", "lambda_value": 2})
    with pytest.raises(ValueError, match="does not match any of the expected tags"):
        _cfg({"step": "unknown"})


def test_end_to_end_from_tiny_stores(tiny_stores, tiny_manifest):
    cfg, _ = tiny_stores
    cfg = cfg.model_copy(deep=True)
    cfg.postprocess.ensemble.models = ["attr"]
    cfg.postprocess.ensemble.camera_model = "cam"
    cfg.postprocess.steps = [*cfg.postprocess.steps[:-1],
                             PostprocessConfig.model_validate({"steps": [
                                 {"step": "camera_verification", "predicted": True},
                                 {"step": "group_rerank", "theta": 0.5}]}).steps[0],
                             cfg.postprocess.steps[-1]]
    out = postprocess_run(cfg)
    res = Path(out["out_dir"])
    inputs = load_inputs(cfg, tiny_manifest)
    nq, ng = len(inputs.query.pids), len(inputs.gallery.pids)
    ranks = read_submission(res / "track2.txt", num_gallery=ng, num_queries=nq)
    assert ranks.shape == (nq, min(100, ng))
    table = pq.read_table(res / "rankings.parquet")
    assert table.num_rows == nq and table.column("query_order").to_pylist() == list(range(nq))
    first = table.column("gallery_orders")[0].as_py()
    assert ranks[0].tolist() == first[: ranks.shape[1]]
    metrics = json.loads((res / "metrics.json").read_text())
    steps = [r["step"] for r in metrics["ablation"]]
    assert steps == ["ensemble", "camera_bias", "tracklet", "rerank", "attribute_constraint",
                     "camera_verification", "camera_verification", "group_rerank"]
    assert all(0 <= r["mAP"] <= 1 for r in metrics["ablation"])
    assert not list(res.parent.glob(".*tmp*")), "no half-written result directory left"
    # postprocess.comparison (configs/tiny.yaml): one row per variant, after the main list, same features
    rows = metrics["comparison"]
    assert [r["name"] for r in rows] == ["image-level RR", "AF-TRR", "WF-TRR"]
    assert [r["level"] for r in rows] == ["image", "track", "track"]
    assert rows[1]["steps"] == ["camera_bias", "tracklet", "rerank"]
    for r in rows:
        assert all(0 <= r[k] <= 1 for k in ("mAP", "mAP@100", "rank-1", "mINP"))
    assert out["comparison"] == rows
    # the WF-TRR variant is the main list's first three steps: its mAP is the main ablation's rerank row
    assert rows[2]["mAP"] == pytest.approx(metrics["ablation"][3]["mAP"])
    from vreid.report import write_report

    page = write_report(cfg.run_dir, tiny_manifest, cfg.postprocess.name, "cfg", {}).read_text()
    table = page.split("<h2>Re-ranking level comparison</h2>")[1].split("<h2>")[0]
    assert [table.count(f"<td>{n}</td>") for n in ("image-level RR", "AF-TRR", "WF-TRR")] == [1, 1, 1]
    assert f"<td>{100 * rows[2]['mAP']:.2f}</td>" in table


def test_bad_comparison_entry_fails_before_work_naming_it(tiny_stores):
    cfg, _ = tiny_stores
    cfg = cfg.model_copy(deep=True)
    cfg.postprocess.name = "bad-comparison"
    cfg.postprocess.comparison = PostprocessConfig.model_validate({"comparison": [
        {"name": "cv-first", "steps": [{"step": "camera_verification"}, {"step": "rerank", "level": "image"}]}],
    }).comparison
    with pytest.raises(Exception, match=r"postprocess.comparison 'cv-first': .*camera_verification.* must come"):
        postprocess_run(cfg)
    assert not (Path(cfg.run_dir) / "results" / "bad-comparison").exists(), "nothing written"
    with pytest.raises(ValueError, match=r"comparison entry 'typo': steps.0: Input tag 'rerankk'"):
        PostprocessConfig.model_validate({"comparison": [{"name": "typo", "steps": [{"step": "rerankk"}]}]})
    with pytest.raises(ValueError, match=r"comparison entries \['a'\] appear more than once"):
        PostprocessConfig.model_validate({"comparison": [{"name": "a", "steps": [{"step": "rerank"}]}] * 2})


def test_predicted_cameras_need_the_camera_models_class_ids():
    """camera_verification with predicted=true maps each camera_prob column to a camera id through
    the camera model's class_ids (model.json); without them (or with another count) it fails before
    any work, naming the model, instead of a KeyError / IndexError mid-run."""
    inputs = _city()
    cams = np.eye(3, dtype=np.float32)
    inputs.features["cam"] = inputs.features["m"]
    inputs.tasks["cam"] = "camera"
    inputs.extras["cam"] = {"camera_prob": (cams[inputs.query.camids], cams[inputs.gallery.camids])}
    cfg = _cfg({"step": "camera_verification", "predicted": True}, models=["m"], camera_model="cam")
    with pytest.raises(PostprocessError, match=r"camera model 'cam' records no class_ids in models/cam/model.json, "
                                               r"expected the camera id of each of its 3 camera_prob columns"):
        run_postprocess(inputs, cfg)
    inputs.camera_classes["cam"] = [7, 8]
    with pytest.raises(PostprocessError, match="camera model 'cam' records 2 class_ids"):
        run_postprocess(inputs, cfg)
    inputs.camera_classes["cam"] = [0, 1, 2]  # the classes are the labelled cameras: as with labels
    labelled = run_postprocess(inputs, _cfg({"step": "camera_verification"}, models=["m"]))
    np.testing.assert_array_equal(run_postprocess(inputs, cfg).indices, labelled.indices)

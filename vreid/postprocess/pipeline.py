"""The post-processing pipeline: ensemble, then the configured steps in order, with an ablation row
(metrics after each step) when ground truth exists. Pure: arrays in, arrays out.

Step kinds, in the order they must appear:
  feature steps  (camera_bias, tracklet, query_grouping, query_expansion) change the features;
  distance steps (rerank, bias_fusion, attribute_constraint, camera_verification, temporal_filter)
                 change the query x gallery distance D (Q, G), computed once from the features;
  group_rerank   changes the final top-K lists.
Nothing is (Q+G) x (Q+G): re-ranking works on the sparse k-NN graph, D is query x gallery.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vreid.config import PostprocessConfig
from vreid.errors import InputError
from vreid.eval import evaluate, evaluate_ranked
from vreid.postprocess.attribute_constraint import attribute_constraint
from vreid.postprocess.bias_fusion import bias_fusion
from vreid.postprocess.camera_bias import camera_whitening, remove_camera_mean
from vreid.postprocess.camera_verification import camera_verification
from vreid.postprocess.ensemble import ensemble_features, l2_normalize, pairwise_sq_distances
from vreid.postprocess.group_rerank import group_rerank
from vreid.postprocess.knn import knn_graph
from vreid.postprocess.query_expansion import dbscan_query_expansion, group_queries
from vreid.postprocess.ranking import topk_from_distances
from vreid.postprocess.rerank import FeatureDistance, rerank_from_graph
from vreid.postprocess.temporal_filter import temporal_filter
from vreid.postprocess.tracklets import (
    average_tracklet_features,
    fuse_with_tracklet,
    weighted_tracklet_features,
)

FEATURE_STEPS = ("camera_bias", "tracklet", "query_grouping", "query_expansion")
DISTANCE_STEPS = ("rerank", "bias_fusion", "attribute_constraint", "camera_verification", "temporal_filter")


class PostprocessError(InputError):
    """A post-processing config that cannot run on the given inputs."""


@dataclass
class Side:
    """Per-image arrays of the query or gallery side, rows in official list order."""

    image_ids: np.ndarray
    orders: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    trackids: np.ndarray
    timestamps: np.ndarray


@dataclass
class PostprocessInputs:
    """Everything the pipeline reads: loaded once (the actor), reused by every run."""

    query: Side
    gallery: Side
    features: dict[str, tuple[np.ndarray, np.ndarray]]  # model -> (query, gallery) features
    extras: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # model -> column -> (q, g)
    tasks: dict[str, str]
    weights: dict[str, float]
    camera_classes: dict[str, list[int]] = field(default_factory=dict)  # camera model -> class camids

    @property
    def has_ground_truth(self) -> bool:
        return bool((self.query.pids >= 0).all() and (self.gallery.pids >= 0).all())


@dataclass
class PostprocessResult:
    indices: np.ndarray  # (Q, K) gallery rows
    distances: np.ndarray  # (Q, K)
    ablation: list[dict[str, Any]]  # metrics after each step (with_ablation and ground truth)
    final: dict[str, Any] | None  # metrics of the final ranking (ground truth only)


def _check(cfg: PostprocessConfig, inputs: PostprocessInputs) -> list[str]:
    """Validate order, required stores and labels before any work; returns the identity models."""
    names = [s.step for s in cfg.steps]
    kinds = [0 if n in FEATURE_STEPS else 1 if n in DISTANCE_STEPS else 2 for n in names]
    if kinds != sorted(kinds):
        raise PostprocessError(f"steps {names}: feature steps {FEATURE_STEPS} must come before distance "
                               f"steps {DISTANCE_STEPS}, and group_rerank last")
    if names.count("rerank") > 1:
        raise PostprocessError("rerank appears more than once")
    ens = cfg.ensemble
    models = ens.models if ens.models is not None else [m for m, t in inputs.tasks.items() if t == "reid"]
    if not models:
        raise PostprocessError("no identity (task 'reid') feature store to rank with")
    for m in models:
        if m not in inputs.features:
            raise PostprocessError(f"ensemble.models names '{m}', which has no feature store "
                                   f"(stores: {sorted(inputs.features)})")
    unknown = set(ens.weights) - set(models)
    if unknown:
        raise PostprocessError(f"ensemble.weights names {sorted(unknown)}, not among the identity models {models}")
    needs = {
        "bias_fusion": [("camera_model", "camera"), ("orientation_model", "orientation")],
        "attribute_constraint": [("attribute_model", None)],
    }
    for step in cfg.steps:
        for fieldname, task in needs.get(step.step, []):
            model = getattr(ens, fieldname)
            if model is None:
                if step.step == "bias_fusion":
                    continue
                raise PostprocessError(f"step {step.step} needs ensemble.{fieldname} (a store with colour/type heads)")
            if model not in inputs.features:
                raise PostprocessError(f"step {step.step} needs the store of ensemble.{fieldname}='{model}', "
                                       f"which does not exist")
            if task is not None and inputs.tasks.get(model) != task:
                raise PostprocessError(f"ensemble.{fieldname}='{model}' has task '{inputs.tasks.get(model)}', "
                                       f"expected '{task}'")
        if step.step == "bias_fusion" and ens.camera_model is None and ens.orientation_model is None:
            raise PostprocessError("step bias_fusion needs ensemble.camera_model and/or ensemble.orientation_model")
        if step.step == "attribute_constraint":
            extra = inputs.extras.get(ens.attribute_model, {})
            if "color_prob" not in extra and "type_prob" not in extra:
                raise PostprocessError(f"step attribute_constraint: store '{ens.attribute_model}' has no "
                                       f"color_prob / type_prob columns (its model has no attribute heads)")
        if step.step in ("tracklet", "group_rerank") and (inputs.gallery.trackids < 0).any():
            raise PostprocessError(f"step {step.step} needs a track id for every gallery image; "
                                   f"{int((inputs.gallery.trackids < 0).sum())} have none")
        if step.step == "temporal_filter" and not np.isfinite(inputs.gallery.timestamps).any():
            raise PostprocessError("step temporal_filter needs gallery timestamps; the dataset has none")
        if step.step == "camera_verification" and step.predicted:
            cam = ens.camera_model
            if cam is None or "camera_prob" not in inputs.extras.get(cam, {}):
                raise PostprocessError("camera_verification with predicted=true needs ensemble.camera_model "
                                       "with a camera_prob column")
            classes, width = inputs.camera_classes.get(cam), inputs.extras[cam]["camera_prob"][0].shape[1]
            if classes is None or len(classes) != width:
                found = "records no class_ids" if classes is None else f"records {len(classes)} class_ids"
                raise PostprocessError(f"camera_verification with predicted=true: camera model '{cam}' {found} in "
                                       f"models/{cam}/model.json, expected the camera id of each of its {width} "
                                       "camera_prob columns")
    return models


def _metrics(name: str, inputs: PostprocessInputs, dist: np.ndarray | None = None,
             ranked: np.ndarray | None = None) -> dict[str, Any]:
    q, g = inputs.query, inputs.gallery
    if dist is not None:
        full = evaluate(dist, q.pids, g.pids, q.camids, g.camids)
        top = evaluate(dist, q.pids, g.pids, q.camids, g.camids, top_k_ap=100)
    else:
        full = evaluate_ranked(ranked, q.pids, g.pids, q.camids, g.camids)
        top = evaluate_ranked(ranked, q.pids, g.pids, q.camids, g.camids, top_k_ap=100)
    return {"step": name, **full.as_dict(), "mAP@100": float(top.mAP),
            "cmc": [round(float(c), 5) for c in full.cmc[:20]]}


def feature_state_key(cfg: PostprocessConfig) -> str:
    """What the features after the feature steps depend on (the k-NN graph cache key)."""
    payload = {"ensemble": cfg.ensemble.model_dump(mode="json"),
               "steps": [s.model_dump(mode="json") for s in cfg.steps if s.step in FEATURE_STEPS]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def ensemble(inputs: PostprocessInputs, cfg: PostprocessConfig, models: list[str]) -> tuple[np.ndarray, np.ndarray]:
    weights = [cfg.ensemble.weights.get(m, inputs.weights.get(m, 1.0)) for m in models]
    parts = []
    for side in (0, 1):
        feats = ensemble_features([inputs.features[m][side] for m in models], weights,
                                  divide_by_sqrt_n=cfg.ensemble.divide_by_sqrt_n)
        parts.append(l2_normalize(feats))
    return parts[0], parts[1]


def apply_feature_step(step, qf: np.ndarray, gf: np.ndarray, inputs: PostprocessInputs):
    q, g = inputs.query, inputs.gallery
    if step.step == "camera_bias":
        if step.method == "mean":
            both = remove_camera_mean(np.concatenate([qf, gf]), np.concatenate([q.camids, g.camids]), step.alpha)
            return both[: len(qf)], both[len(qf):]
        return (camera_whitening(qf, q.camids, step.la, ref_features=gf, ref_camids=g.camids),
                camera_whitening(gf, g.camids, step.la))
    if step.step == "tracklet":
        if step.method == "wf":
            track_ids, tf = weighted_tracklet_features(qf, gf, g.trackids, step.threshold, step.eps)
        else:
            track_ids, tf = average_tracklet_features(gf, g.trackids)
        return qf, fuse_with_tracklet(gf, g.trackids, track_ids, tf, step.beta)
    if step.step == "query_grouping":
        return group_queries(qf, step.theta)[1], gf
    return dbscan_query_expansion(qf, step.eps, step.min_samples)[1], gf


def prepare_cache(inputs: PostprocessInputs, cfg: PostprocessConfig, cache: dict, max_k: int) -> dict:
    """Fill ``cache`` with the feature state of ``cfg`` and its k-NN graph for k up to ``max_k``,
    so later runs (Tune trials) only do the sparse re-ranking work."""
    key = feature_state_key(cfg)
    cache[("max_k", key)] = max(max_k, cache.get(("max_k", key), 0))
    no_rerank = cfg.model_copy(update={"steps": [s for s in cfg.steps if s.step in FEATURE_STEPS]})
    run_postprocess(inputs, no_rerank, cache)
    qf, gf, _ = cache[("features", key)]
    if max_k > len(qf) + len(gf) - 1:
        raise PostprocessError(f"re-ranking needs k={max_k} neighbours but there are only "
                               f"{len(qf) + len(gf)} query + gallery images")
    if cache.get(("graph", key)) is None or cache[("graph", key)].k < max_k:
        cache[("graph", key)] = knn_graph(np.concatenate([qf, gf]), max_k)
    return cache


def run_postprocess(inputs: PostprocessInputs, cfg: PostprocessConfig, cache: dict | None = None,
                    with_ablation: bool = True) -> PostprocessResult:
    """Run the pipeline; ``cache`` (a dict kept by the caller) reuses the feature state and the
    k-NN graph across runs that share the ensemble and feature steps (Tune trials, the actor)."""
    models = _check(cfg, inputs)
    cache = cache if cache is not None else {}
    evaluate_steps = with_ablation and inputs.has_ground_truth
    key = feature_state_key(cfg)
    ablation: list[dict[str, Any]] = []
    feature_steps = [s for s in cfg.steps if s.step in FEATURE_STEPS]
    cached = cache.get(("features", key))
    if cached is not None and (cached[2] is not None or not evaluate_steps):
        qf, gf, cached_rows = cached
        ablation = list(cached_rows) if evaluate_steps else []
    else:
        qf, gf = ensemble(inputs, cfg, models)
        if evaluate_steps:
            ablation.append(_metrics("ensemble", inputs, pairwise_sq_distances(qf, gf)))
        for step in feature_steps:
            qf, gf = apply_feature_step(step, qf, gf, inputs)
            if evaluate_steps:
                ablation.append(_metrics(step.step, inputs, pairwise_sq_distances(qf, gf)))
        cache[("features", key)] = (qf, gf, list(ablation) if evaluate_steps else None)
    q, g = inputs.query, inputs.gallery
    dist = pairwise_sq_distances(qf, gf)
    ranked = None
    for step in cfg.steps:
        if step.step in FEATURE_STEPS:
            continue
        if step.step == "rerank":
            k = max(step.k1, step.k2 - 1)
            graph = cache.get(("graph", key))
            if graph is None or graph.k < k:
                graph = knn_graph(np.concatenate([qf, gf]), max(k, cache.get(("max_k", key), 0)))
                cache[("graph", key)] = graph
            dist = rerank_from_graph(graph, len(qf), step.k1, step.k2, step.lambda_value,
                                     distance_fn=FeatureDistance(np.concatenate([qf, gf])), query_gallery_dist=dist)
        elif step.step == "bias_fusion":
            ens = cfg.ensemble
            d_cam = pairwise_sq_distances(*inputs.features[ens.camera_model]) if ens.camera_model else None
            d_ori = pairwise_sq_distances(*inputs.features[ens.orientation_model]) if ens.orientation_model else None
            dist = bias_fusion(dist, d_cam, d_ori, step.lambda_camera, step.lambda_orientation)
        elif step.step == "attribute_constraint":
            extra = inputs.extras[cfg.ensemble.attribute_model]
            tq, tg = extra.get("type_prob", (None, None))
            cq, cg = extra.get("color_prob", (None, None))
            dist = attribute_constraint(dist, tq, tg, cq, cg, step.delta_type, step.delta_color)
        elif step.step == "camera_verification":
            qc, gc = q.camids, g.camids
            if step.predicted:
                classes = np.asarray(inputs.camera_classes[cfg.ensemble.camera_model])
                pq_, pg_ = inputs.extras[cfg.ensemble.camera_model]["camera_prob"]
                qc, gc = classes[pq_.argmax(1)], classes[pg_.argmax(1)]
            dist = camera_verification(dist, qc, gc, step.penalty)
        elif step.step == "temporal_filter":
            dist = temporal_filter(dist, q.timestamps, g.timestamps, step.tau)
        elif step.step == "group_rerank":
            k = min(cfg.top_k, dist.shape[1])
            ranked = group_rerank(topk_from_distances(dist, k)[0], dist, g.trackids, step.theta)
        if evaluate_steps:
            ablation.append(_metrics(step.step, inputs, dist if ranked is None else None, ranked))
    k = min(cfg.top_k, dist.shape[1])
    if ranked is None:
        indices, distances = topk_from_distances(dist, k)
    else:
        indices, distances = ranked, np.take_along_axis(dist, ranked, 1)
    final = None
    if inputs.has_ground_truth:
        final = ablation[-1] if evaluate_steps else _metrics("final", inputs, dist if ranked is None else None,
                                                             ranked)
    return PostprocessResult(indices, distances.astype(np.float32), ablation, final)


def ablation_table(rows: list[dict[str, Any]]) -> str:
    """The ablation as a fixed-width text table (one row per step, in order)."""
    cols = ["mAP", "mAP@100", "rank-1", "rank-5", "rank-10", "mINP"]
    lines = [f"{'step':22s}" + "".join(f"{c:>9s}" for c in cols)]
    for r in rows:
        lines.append(f"{r['step']:22s}" + "".join(f"{100 * r[c]:9.2f}" if c in r else f"{'':9s}" for c in cols))
    return "\n".join(lines)

"""The post-processing pipeline: ensemble, then the configured steps in order, with an ablation row
(metrics after each step) when ground truth exists. Pure: arrays in, arrays out.

It works on items (:mod:`vreid.postprocess.items`): the Q query images and the gallery items,
tracks at track level (001 §3.4 WF-TRR, 003) and images at image level. Steps come from the
registry (:mod:`vreid.postprocess.registry`), each at its stage: image features -> items
(tracklet) -> item features -> rerank -> distance steps on the (Q, T) item distance -> ranking
steps on the tiled top-K image lists. Nothing is (Q+G) x (Q+G): re-ranking works on the sparse
k-NN graph of the Q+T items, distances are query x item.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from vreid.config import PostprocessConfig
from vreid.eval import evaluate_ranked, evaluate_tracks
from vreid.postprocess.ensemble import ensemble_features, l2_normalize
from vreid.postprocess.items import GalleryItems, ItemState, Level, PostprocessInputs, Side, tile_ranking
from vreid.postprocess.knn import KNNGraph, knn_graph
from vreid.postprocess.kernels import squared_distances, topk
from vreid.postprocess.registry import STAGE_WHAT, PostprocessError, Stage, StepContext, load_steps

__all__ = ["PostprocessError", "PostprocessInputs", "PostprocessResult", "Side", "run_postprocess",
           "prepare_cache", "resolve_level", "feature_state_key", "image_ranking", "ablation_table",
           "FEATURE_STEPS", "check_comparison", "run_comparison"]

STEPS = load_steps()
FEATURE_STEPS = tuple(s.name for s in STEPS if s.stage < Stage.RERANK)


@dataclass
class PostprocessResult:
    indices: np.ndarray  # (Q, K) gallery rows
    distances: np.ndarray  # (Q, K)
    ablation: list[dict[str, Any]]  # metrics after each step (with_ablation and ground truth)
    final: dict[str, Any] | None  # metrics of the final ranking (ground truth only)
    level: Level = "image"


def resolve_level(cfg: PostprocessConfig, inputs: PostprocessInputs) -> Level:
    """``rerank.level`` (auto without a rerank step): track when a tracklet step builds the
    gallery tracks, image otherwise (e.g. VeRi-776 without tracks)."""
    names = [s.step for s in cfg.steps]
    rerank = next((s for s in cfg.steps if s.step == "rerank"), None)
    level = rerank.level if rerank is not None else "auto"
    has_tracks = bool((inputs.gallery.trackids >= 0).any())
    if level == "auto":
        return "track" if "tracklet" in names and has_tracks else "image"
    if level == "track" and "tracklet" not in names:
        raise PostprocessError("rerank.level: track needs a tracklet step before it (the AF / WF track features "
                               "are the gallery items)")
    if level == "track" and not has_tracks:
        raise PostprocessError("rerank.level: track, but no gallery image has a track id (use level image)")
    return level


def _check(cfg: PostprocessConfig, inputs: PostprocessInputs, level: Level) -> list[str]:
    """Order, stores, labels and options, before any work; returns the identity models."""
    names = [s.step for s in cfg.steps]
    for i, a in enumerate(cfg.steps):
        for b in cfg.steps[i + 1:]:
            sa, sb = STEPS.get(a.step), STEPS.get(b.step)
            if sb.stage < sa.stage:
                why = sa.order_reason or STAGE_WHAT[sa.stage]
                raise PostprocessError(f"steps {names}: '{b.step}' ({STAGE_WHAT[sb.stage]}) must come before "
                                       f"'{a.step}' ({why})")
    for name in set(names):
        if names.count(name) > 1 and STEPS.get(name).stage in (Stage.ITEMS, Stage.RERANK):
            raise PostprocessError(f"{name} appears more than once")
    ens = cfg.ensemble
    models = ens.models if ens.models is not None else [m for m, t in inputs.tasks.items() if t == "reid"]
    if not models:
        raise PostprocessError("no identity (task 'reid') feature store to rank with")
    for m in models:
        if m not in inputs.features:
            raise PostprocessError(f"ensemble.models names '{m}', which has no feature store "
                                   f"(stores: {sorted(inputs.features)})")
    for m in models:
        for side, feats in zip((inputs.query, inputs.gallery), inputs.features[m]):
            bad = np.flatnonzero(~np.isfinite(feats).all(axis=1))
            if bad.size and side is inputs.gallery:
                raise PostprocessError(f"track items {np.unique(side.trackids[bad])[:10].tolist()} have no finite "
                                       f"feature in store '{m}' (images {side.image_ids[bad][:5].tolist()}; -1: "
                                       "images without a track)")
            if bad.size:
                raise PostprocessError(f"query images {side.image_ids[bad][:10].tolist()} have no finite feature "
                                       f"in store '{m}'")
    unknown = set(ens.weights) - set(models)
    if unknown:
        raise PostprocessError(f"ensemble.weights names {sorted(unknown)}, not among the identity models {models}")
    for step_cfg in cfg.steps:
        step = STEPS.get(step_cfg.step)
        for need in step.needs:
            model = getattr(ens, need.field)
            if model is None:
                if need.optional:
                    continue
                raise PostprocessError(f"step {step.name} needs ensemble.{need.field}"
                                       + (" (a store with colour/type heads)" if need.columns else ""))
            if model not in inputs.features:
                raise PostprocessError(f"step {step.name} needs the store of ensemble.{need.field}='{model}', "
                                       "which does not exist")
            if need.task is not None and inputs.tasks.get(model) != need.task:
                raise PostprocessError(f"ensemble.{need.field}='{model}' has task '{inputs.tasks.get(model)}', "
                                       f"expected '{need.task}'")
            if need.columns and not set(need.columns) & set(inputs.extras.get(model, {})):
                raise PostprocessError(f"step {step.name}: store '{model}' has no {' / '.join(need.columns)} "
                                       "columns (its model has no attribute heads)")
        step.check(step_cfg, inputs, ens, level)
    return models


def _metrics(name: str, inputs: PostprocessInputs, ranked: np.ndarray) -> dict[str, Any]:
    """mAP / CMC / mINP and the AI City top-100 mAP of one ranking (Q, K) of gallery images."""
    q, g = inputs.query, inputs.gallery
    full = evaluate_ranked(ranked, q.pids, g.pids, q.camids, g.camids)
    top = evaluate_ranked(ranked, q.pids, g.pids, q.camids, g.camids, top_k_ap=100)
    return {"step": name, **full.as_dict(), "mAP@100": float(top.mAP),
            "cmc": [round(float(c), 5) for c in full.cmc[:20]]}


def _state_metrics(name: str, inputs: PostprocessInputs, state: ItemState) -> dict[str, Any]:
    """Metrics of the image ranking the state stands for: its ranked lists after a ranking
    step, else every image ranked by its item's distance (tracks tiled), evaluated from the
    (Q, T) item distance without a (Q, G) array (:func:`vreid.eval.evaluate_tracks`)."""
    if state.ranked is not None:
        return _metrics(name, inputs, state.ranked)
    if state.dist is not None:
        dist = state.dist
    elif state.gallery is state.gallery_images:  # image items: the distances WF's first pass reuses
        dist = state.image_distances()
    else:
        dist = squared_distances(state.query, state.gallery)
    q, g = inputs.query, inputs.gallery
    full, top = evaluate_tracks(dist, state.items.item_of_image, q.pids, g.pids, q.camids, g.camids,
                                also_top_k_ap=100)
    return {"step": name, **full.as_dict(), "mAP@100": float(top.mAP),
            "cmc": [round(float(c), 5) for c in full.cmc[:20]]}


def feature_state_key(cfg: PostprocessConfig, level: Level = "image", upto: int | None = None) -> str:
    """What the item features after the feature steps (the first ``upto`` of them) depend on:
    the key of their cache entry and of their k-NN graph."""
    steps = [s for s in cfg.steps if s.step in FEATURE_STEPS][:upto]
    payload = {"ensemble": cfg.ensemble.model_dump(mode="json"), "level": level,
               "steps": [s.model_dump(mode="json") for s in steps]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def ensemble(inputs: PostprocessInputs, cfg: PostprocessConfig, models: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-model L2-normalised features, weighted and concatenated (000/002), then L2-normalised;
    with ``divide_by_sqrt_n`` (002 code) the parts are divided by sqrt(n) instead and the
    concatenation is kept as it is (unit rows for unit weights, as in the VehicleNet code)."""
    ens = cfg.ensemble
    weights = [ens.weights.get(m, inputs.weights.get(m, 1.0)) for m in models]
    parts = []
    for side in (0, 1):
        feats = ensemble_features([inputs.features[m][side] for m in models], weights,
                                  divide_by_sqrt_n=ens.divide_by_sqrt_n)
        parts.append(feats if ens.divide_by_sqrt_n else l2_normalize(feats))
    return parts[0], parts[1]


def _graph_fn(cache: dict):
    def graph(state: ItemState, k: int) -> KNNGraph:
        key = ("graph", state.notes["key"])
        have = cache.get(key)
        if have is None or have.k < k:
            n = len(state.query) + len(state.gallery)
            k_all = max(k, cache.get(("max_k", state.notes["key"]), 0))
            if k_all > n - 1:
                raise PostprocessError(f"re-ranking needs k={k_all} neighbours but there are only {n} query + "
                                       "gallery items")
            have = cache[key] = knn_graph(np.concatenate([state.query, state.gallery]), k_all)
        return have
    return graph


def _feature_state(inputs: PostprocessInputs, cfg: PostprocessConfig, models: list[str], ctx: StepContext,
                   cache: dict, evaluate_steps: bool) -> tuple[ItemState, list[dict[str, Any]]]:
    """The item state after the feature steps (cached per feature-state key)."""
    key = feature_state_key(cfg, ctx.level)
    cached = cache.get(("features", key))
    if cached is not None and (cached[1] is not None or not evaluate_steps):
        state, rows = cached
        return state.features_only(), list(rows) if evaluate_steps else []
    qf, gf = ensemble(inputs, cfg, models)
    state = ItemState(GalleryItems.of_images(len(gf)), qf, gf, gf, notes={"key": feature_state_key(cfg, ctx.level, 0)})
    rows = [_state_metrics("ensemble", inputs, state)] if evaluate_steps else []
    feature_steps = [s for s in cfg.steps if s.step in FEATURE_STEPS]
    for i, step_cfg in enumerate(feature_steps):
        state = STEPS.get(step_cfg.step).apply(step_cfg, state, ctx)
        state.notes["key"] = feature_state_key(cfg, ctx.level, i + 1)
        if evaluate_steps:
            rows.append(_state_metrics(step_cfg.step, inputs, state))
    state = state.features_only()
    cache[("features", key)] = (state, list(rows) if evaluate_steps else None)
    return state.features_only(), rows


def image_ranking(state: ItemState, ctx: StepContext) -> tuple[np.ndarray, np.ndarray]:
    """The top-K gallery images of every query from the item distance: at track level each ranked
    track's images tiled, nearest to the query first."""
    k = min(ctx.top_k, len(ctx.inputs.gallery.pids))
    if state.items.level == "image":
        return topk(state.dist, k)
    return tile_ranking(state.dist, state.items, state.query, state.gallery_images, k)


def _context(inputs: PostprocessInputs, cfg: PostprocessConfig, level: Level, cache: dict) -> StepContext:
    return StepContext(inputs, cfg.ensemble, level, cfg.top_k, _graph_fn(cache))


def prepare_cache(inputs: PostprocessInputs, cfg: PostprocessConfig, cache: dict, max_k: int) -> dict:
    """Fill ``cache`` with the feature state of ``cfg`` and its k-NN graph for k up to ``max_k``,
    so later runs (Tune trials) only do the sparse re-ranking work."""
    level = resolve_level(cfg, inputs)
    models = _check(cfg, inputs, level)
    ctx = _context(inputs, cfg, level, cache)
    key = feature_state_key(cfg, level)
    cache[("max_k", key)] = max(max_k, cache.get(("max_k", key), 0))
    state, _ = _feature_state(inputs, cfg, models, ctx, cache, False)
    ctx.graph(state, max_k)
    return cache


def run_postprocess(inputs: PostprocessInputs, cfg: PostprocessConfig, cache: dict | None = None,
                    with_ablation: bool = True) -> PostprocessResult:
    """Run the pipeline; ``cache`` (a dict kept by the caller) reuses the feature state and the
    k-NN graph across runs that share the ensemble and feature steps (Tune trials, the actor)."""
    level = resolve_level(cfg, inputs)
    models = _check(cfg, inputs, level)
    cache = cache if cache is not None else {}
    evaluate_steps = with_ablation and inputs.has_ground_truth
    ctx = _context(inputs, cfg, level, cache)
    state, ablation = _feature_state(inputs, cfg, models, ctx, cache, evaluate_steps)
    state.dist = squared_distances(state.query, state.gallery)
    for step_cfg in cfg.steps:
        if step_cfg.step in FEATURE_STEPS:
            continue
        state = STEPS.get(step_cfg.step).apply(step_cfg, state, ctx)
        if evaluate_steps:
            ablation.append(_state_metrics(step_cfg.step, inputs, state))
    if state.ranked is None:
        indices, distances = image_ranking(state, ctx)
    else:
        indices = state.ranked
        distances = np.take_along_axis(state.dist[:, state.items.item_of_image], indices, 1)
    final = None
    if inputs.has_ground_truth:
        final = ablation[-1] if evaluate_steps else _state_metrics("final", inputs, state)
    return PostprocessResult(indices, distances.astype(np.float32), ablation, final, level)


def _comparison_configs(cfg: PostprocessConfig) -> list[PostprocessConfig]:
    """Each ``comparison`` entry as a config of its own: the main ensemble and top_k, its steps."""
    return [cfg.model_copy(update={"name": c.name, "steps": c.steps, "comparison": []}) for c in cfg.comparison]


def check_comparison(inputs: PostprocessInputs, cfg: PostprocessConfig) -> None:
    """Every comparison entry passes the main list's checks (order, stores, options), before any
    work; an error names the entry."""
    for c in _comparison_configs(cfg):
        try:
            _check(c, inputs, resolve_level(c, inputs))
        except PostprocessError as exc:
            raise PostprocessError(f"postprocess.comparison '{c.name}': {exc}") from None


def run_comparison(inputs: PostprocessInputs, cfg: PostprocessConfig, cache: dict | None = None
                   ) -> list[dict[str, Any]]:
    """The comparison variants on the same features (001 Table 1 in kind: image-level RR, AF-TRR,
    WF-TRR), one metrics row each (name, level, steps, mAP, ...); empty without ground truth.
    ``cache`` shares ensembles and k-NN graphs with the main run."""
    check_comparison(inputs, cfg)
    if not inputs.has_ground_truth:
        return []
    rows = []
    for c in _comparison_configs(cfg):
        res = run_postprocess(inputs, c, cache, with_ablation=False)
        rows.append({**res.final, "step": c.name, "name": c.name, "level": res.level,
                     "steps": [s.step for s in c.steps]})
    return rows


def ablation_table(rows: list[dict[str, Any]]) -> str:
    """The ablation as a fixed-width text table (one row per step, in order)."""
    cols = ["mAP", "mAP@100", "rank-1", "rank-5", "rank-10", "mINP"]
    lines = [f"{'step':22s}" + "".join(f"{c:>9s}" for c in cols)]
    for r in rows:
        lines.append(f"{r['step']:22s}" + "".join(f"{100 * r[c]:9.2f}" if c in r else f"{'':9s}" for c in cols))
    return "\n".join(lines)

"""Tracklet features: the gallery items of track-level post-processing (001 §3.4, 003 §3.2)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from vreid.postprocess.items import GalleryItems
from vreid.postprocess.registry import PostprocessError, Stage, Step, StepConfig, register
from vreid.postprocess.tracklets import average_tracklet_features, fuse_with_tracklet, weighted_tracklet_features


class TrackletStep(StepConfig):
    """Tracklet features (001/003): AF or WF per gallery track."""

    step: Literal["tracklet"] = "tracklet"
    method: Literal["wf", "af"] = Field("wf", description="weighted (001 eq. 4-5, 003) or average (001 eq. 3)")
    threshold: float = Field(0.6, gt=0, description="WF query selection on squared distance (003 code 0.6, "
                                                    "001 paper 0.2)")
    eps: float = Field(0.01, gt=0, description="WF weight W_j = 1/(A_j + eps) (001 eq. 4)")
    beta: float = Field(0.0, ge=0, le=1, description="image level only: fused f = beta f + (1-beta) t "
                                                     "(003 eq. 3, UDA: 0.0005); 0 = track feature only")


def track_features(cfg: TrackletStep, qf: np.ndarray, gf: np.ndarray, items: GalleryItems,
                   dist: np.ndarray | None = None) -> np.ndarray:
    """(T, d) AF or WF feature of every item of ``items`` (rows in item order); ``dist``: the
    (Q, G) squared distances of ``qf`` to ``gf`` when already computed (WF's first pass)."""
    codes = items.item_of_image
    if cfg.method == "wf":
        _, tf = weighted_tracklet_features(qf, gf, codes, cfg.threshold, cfg.eps, dist=dist)
    else:
        _, tf = average_tracklet_features(gf, codes)
    return tf


@register
class Tracklet(Step):
    name = "tracklet"
    config = TrackletStep
    stage = Stage.ITEMS
    source = "001 §3.4 eqs. 3-5 (AF, WF, WF-TRR); 003 §3.2-3.3 (WF, threshold 0.6 in code, eq. 3 fusion)"
    image_level = "every gallery image takes beta f + (1 - beta) t of its track (one-image tracks keep f)"
    track_level = "each track becomes one gallery item with its AF / WF feature; images without a track are " \
                  "one-image items"

    def check(self, cfg, inputs, ensemble, level):
        if level == "track" and cfg.beta > 0:
            raise PostprocessError(f"step tracklet: beta={cfg.beta} fuses image features, which only image-level "
                                   "post-processing ranks; at track level every track is one item with its "
                                   "track feature (set beta 0, or rerank.level: image)")
        qt = inputs.query.trackids[inputs.query.trackids >= 0]
        mixed = np.intersect1d(qt, inputs.gallery.trackids[inputs.gallery.trackids >= 0])
        if mixed.size:
            raise PostprocessError(f"step tracklet: tracks {mixed[:10].tolist()} mix query and gallery images; a "
                                   "query is one image (001: 'an independent tracklet which has one frame')")

    def apply(self, cfg, state, ctx):
        g = ctx.inputs.gallery
        items = GalleryItems.of_tracks(g.trackids)
        tf = track_features(cfg, state.query, state.gallery_images, items, state.held_image_distances())
        bad = np.flatnonzero(~np.isfinite(tf).all(axis=1))
        if bad.size:
            raise PostprocessError(f"step tracklet: track items {items.track_ids[bad][:10].tolist()} have no finite "
                                   "feature")
        if ctx.level == "track":
            state.items, state.gallery = items, tf
        else:
            fused = fuse_with_tracklet(state.gallery_images, items.item_of_image, np.arange(items.num_items), tf,
                                       cfg.beta)
            state.gallery = state.gallery_images = fused
        return state

"""k-reciprocal re-ranking over the query and gallery items (Zhong et al. 2017; 001 §3.4 and
003: at track level over the Q + T items, "WF-TRR")."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from vreid.postprocess.registry import Stage, Step, StepConfig, register
from vreid.postprocess.rerank import FeatureDistance, rerank_from_graph

# (k1, k2, lambda) when the config leaves them unset, per level.
LEVEL_DEFAULTS = {
    "track": (7, 2, 0.6),  # 003 track-level re-ranking
    "image": (20, 6, 0.3),  # Zhong et al. 2017 (003 image level in code: 50, 15)
}


class RerankStep(StepConfig):
    """k-reciprocal re-ranking (Zhong et al. 2017) over the items; unset k1 / k2 / lambda take the
    level's defaults: track 7 / 2 / 0.6 (003), image 20 / 6 / 0.3 (Zhong et al.)."""

    step: Literal["rerank"] = "rerank"
    level: Literal["track", "image", "auto"] = Field(
        "auto", description="items re-ranked: track = Q queries + T gallery tracks (001 WF-TRR, 003), image = Q + G "
                            "images (VeRi-776); auto = track when the gallery has tracks and a tracklet step runs")
    k1: int | None = Field(None, ge=1, description="null: 7 at track level (003), 20 at image level (Zhong et al.)")
    k2: int | None = Field(None, ge=1, description="null: 2 at track level (003), 6 at image level (Zhong et al.)")
    lambda_value: float | None = Field(None, ge=0, le=1, description="null: 0.6 at track level (003), 0.3 at "
                                                                     "image level (Zhong et al.)")

    def resolved(self, level: str) -> tuple[int, int, float]:
        """(k1, k2, lambda) at ``level``: the set values, the level's defaults for the others."""
        d = LEVEL_DEFAULTS[level]
        return (self.k1 if self.k1 is not None else d[0], self.k2 if self.k2 is not None else d[1],
                self.lambda_value if self.lambda_value is not None else d[2])


@register
class Rerank(Step):
    name = "rerank"
    config = RerankStep
    stage = Stage.RERANK
    source = "Zhong et al. 2017 steps 1-7; 001 §3.4 (WF-TRR); 003 (track level k1 7, k2 2, lambda 0.6)"
    image_level = "over the Q + G images"
    track_level = "over the Q queries and T track items; every image of a track takes its track's distance"
    order_reason = "it re-ranks from the item features: every feature step comes before it"

    def graph_k(self, cfg, level):
        k1, k2, _ = cfg.resolved(level)
        return max(k1, k2 - 1)

    def apply(self, cfg, state, ctx):
        k1, k2, lam = cfg.resolved(ctx.level)
        graph = ctx.graph(state, max(k1, k2 - 1))
        both = np.concatenate([state.query, state.gallery])
        state.dist = rerank_from_graph(graph, len(state.query), k1, k2, lam, distance_fn=FeatureDistance(both),
                                       query_gallery_dist=state.dist)
        return state

"""DBSCAN query expansion (seed 002 §IV): clustered queries replaced by their cluster mean."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vreid.postprocess.query_expansion import dbscan_query_expansion
from vreid.postprocess.registry import Stage, Step, StepConfig, register


class QueryExpansionStep(StepConfig):
    """DBSCAN query expansion (002): clustered queries replaced by their cluster mean."""

    step: Literal["query_expansion"] = "query_expansion"
    eps: float = Field(0.3, gt=0, description="DBSCAN radius on squared distance (002: tuned)")
    min_samples: int = Field(2, ge=1, description="not given in 002; 2 = any query pair within eps")


@register
class QueryExpansion(Step):
    name = "query_expansion"
    config = QueryExpansionStep
    stage = Stage.ITEM_FEATURES
    source = "002 §IV (query expansion with DBSCAN)"
    image_level = track_level = "query items only (queries are one-image items at both levels)"

    def apply(self, cfg, state, ctx):
        state.query = dbscan_query_expansion(state.query, cfg.eps, cfg.min_samples)[1]
        return state

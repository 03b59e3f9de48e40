"""Query grouping (seed 000 §3.3): queries closer than theta represented by their group mean."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vreid.postprocess.query_expansion import group_queries
from vreid.postprocess.registry import Stage, Step, StepConfig, register


class QueryGroupingStep(StepConfig):
    """Queries closer than theta are grouped and represented by the group mean (000)."""

    step: Literal["query_grouping"] = "query_grouping"
    theta: float = Field(0.3, gt=0, description="squared-distance threshold (000: tuned)")


@register
class QueryGrouping(Step):
    name = "query_grouping"
    config = QueryGroupingStep
    stage = Stage.ITEM_FEATURES
    source = "000 §3.3 (group re-ranking: query groups)"
    image_level = track_level = "query items only (queries are one-image items at both levels)"

    def apply(self, cfg, state, ctx):
        state.query = group_queries(state.query, cfg.theta)[1]
        return state

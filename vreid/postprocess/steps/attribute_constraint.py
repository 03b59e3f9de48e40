"""Attribute constraint (seed 000 §3.3 eq. 6)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vreid.postprocess.attribute_constraint import attribute_constraint
from vreid.postprocess.registry import Stage, Step, StepConfig, StoreNeed, register


class AttributeConstraintStep(StepConfig):
    """d + delta_t if predicted types differ, + delta_c if colours differ (000 eq. 6)."""

    step: Literal["attribute_constraint"] = "attribute_constraint"
    delta_type: float = Field(0.1, ge=0, description="000 eq. 6 delta_t: tuned, no paper value")
    delta_color: float = Field(0.1, ge=0, description="000 eq. 6 delta_c: tuned, no paper value")


@register
class AttributeConstraint(Step):
    name = "attribute_constraint"
    config = AttributeConstraintStep
    stage = Stage.DISTANCE
    source = "000 §3.3 eq. 6"
    image_level = "predicted type / colour of the query and of the gallery image (argmax of its probabilities)"
    track_level = "the argmax of the track's mean type / colour probabilities"
    order_reason = "before rerank its penalties would be replaced by the re-ranked feature distance"
    needs = (StoreNeed("attribute_model", None, ("color_prob", "type_prob")),)

    def apply(self, cfg, state, ctx):
        extra = ctx.inputs.extras[ctx.ensemble.attribute_model]
        probs = {}
        for attr in ("type", "color"):
            if f"{attr}_prob" in extra:
                pq, pg = extra[f"{attr}_prob"]
                probs[attr] = (pq, state.items.mean(pg))
            else:
                probs[attr] = (None, None)
        state.dist = attribute_constraint(state.dist, *probs["type"], *probs["color"], cfg.delta_type,
                                          cfg.delta_color)
        return state

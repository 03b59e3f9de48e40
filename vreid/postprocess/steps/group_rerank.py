"""Group re-ranking (seed 000 §3.3) on the final image lists."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vreid.postprocess.group_rerank import group_rerank
from vreid.postprocess.items import GalleryItems
from vreid.postprocess.registry import Stage, Step, StepConfig, register


class GroupRerankStep(StepConfig):
    """After ranking, insert the rest of a matched image's tracklet right after it (000)."""

    step: Literal["group_rerank"] = "group_rerank"
    theta: float = Field(0.5, gt=0, description="squared-distance threshold of a match (000: tuned)")


@register
class GroupRerank(Step):
    name = "group_rerank"
    config = GroupRerankStep
    stage = Stage.RANKING
    source = "000 §3.3 (group re-ranking)"
    image_level = "on the top-K images ranked by the image distance"
    track_level = "on the tiled top-K images, each carrying its track's distance (images without a track " \
                  "are one-image tracks)"
    order_reason = "it edits the final lists, after every distance step"

    def apply(self, cfg, state, ctx):
        from vreid.postprocess.pipeline import image_ranking

        tracks = GalleryItems.of_tracks(ctx.inputs.gallery.trackids).item_of_image
        ranked, _ = image_ranking(state, ctx)
        state.ranked = group_rerank(ranked, state.dist[:, state.items.item_of_image], tracks, cfg.theta)
        return state

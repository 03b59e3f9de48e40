"""Camera and orientation bias (seed 003 §3.3 eq. 4): D = D_r - l1 D_c - l2 D_o."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vreid.postprocess.bias_fusion import bias_fusion
from vreid.postprocess.kernels import squared_distances
from vreid.postprocess.registry import PostprocessError, Stage, Step, StepConfig, StoreNeed, register


class BiasFusionStep(StepConfig):
    """Camera and orientation bias: D = D_r - l1 D_c - l2 D_o (003)."""

    step: Literal["bias_fusion"] = "bias_fusion"
    lambda_camera: float = Field(0.1, ge=0, description="003 eq. 4 lambda1 (paper and code): 0.1")
    lambda_orientation: float = Field(0.05, ge=0, description="003 eq. 4 lambda2 (paper and code): 0.05")


@register
class BiasFusion(Step):
    name = "bias_fusion"
    config = BiasFusionStep
    stage = Stage.DISTANCE
    source = "003 §3.3 eq. 4 (released code: track_dist - 0.1 cam_dist - 0.05 view_dist)"
    image_level = "D_c, D_o between the query's and the gallery image's camera / orientation features"
    track_level = "D_c, D_o between the query's feature and the track's mean camera / orientation feature"
    order_reason = "before rerank its D_c / D_o terms would be replaced by the re-ranked feature distance"
    needs = (StoreNeed("camera_model", "camera", optional=True), StoreNeed("orientation_model", "orientation",
                                                                          optional=True))

    def check(self, cfg, inputs, ensemble, level):
        if ensemble.camera_model is None and ensemble.orientation_model is None:
            raise PostprocessError("step bias_fusion needs ensemble.camera_model and/or ensemble.orientation_model")

    def apply(self, cfg, state, ctx):
        blocks = []
        for model in (ctx.ensemble.camera_model, ctx.ensemble.orientation_model):
            if model is None:
                blocks.append(None)
                continue
            fq, fg = ctx.inputs.features[model]
            blocks.append(squared_distances(fq, state.items.mean(fg)))
        state.dist = bias_fusion(state.dist, blocks[0], blocks[1], cfg.lambda_camera, cfg.lambda_orientation)
        return state

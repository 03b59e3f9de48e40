"""Camera-bias removal / inter-camera fusion (seed 003 §3.2 eq. 2; released code's whitening)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from vreid.postprocess.camera_bias import camera_whitening, remove_camera_mean
from vreid.postprocess.registry import PostprocessError, Stage, Step, StepConfig, register


class CameraBiasStep(StepConfig):
    """Camera-bias removal / inter-camera fusion (003)."""

    step: Literal["camera_bias"] = "camera_bias"
    method: Literal["mean", "whitening"] = Field("mean", description="003 paper: mean; released code: whitening")
    alpha: float = Field(1.0, ge=0, le=1, description="f <- f - alpha * mean_c(f) (003 eq. 2)")
    la: float = Field(0.18, gt=0, description="whitening ridge P_c = (X_c'X_c + n_c la I)^-1 (003 code: 0.18)")
    average_raw: bool = Field(
        True, description="whitening: rank by the average of the raw and the whitened distances, as the 003 "
                          "released code does (false: the whitened distance alone)")


@register
class CameraBias(Step):
    name = "camera_bias"
    config = CameraBiasStep
    stage = Stage.IMAGE_FEATURES
    source = "003 §3.2 eq. 2 (mean); 003 released code ficfac (whitening, la 0.18, raw + fused average)"
    image_level = "per-camera statistics of the query and gallery images"
    track_level = "the same, on the images, before their tracks are built"

    def check(self, cfg, inputs, ensemble, level):
        for side, name in ((inputs.query, "query"), (inputs.gallery, "gallery")):
            bad = int((side.camids < 0).sum())
            if bad:
                raise PostprocessError(f"step camera_bias needs a camera id for every image; {bad} {name} images "
                                       "have none (-1)")

    def apply(self, cfg, state, ctx):
        q, g = ctx.inputs.query, ctx.inputs.gallery
        qf, gf = state.query, state.gallery_images
        if cfg.method == "mean":
            both = remove_camera_mean(np.concatenate([qf, gf]), np.concatenate([q.camids, g.camids]), cfg.alpha)
            nq, ng = both[: len(qf)], both[len(qf):]
        else:
            nq = camera_whitening(qf, q.camids, cfg.la, ref_features=gf, ref_camids=g.camids)
            ng = camera_whitening(gf, g.camids, cfg.la)
            if cfg.average_raw:
                # mean of two squared distances = squared distance of the concatenation / sqrt(2)
                scale = np.float32(1 / np.sqrt(2))
                nq = np.concatenate([qf, nq], axis=1) * scale
                ng = np.concatenate([gf, ng], axis=1) * scale
        state.query, state.gallery_images, state.gallery = nq, ng, ng
        return state

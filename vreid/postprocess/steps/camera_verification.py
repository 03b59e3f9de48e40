"""Camera verification (seed 002 §IV, seed 003 §3.3; code: +10 to same-camera pairs)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from vreid.postprocess.camera_verification import camera_verification
from vreid.postprocess.registry import PostprocessError, Stage, Step, StepConfig, StoreNeed, register


class CameraVerificationStep(StepConfig):
    """Same-camera gallery items pushed back (002/003; code: +10)."""

    step: Literal["camera_verification"] = "camera_verification"
    penalty: float = Field(10.0, ge=0, description="003 released code: distmat + 10 * same camera")
    predicted: bool = Field(False, description="camera ids from the camera model (ensemble.camera_model) instead "
                                               "of labels")


@register
class CameraVerification(Step):
    name = "camera_verification"
    config = CameraVerificationStep
    stage = Stage.DISTANCE
    source = "002 §IV; 003 §3.3 (released code: distmat + 10.0 * cam_matches)"
    image_level = "the query's camera against the gallery image's"
    track_level = "the query's camera against the track's (its images' most frequent label, or the argmax " \
                  "of their mean predicted probabilities)"
    order_reason = "before rerank its penalty would enter the k-reciprocal neighbourhoods and row maxima"

    def check(self, cfg, inputs, ensemble, level):
        if cfg.predicted:
            cam = ensemble.camera_model
            if cam is None or "camera_prob" not in inputs.extras.get(cam, {}):
                raise PostprocessError("step camera_verification with predicted: true needs ensemble.camera_model "
                                       "with a camera_prob column")
            classes, width = inputs.camera_classes.get(cam), inputs.extras[cam]["camera_prob"][0].shape[1]
            if classes is None or len(classes) != width:
                found = "records no class_ids" if classes is None else f"records {len(classes)} class_ids"
                raise PostprocessError(f"camera_verification with predicted=true: camera model '{cam}' {found} in "
                                       f"models/{cam}/model.json, expected the camera id of each of its {width} "
                                       "camera_prob columns")
            return
        nq, ng = int((inputs.query.camids < 0).sum()), int((inputs.gallery.camids < 0).sum())
        if nq or ng:
            raise PostprocessError(f"step camera_verification compares camera ids, but {nq} query and {ng} gallery "
                                   "images have none (-1; the AI City 2020 layout labels no query / test camera): "
                                   "set predicted: true to use the camera model's predictions "
                                   "(ensemble.camera_model)")

    def apply(self, cfg, state, ctx):
        inputs = ctx.inputs
        if cfg.predicted:
            classes = np.asarray(inputs.camera_classes[ctx.ensemble.camera_model])
            pq, pg = inputs.extras[ctx.ensemble.camera_model]["camera_prob"]
            qc, gc = classes[pq.argmax(1)], classes[state.items.mean(pg).argmax(1)]
        else:
            qc, gc = inputs.query.camids, state.items.mode(inputs.gallery.camids)
        state.dist = camera_verification(state.dist, qc, gc, cfg.penalty)
        return state

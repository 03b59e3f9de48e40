"""Temporal filter (seed 002 §IV "Temporal Annotation")."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from vreid.postprocess.registry import PostprocessError, Stage, Step, StepConfig, register
from vreid.postprocess.temporal_filter import temporal_filter


class TemporalFilterStep(StepConfig):
    """Push back gallery items whose time differs from the query's by more than tau (002)."""

    step: Literal["temporal_filter"] = "temporal_filter"
    tau: float = Field(3600.0, gt=0, description="seconds (002: dataset dependent, no paper value)")


@register
class TemporalFilter(Step):
    name = "temporal_filter"
    config = TemporalFilterStep
    stage = Stage.DISTANCE
    source = "002 §IV (temporal annotation)"
    image_level = "|t_q - t_g| > tau"
    track_level = "the query's time more than tau outside the track's time span [first, last frame]"
    order_reason = "before rerank its penalty would enter the k-reciprocal neighbourhoods and row maxima"

    def check(self, cfg, inputs, ensemble, level):
        if not np.isfinite(inputs.gallery.timestamps).any():
            raise PostprocessError("step temporal_filter needs gallery timestamps; the dataset has none")

    def apply(self, cfg, state, ctx):
        ts = ctx.inputs.gallery.timestamps
        start, end = state.items.reduce(ts, np.fmin), state.items.reduce(ts, np.fmax)
        state.dist = temporal_filter(state.dist, ctx.inputs.query.timestamps, start, cfg.tau, g_end=end)
        return state

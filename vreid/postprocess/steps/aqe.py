"""Average query expansion (fast-reid ``aqe``) on the query and gallery items."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from vreid.postprocess.knn import knn_graph
from vreid.postprocess.query_expansion import average_query_expansion
from vreid.postprocess.registry import Stage, Step, StepConfig, register


class AQEStep(StepConfig):
    """Average query expansion (fast-reid TEST.AQE, after Chum et al. 2007)."""

    step: Literal["aqe"] = "aqe"
    qe_times: int = Field(1, ge=1, description="rounds of expansion (fast-reid TEST.AQE.QE_TIME: 1)")
    qe_k: int = Field(5, ge=1, description="neighbours averaged, self included (fast-reid TEST.AQE.QE_K: 5)")
    alpha: float = Field(3.0, description="weight cos^alpha (fast-reid TEST.AQE.ALPHA: 3.0)")


@register
class AQE(Step):
    name = "aqe"
    config = AQEStep
    stage = Stage.ITEM_FEATURES
    source = "fast-reid evaluation/query_expansion.py aqe (defaults TEST.AQE: QE_TIME 1, QE_K 5, ALPHA 3.0)"
    image_level = "every query and gallery image expanded over the Q + G images"
    track_level = "every query and track item expanded over the Q + T items"

    def graph_k(self, cfg, level):
        return cfg.qe_k - 1

    def apply(self, cfg, state, ctx):
        nq = len(state.query)
        graph = ctx.graph(state, cfg.qe_k - 1)  # the shared k-NN graph of the items entering the step
        both = average_query_expansion(np.concatenate([state.query, state.gallery]),
                                       graph.indices[:, : cfg.qe_k], cfg.alpha)
        for _ in range(cfg.qe_times - 1):
            both = average_query_expansion(both, knn_graph(both, cfg.qe_k - 1).indices, cfg.alpha)
        state.query, state.gallery = both[:nq], both[nq:]
        if state.items.level == "image":
            state.gallery_images = state.gallery
        return state

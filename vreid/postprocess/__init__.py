"""Post-processing: ensemble, re-ranking and the seed papers' steps, as pure functions on arrays;
the items they run on (``items``: query images, gallery tracks or images), one registered step
object per step (``registry``, ``steps/``), the pipeline that chains them (``pipeline``) and the
Ray actor that serves it (``actor``)."""

from vreid.postprocess.knn import KNNGraph, knn_graph, knn_graph_from_blocks
from vreid.postprocess.rerank import (
    FeatureDistance,
    k_reciprocal_encode,
    k_reciprocal_rerank,
    k_reciprocal_rerank_distances,
    rerank_from_graph,
)

__all__ = [
    "FeatureDistance", "KNNGraph", "k_reciprocal_encode", "k_reciprocal_rerank", "k_reciprocal_rerank_distances",
    "knn_graph", "knn_graph_from_blocks", "rerank_from_graph",
]

"""Evaluation: mAP / CMC / mINP, the AI City top-100 mAP and the track2.txt submission."""

from vreid.eval.metrics import ReIDEvaluator, ReIDMetrics, evaluate, evaluate_ranked, evaluate_tracks
from vreid.eval.submission import TOP_K, read_submission, write_submission

__all__ = [
    "ReIDEvaluator",
    "ReIDMetrics",
    "evaluate",
    "evaluate_ranked",
    "evaluate_tracks",
    "TOP_K",
    "read_submission",
    "write_submission",
]

"""Models: timm backbone factory, IBN-a conversion, BNNeck / attribute / AGNet heads."""

from vreid.models.backbones import Backbone, build_backbone
from vreid.models.heads import (
    AGNetHead,
    AttributeHead,
    BNNeck,
    BNNeckHead,
    GeM,
    GlobalAvgPool,
    build_pooling,
)
from vreid.models.ibn import IBN, convert_ibn_a
from vreid.models.reid_model import (
    ORIENTATION_BINS,
    ReIDModel,
    build_model,
    load_weights,
    orientation_to_bin,
)

__all__ = [
    "AGNetHead",
    "AttributeHead",
    "BNNeck",
    "BNNeckHead",
    "Backbone",
    "GeM",
    "GlobalAvgPool",
    "IBN",
    "ORIENTATION_BINS",
    "ReIDModel",
    "build_backbone",
    "build_model",
    "build_pooling",
    "convert_ibn_a",
    "load_weights",
    "orientation_to_bin",
]

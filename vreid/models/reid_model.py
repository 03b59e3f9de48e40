"""The re-identification model: timm backbone + head, built by :func:`build_model`.

Forward (train mode) returns ``feat`` (f, pre-BN: triplet / center loss), ``feat_bn`` (f_bn),
``logits`` (classifier on f_bn: ID / ALS loss) and ``color_logits`` / ``type_logits`` for the
attribute and AGNet heads. Forward (eval mode) returns ``feature`` (the test feature: f_bn, or
the concatenation for the attribute and AGNet heads) and ``color_prob`` / ``type_prob``
(softmax) when the model has those heads.

The same model is the camera classifier (``task="camera"``, classes = training cameras) and the
orientation classifier (``task="orientation"``, 36 bins of 10°, :func:`orientation_to_bin`) of
seed 003 §3.3; their ``feature`` is their embedding f_bn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vreid.models.backbones import Backbone, build_backbone
from vreid.models.heads import ATTR_DIM, GEM_P, AGNetHead, AttributeHead, BNNeckHead, softmax_probs

TASKS = ("reid", "camera", "orientation")
HEADS = ("bnneck", "attribute", "agnet")
ORIENTATION_BINS = 36  # seed 003 §3.3: the angle (0-360) split into 36 bins of 10°


def orientation_to_bin(deg: Any, num_bins: int = ORIENTATION_BINS) -> Any:
    """Orientation in degrees -> bin index ``floor((deg mod 360) / (360 / num_bins))``.

    Accepts a float, a numpy array or a torch tensor; NaN (unknown) maps to -1. Returns an int
    for a scalar, an int64 array / tensor otherwise.
    """
    width = 360.0 / num_bins
    if isinstance(deg, torch.Tensor):
        d = deg.double()
        bins = torch.floor(torch.remainder(d, 360.0) / width).long().clamp_(0, num_bins - 1)
        return torch.where(torch.isnan(d), torch.full_like(bins, -1), bins)
    d = np.asarray(deg, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bins = np.clip(np.floor(np.mod(d, 360.0) / width), 0, num_bins - 1)
    bins = np.where(np.isnan(d), -1, bins).astype(np.int64)
    return int(bins) if bins.ndim == 0 else bins


class ReIDModel(nn.Module):
    """Backbone + head. ``config`` holds the :func:`build_model` arguments (to rebuild it from a
    checkpoint); ``feature_dim`` is the size of the eval-mode ``feature``, ``feat_dim`` the size
    of the train-mode ``feat``, ``num_classes`` the classifier's outputs."""

    def __init__(self, backbone: Backbone, head: nn.Module, task: str, config: dict[str, Any]):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.task = task
        self.config = config

    @property
    def feature_dim(self) -> int:
        """Size of the eval-mode ``feature`` (the test feature)."""
        return self.head.feature_dim

    @property
    def feat_dim(self) -> int:
        """Size of the train-mode ``feat`` (f: what ReIDLoss's center loss needs)."""
        return self.head.dim

    @property
    def num_classes(self) -> int:
        return self.head.neck.classifier.out_features

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.head(self.backbone(images))
        if self.training:
            return {k: v for k, v in out.items() if k != "feature"}
        probs = softmax_probs(out)
        if self.task == "camera":  # predicted camera ids for camera verification (002/003)
            probs["camera_prob"] = torch.softmax(out["logits"], dim=1)
        return {"feature": out["feature"], **probs}

    def reset_classifier(self, num_classes: int, init_weights: torch.Tensor | None = None) -> None:
        """Replace the ID classifier (two-stage learning stage II, seed 002; UDA pseudo-labels,
        seed 003), optionally initialised from ``init_weights`` ``(num_classes, dim)``."""
        self.head.neck.reset_classifier(num_classes, init_weights)
        self.config = {**self.config, "num_classes": num_classes}

    def freeze_stages(self, n: int) -> None:
        """Freeze the backbone stem and its first ``n`` stages (0: none; seed 001 MDL fine-tune:
        n = 2); see :meth:`Backbone.freeze_stages`."""
        self.backbone.freeze_stages(n)


def build_model(
    backbone: str,
    *,
    head: str = "bnneck",
    task: str = "reid",
    num_classes: int,
    input_size: Sequence[int],
    pretrained: bool = False,
    pretrained_path: str | None = None,
    num_colors: int = 0,
    num_types: int = 0,
    ibn: bool = False,
    last_stride: int = 1,  # BoT, seed 000 Fig. 1
    pooling: str = "avg",  # METHODS: GAP, GeM optional
    embedding_dim: int | None = None,
    attr_dim: int = ATTR_DIM,
    agnet_alpha: float = 0.0,
    gem_p: float = GEM_P,
    **timm_kwargs: Any,
) -> ReIDModel:
    """Build a :class:`ReIDModel`.

    Args:
        backbone: timm model name (``resnet50``, ``densenet161``, ``hrnet_w18``, ``resnest101e``,
            ``seresnext101_32x4d``, ``vit_base_patch16_224`` ...).
        head: ``bnneck`` (BoT), ``attribute`` (seed 000 type/colour FCs) or ``agnet`` (seed 004).
        task: ``reid`` | ``camera`` | ``orientation``; attribute heads need ``reid``.
        num_classes: classifier outputs (identities, cameras, or orientation bins).
        input_size: (height, width) of the input images; checked by a dry forward.
        pretrained: timm hub ImageNet weights (downloads; never in tests).
        pretrained_path: local ``.pth``/``.pt`` (``torch.load(weights_only=True)``) or
            ``.safetensors`` file: backbone weights in timm / torchvision / IBN-Net naming, a
            fast-reid checkpoint, or a full ``ReIDModel`` state dict
            (:mod:`vreid.models.pretrained`). A classifier for another number of classes stays
            at init; tensors of another architecture fail naming the first mismatching keys.
        num_colors, num_types: attribute classes (attribute and AGNet heads).
        ibn: IBN-a conversion (ResNet family). last_stride: 1 or 2.
        pooling: ``avg`` or ``gem`` (``avg`` only for ViT, whose map is the class token).
        embedding_dim: if set, a Linear maps the pooled feature to this size before the BNNeck.
        attr_dim: width of the seed-000 attribute features. agnet_alpha: α of 004 eq. 5.
        gem_p: initial GeM exponent. ``timm_kwargs``: passed to ``timm.create_model``.
    """
    config = {k: v for k, v in locals().items() if k not in ("timm_kwargs",)}
    config.update(timm_kwargs)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if head != "bnneck" and task != "reid":
        raise ValueError(f"head {head!r} needs task='reid', got task={task!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    bb = build_backbone(backbone, input_size, pretrained, last_stride, ibn, **timm_kwargs)
    if bb.family == "vit" and pooling != "avg":
        raise ValueError(f"pooling {pooling!r} does not apply to ViT (its feature is the token)")
    common = dict(pooling=pooling, embedding_dim=embedding_dim, gem_p=gem_p)
    if head == "bnneck":
        head_module: nn.Module = BNNeckHead(bb.out_channels, num_classes, **common)
    elif head == "attribute":
        head_module = AttributeHead(
            bb.out_channels, num_classes, num_colors, num_types, attr_dim=attr_dim, **common
        )
    else:
        head_module = AGNetHead(
            bb.out_channels, num_classes, num_colors, num_types, alpha=agnet_alpha, **common
        )
    model = ReIDModel(bb, head_module, task, config)
    if pretrained_path is not None:
        load_weights(model, pretrained_path)
    return model


def load_weights(model: ReIDModel, path: str | Path):
    """Load ``path`` into ``model`` (see ``pretrained_path`` of :func:`build_model` and
    :mod:`vreid.models.pretrained` for the layouts read); returns the load report."""
    from vreid.models.pretrained import load_pretrained

    return load_pretrained(model, path)

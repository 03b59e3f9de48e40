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

import sys
import warnings
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
            ``.safetensors`` file: either backbone weights in timm / IBN-Net naming, or a full
            ``ReIDModel`` state dict (keys ``backbone.*``, ``head.*``). Tensors whose shape does
            not match (e.g. a classifier for another number of classes) are skipped.
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


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pretrained_path {str(p)!r} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(p))
    else:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{p}: expected a state dict of tensors (optionally under 'state_dict')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: ReIDModel, path: str | Path) -> dict[str, Any]:
    """Load ``path`` into ``model`` (see ``pretrained_path`` of :func:`build_model`); a backbone
    file goes through :func:`vreid.models.pretrained.map_backbone_state` (IBN-Net, timm ...).
    Warns with the model tensors left at their initial value and the file's tensors not used;
    raises if nothing matches. Returns ``{"layout", "loaded", "missing", "unused"}``."""
    from vreid.models.pretrained import map_backbone_state

    state = _read_state_dict(path)
    if any(k.startswith("backbone.") for k in state):
        target: nn.Module = model
        layout = "vreid"
    else:
        target = model.backbone.model
        state, layout = map_backbone_state(state, target)
        filter_fn = getattr(sys.modules[type(target).__module__], "checkpoint_filter_fn", None)
        if layout == "timm" and filter_fn is not None:  # timm's own key / position-embedding adaptation (ViT)
            state = filter_fn(state, target)
    own = target.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(
            f"{path}: no tensor matches the model (read as layout {layout!r}; first keys in file: "
            f"{list(state)[:5]})"
        )
    target.load_state_dict(usable, strict=False)
    missing = sorted(k for k in own if k not in usable and not k.endswith("num_batches_tracked"))
    unused = sorted(k for k in state if k not in usable)
    for what, keys in (("model tensors not in the file (kept at init)", missing),
                       ("tensors of the file not used (absent from the model or of another shape)", unused)):
        if keys:
            warnings.warn(f"{path} ({layout}): {len(keys)} {what}: {keys[:8]}{' ...' if len(keys) > 8 else ''}",
                          stacklevel=2)
    return {"layout": layout, "loaded": len(usable), "missing": missing, "unused": unused}

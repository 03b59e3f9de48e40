"""``pretrained_path``: checkpoints of other toolboxes mapped onto a :class:`ReIDModel`.

One function per source key layout, each returning the file's tensors under this model's own
names (``backbone.model.*``, ``head.*``) plus the file keys it dropped on purpose:

- ``vreid``: a full ReIDModel state dict (a trained model of an earlier stage).
- ``fastreid``: a fast-reid ``Baseline`` checkpoint (``backbone.*`` as in its ResNet, with
  ``bn1.IN`` / ``bn1.BN`` for IBN-a, and an ``EmbeddingHead`` under ``heads.*``: ``bottleneck``
  = [1x1 conv to the embedding,] BN neck; classifier ``heads.weight`` or, in older releases,
  ``heads.classifier.weight``; GeM exponent ``heads.pool_layer.p``).
- ``ibn_net``: IBN-Net's released ImageNet checkpoints (Pan et al. 2018: ``resnet50_ibn_a``,
  ``resnet101_ibn_a`` ..., the files the BoT code of 000/001/003 starts from): torchvision keys
  with ``layerN.M.bn1.IN.*`` / ``bn1.BN.*``, the naming of :class:`vreid.models.ibn.IBN` on a
  timm ResNet; read as ``backbone`` once the model is checked to have IBN layers.
- ``backbone``: backbone weights alone in timm's naming, which torchvision ResNet checkpoints
  share (``conv1``, ``bn1``, ``layerN.i.*``, ``fc``); for an IBN-a model each plain ``bn1`` of
  stages 1-3 is split into the IN and BN halves as :meth:`IBN.from_batchnorm` does.

:func:`load_pretrained` checks the mapped tensors against the model: a tensor of another shape
or a name the model does not have means another architecture and fails naming the first such
keys; a classifier for another number of classes is left at init (stage II of 002, UDA of 003).
What stayed at init is returned and warned about.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vreid.models.ibn import IBN

StateDict = dict[str, torch.Tensor]
# classifier tensors whose shape follows the number of classes, not the architecture
CLASS_DEPENDENT = ("head.neck.classifier.weight", "head.color_classifier.weight", "head.type_classifier.weight",
                   "head.type_branch.neck.classifier.weight", "head.color_branch.neck.classifier.weight")
SHOWN_KEYS = 5  # mismatching keys named in an error


class PretrainedMismatch(ValueError):
    """A checkpoint whose tensors do not fit the model's architecture."""


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: the layout found, the model tensors loaded, those left
    at init, and the file keys the layout drops (e.g. an ImageNet ``fc``)."""

    layout: str
    loaded: list[str] = field(default_factory=list)
    at_init: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def from_vreid(state: StateDict, model: nn.Module) -> tuple[StateDict, list[str]]:
    """A ReIDModel state dict: the keys are already this model's."""
    return dict(state), []


def from_fastreid(state: StateDict, model: nn.Module) -> tuple[StateDict, list[str]]:
    """fast-reid ``Baseline``: ``backbone.X`` -> ``backbone.model.X``; ``heads.bottleneck`` ->
    [``head.embed`` (its bias-free 1x1 conv as a Linear),] ``head.neck.bn``; ``heads.weight`` /
    ``heads.classifier.weight`` -> ``head.neck.classifier.weight``; ``heads.pool_layer.p`` ->
    ``head.pool.p``. ``pixel_mean`` / ``pixel_std`` (its input normalisation) are dropped."""
    out: StateDict = {}
    dropped: list[str] = []
    neck = [k for k in state if k.startswith("heads.bottleneck.")]
    embedded = any(state[k].ndim == 4 for k in neck if k.endswith(".weight"))
    for key, value in state.items():
        if key.startswith("backbone."):
            out["backbone.model." + key.removeprefix("backbone.")] = value
        elif key.startswith("heads.bottleneck."):
            index, _, rest = key.removeprefix("heads.bottleneck.").partition(".")
            if embedded and index == "0":
                out["head.embed.weight"] = value.flatten(1)
            else:
                out["head.neck.bn." + rest] = value
        elif key in ("heads.weight", "heads.classifier.weight"):
            out["head.neck.classifier.weight"] = value
        elif key == "heads.pool_layer.p":
            out["head.pool.p"] = value.reshape(())
        else:
            dropped.append(key)
    return out, dropped


def from_backbone(state: StateDict, model: nn.Module) -> tuple[StateDict, list[str]]:
    """Backbone weights alone (timm / torchvision ResNet naming). timm's own key adaptation runs
    first where the family has one (ViT position embeddings); the ImageNet classifier is dropped;
    a plain ``bn1`` meets an IBN-a ``bn1.IN`` / ``bn1.BN`` by splitting its channels."""
    target = model.backbone.model
    filter_fn = getattr(sys.modules[type(target).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, target)
    own = target.state_dict()
    out: StateDict = {}
    dropped: list[str] = []
    ibn_prefixes = {name for name, m in target.named_modules() if isinstance(m, IBN)}
    for key, value in state.items():
        prefix, _, param = key.rpartition(".")
        if key not in own and prefix in ibn_prefixes:
            half = own[f"{prefix}.IN.weight"].shape[0]
            if param in ("weight", "bias"):
                out[f"{prefix}.IN.{param}"] = value[:half]
            if param in ("weight", "bias", "running_mean", "running_var"):
                out[f"{prefix}.BN.{param}"] = value[half:]
            elif param == "num_batches_tracked":
                out[f"{prefix}.BN.{param}"] = value
        elif key not in own and prefix in ("fc", "classifier", "head", "head.fc"):
            dropped.append(key)
        else:
            out[key] = value
    return {f"backbone.model.{k}": v for k, v in out.items()}, dropped


_IBN_NET_KEY = re.compile(r"^layer[1-4]\.\d+\.bn1\.(IN|BN)\.")


def from_ibn_net(state: StateDict, model: nn.Module) -> tuple[StateDict, list[str]]:
    """IBN-Net's own IBN-a checkpoint: the backbone naming, for a model built with ``ibn: true``."""
    if not any(isinstance(m, IBN) for m in model.modules()):
        raise PretrainedMismatch("the file is an IBN-Net (IBN-a) checkpoint but the backbone has no IBN layers: "
                                 "set `ibn: true` on the model")
    return from_backbone(state, model)


LAYOUTS: dict[str, Callable[[StateDict, nn.Module], tuple[StateDict, list[str]]]] = {
    "vreid": from_vreid, "fastreid": from_fastreid, "ibn_net": from_ibn_net, "backbone": from_backbone,
}


def detect_layout(state: StateDict) -> str:
    """``vreid`` (``backbone.model.*``), ``fastreid`` (``heads.*`` or ``backbone.*`` without
    ``.model``), ``ibn_net`` (top-level ``layerN.M.bn1.IN`` / ``.BN``), else ``backbone``."""
    keys = list(state)
    if any(k.startswith("backbone.model.") for k in keys):
        return "vreid"
    if any(k.startswith(("heads.", "backbone.")) for k in keys):
        return "fastreid"
    if any(_IBN_NET_KEY.match(k) for k in keys):
        return "ibn_net"
    return "backbone"


def read_state_dict(path: str | Path) -> StateDict:
    """Tensors of a ``.safetensors`` file or a ``torch.load(weights_only=True)`` file, unwrapped
    from ``state_dict`` / ``model`` / ``model_state_dict`` and from DataParallel's ``module.``."""
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
        raise ValueError(f"{p}: expected a state dict of tensors (optionally under 'state_dict' or 'model')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def load_pretrained(model: nn.Module, path: str | Path) -> LoadReport:
    """Load ``path`` into ``model`` through the function of its layout. Raises
    :class:`PretrainedMismatch` (a ValueError) naming the first keys of another architecture or,
    when nothing matches, the file's first keys; warns with the model tensors left at init."""
    state = read_state_dict(path)
    layout = detect_layout(state)
    mapped, dropped = LAYOUTS[layout](state, model)
    own = model.state_dict()
    wrong = [f"{k}: file {_shape(v)}, model {_shape(own[k])}" for k, v in mapped.items()
             if k in own and own[k].shape != v.shape and k not in CLASS_DEPENDENT]
    unknown = [k for k in mapped if k not in own]
    usable = {k: v for k, v in mapped.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise PretrainedMismatch(f"{path}: no tensor matches the model ({layout} layout; first keys in file: "
                         f"{list(state)[:SHOWN_KEYS]})")
    if wrong or unknown:
        parts = ([f"tensors of another shape: {wrong[:SHOWN_KEYS]}"] if wrong else []) + \
                ([f"keys the model does not have: {unknown[:SHOWN_KEYS]}"] if unknown else [])
        raise PretrainedMismatch(f"{path}: not a checkpoint of this architecture ({layout} layout, "
                                 f"{len(wrong) + len(unknown)} mismatching of {len(mapped)}); " + "; ".join(parts))
    model.load_state_dict(usable, strict=False)
    covers = "backbone." if layout in ("backbone", "ibn_net") else ""  # a backbone file says nothing of the head
    at_init = sorted(k for k in own if k.startswith(covers) and k not in usable and not k.endswith("num_batches_tracked"))
    report = LoadReport(layout, sorted(usable), at_init, dropped)
    if at_init:
        warnings.warn(f"{path} ({layout} layout): {len(at_init)} model tensors not in the file (kept at init): "
                      f"{at_init[:8]}{' ...' if len(at_init) > 8 else ''}", stacklevel=3)
    return report

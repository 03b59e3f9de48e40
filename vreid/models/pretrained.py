"""Checkpoint layouts for ``pretrained_path``: one function per source layout maps a file's
state dict onto the keys of the timm backbone (``Backbone.model``).

:func:`map_backbone_state` picks the first layout whose ``detect`` matches the file; a file
that matches none is taken as timm-named. Add a layout with :func:`register_layout`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vreid.models.ibn import IBN

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Layout:
    name: str
    detect: Callable[[State], bool]
    to_timm: Callable[[State, nn.Module], State]


LAYOUTS: list[Layout] = []


def register_layout(name: str, detect: Callable[[State], bool]):
    """Register ``fn(state, timm_model) -> state`` as the mapping of the layout ``detect`` finds."""
    def wrap(fn: Callable[[State, nn.Module], State]) -> Callable[[State, nn.Module], State]:
        LAYOUTS.append(Layout(name, detect, fn))
        return fn
    return wrap


_IBN_KEY = re.compile(r"^layer[1-4]\.\d+\.bn1\.(IN|BN)\.")


def _has_ibn(model: nn.Module) -> bool:
    return any(isinstance(m, IBN) for m in model.modules())


@register_layout("ibn_net", detect=lambda state: any(_IBN_KEY.match(k) for k in state))
def ibn_net_to_timm(state: State, model: nn.Module) -> State:
    """IBN-Net's released ImageNet checkpoints (Pan et al. 2018, XingangPan/IBN-Net:
    ``resnet50_ibn_a``, ``resnet101_ibn_a``, ``resnext101_ibn_a`` ...; also the copies the BoT code
    loads): keys as torchvision's ResNet with ``layerN.M.bn1.IN.*`` / ``bn1.BN.*`` in stages 1-3,
    which is the naming of :class:`vreid.models.ibn.IBN` on a timm ResNet. The ImageNet classifier
    ``fc.*`` is dropped. A model built without ``ibn: true`` cannot take these weights (error)."""
    if not _has_ibn(model):
        raise ValueError("the file is an IBN-Net (IBN-a) checkpoint but the backbone has no IBN layers: "
                         "set `ibn: true` on the model")
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def map_backbone_state(state: State, model: nn.Module) -> tuple[State, str]:
    """``state`` in the keys of timm ``model`` and the name of the layout it was read as."""
    for layout in LAYOUTS:
        if layout.detect(state):
            return layout.to_timm(state, model), layout.name
    return state, "timm"

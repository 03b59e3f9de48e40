"""Backbone factory on timm model names.

``build_backbone("resnet50", input_size=(320, 320), ibn=True)`` returns a :class:`Backbone` whose
forward gives the final feature map ``(B, C, h, w)``. Last stride 1 (BoT, seeds 000/001/003) per
family:

- ResNet family (timm ``ResNet``: resnet*, resnext*, seresnet*, seresnext*, resnest*): in the
  first block of ``layer4`` every stride-2 conv / pool gets stride 1 and a pure down-sampling
  AvgPool (``*d`` variants, ResNeSt) is removed; the final map doubles in each dimension.
- DenseNet: the pooling of ``transition3`` is removed (seed 000 keeps it for DenseNet161:
  pass ``last_stride=2`` there).
- HRNet: not applied (its branches are fused at fixed strides); a warning says so.
- ViT: not applicable; the feature is the class token (TransReID global branch, seed 003),
  returned as a ``(B, C, 1, 1)`` map.
- Other timm CNNs are accepted when ``forward_features`` gives a ``(B, C, h, w)`` map; last
  stride is not applied (warning).

IBN-a (``ibn=True``) is available for the ResNet family only (see :mod:`vreid.models.ibn`).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence

import timm
import torch
from timm.models.densenet import DenseNet
from timm.models.hrnet import HighResolutionNet
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from vreid.models.ibn import convert_ibn_a

VIT_MODULES = ("vision_transformer", "vision_transformer_hybrid", "deit")  # built at img_size
VIT_STAGES = 4  # ViT blocks are grouped into 4 "stages" for freeze_stages (CNN analogy)


class Backbone(nn.Module):
    """A timm model that returns its final feature map.

    Attributes: ``name`` (timm name), ``family`` (``resnet`` | ``densenet`` | ``hrnet`` | ``vit``
    | ``cnn``), ``out_channels``, ``feature_map_size`` ((h, w) for the build input size),
    ``input_size``, ``stem`` and ``stages`` (parameter-name prefixes used by
    :meth:`freeze_stages`; ``stages`` is None where not defined).
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        family: str,
        input_size: tuple[int, int],
        stem: list[str],
        stages: list[list[str]] | None,
    ):
        super().__init__()
        self.model = model
        self.name = name
        self.family = family
        self.input_size = input_size
        self.out_channels = int(model.num_features)
        self.stem = stem
        self.stages = stages
        self._frozen: tuple[str, ...] = ()
        self.feature_map_size = self._probe_feature_map()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.family == "vit":
            tokens = self.model.forward_features(x)
            return self.model.forward_head(tokens, pre_logits=True)[:, :, None, None]
        return self.model.forward_features(x)

    def _probe_feature_map(self) -> tuple[int, int]:
        """Dry forward of a zero image at the build input size: a size the network cannot take
        becomes a ValueError here instead of a failure in the middle of training."""
        h, w = self.input_size
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                param = next(self.model.parameters())
                out = self(torch.zeros(1, 3, h, w, dtype=param.dtype, device=param.device))
        except (RuntimeError, AssertionError, ValueError) as err:
            raise ValueError(
                f"backbone {self.name!r} cannot take input size {h}x{w} (height x width): {err}"
            ) from err
        finally:
            self.train(was_training)
        if out.ndim != 4 or out.shape[1] != self.out_channels:
            raise ValueError(
                f"backbone {self.name!r}: forward_features gave shape {tuple(out.shape)}, expected "
                f"(B, {self.out_channels}, h, w); this timm family is not supported"
            )
        return int(out.shape[2]), int(out.shape[3])

    def freeze_stages(self, n: int) -> None:
        """Freeze the stem and the first ``n`` stages (no gradients, BatchNorm statistics fixed);
        ``n = 0`` freezes nothing. Each call sets the frozen part anew, so a later call with a
        smaller ``n`` unfreezes (multi-domain learning fine-tune, seed 001: n = 2)."""
        if n == 0:
            self._frozen = ()
        elif self.stages is None:
            raise ValueError(f"freeze_stages is not defined for backbone family {self.family!r}")
        elif not 0 < n <= len(self.stages):
            raise ValueError(f"freeze_stages: n must be in [0, {len(self.stages)}], got {n}")
        else:
            self._frozen = tuple(self.stem + [p for stage in self.stages[:n] for p in stage])
        for name, param in self.model.named_parameters():
            param.requires_grad_(not _matches(name, self._frozen))
        self.train(self.training)

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        if mode and self._frozen:
            for name, module in self.model.named_modules():
                if isinstance(module, _BatchNorm) and _matches(name, self._frozen):
                    module.eval()
        return self


def _matches(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.5)
    hint = " For IBN-a give the plain ResNet name and ibn=True." if "ibn" in name.lower() else ""
    raise ValueError(
        f"unknown backbone {name!r}: not a timm model name. Close timm names: "
        f"{', '.join(close) if close else '(none)'}.{hint}"
    )


def _check_input_size(input_size: Sequence[int]) -> tuple[int, int]:
    if (
        len(input_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in input_size)
        or min(input_size) < 1
    ):
        raise ValueError(f"input_size must be (height, width) positive ints, got {input_size!r}")
    return int(input_size[0]), int(input_size[1])


def _family(model: nn.Module) -> str:
    if isinstance(model, ResNet):
        return "resnet"
    if isinstance(model, DenseNet):
        return "densenet"
    if isinstance(model, HighResolutionNet):
        return "hrnet"
    if isinstance(model, VisionTransformer):
        return "vit"
    return "cnn"


def _stem_and_stages(model: nn.Module, family: str) -> tuple[list[str], list[list[str]] | None]:
    children = [n for n, _ in model.named_children()]
    if family == "resnet":
        return ["conv1", "bn1"], [["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    if family == "densenet":
        feats = [n for n, _ in model.features.named_children()]
        first = feats.index("denseblock1")
        stages = [[f"features.denseblock{i}", f"features.transition{i}"] for i in (1, 2, 3)]
        stages.append(["features.denseblock4", "features.norm5"])
        return [f"features.{n}" for n in feats[:first]], stages
    if family == "hrnet":
        stem = [n for n in ("conv1", "bn1", "conv2", "bn2") if n in children]
        return stem, [["layer1"], ["transition1", "stage2"], ["transition2", "stage3"],
                      ["transition3", "stage4"]]
    if family == "vit":
        stem = [n for n in ("cls_token", "reg_token", "pos_embed", "patch_embed", "norm_pre")
                if hasattr(model, n)]
        depth = len(model.blocks)
        bounds = [round(i * depth / VIT_STAGES) for i in range(VIT_STAGES + 1)]
        stages = [[f"blocks.{b}" for b in range(lo, hi)] for lo, hi in zip(bounds, bounds[1:])]
        return stem, stages
    return [], None


def _resnet_last_stride_one(model: ResNet) -> None:
    block = model.layer4[0]
    for name, module in list(block.named_modules()):
        stride = getattr(module, "stride", None)
        if stride in (None, 1, (1, 1)) or next(module.children(), None) is not None:
            continue  # containers (the block keeps an informational ``stride``) are skipped
        if isinstance(module, nn.AvgPool2d) and module.kernel_size == module.stride:
            block.set_submodule(name, nn.Identity())  # pure 2x down-sampling (avg-down, ResNeSt)
        elif isinstance(module, (nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d)):
            module.stride = (1, 1) if isinstance(module, nn.Conv2d) else 1
        else:
            raise ValueError(
                f"last_stride=1: layer4.0.{name} ({type(module).__name__}) has stride {stride} "
                "and is not a conv or pool; this ResNet variant is not supported, use last_stride=2"
            )


def build_backbone(
    name: str,
    input_size: Sequence[int],
    pretrained: bool = False,
    last_stride: int = 1,  # BoT / seed 000 Fig. 1: last down-sampling removed
    ibn: bool = False,
    **timm_kwargs,
) -> Backbone:
    """Create timm model ``name`` without classifier and wrap it as a :class:`Backbone`.

    ``input_size`` is (height, width); ViTs are created at that ``img_size`` (position embeddings
    are resampled by timm when ``pretrained``). ``pretrained=True`` downloads timm hub weights
    (never in tests). ``timm_kwargs`` go to ``timm.create_model`` (e.g. ``drop_path_rate``).
    Raises ValueError for an unknown name (listing close timm names), an input size the network
    cannot take, ``ibn`` outside the ResNet family, or ``last_stride`` not in {1, 2}.
    """
    _check_name(name)
    size = _check_input_size(input_size)
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
    if ibn and pretrained:
        warnings.warn(
            f"{name!r}: pretrained with ibn=True converts plain ResNet ImageNet weights to IBN-a; the papers "
            "start from IBN-Net's own IBN-a checkpoints: give one as pretrained_path (with pretrained: false)",
            stacklevel=2,
        )
    if timm.models.is_model_in_modules(name, VIT_MODULES):
        timm_kwargs = {"img_size": size, **timm_kwargs}
    model = timm.create_model(name, pretrained=pretrained, num_classes=0, **timm_kwargs)
    family = _family(model)
    if family == "vit":
        patch = tuple(model.patch_embed.patch_size)
        if size[0] % patch[0] or size[1] % patch[1]:
            raise ValueError(
                f"backbone {name!r}: input size {size[0]}x{size[1]} is not a multiple of the "
                f"patch size {patch[0]}x{patch[1]}"
            )
    if ibn:
        if family != "resnet":
            raise ValueError(
                f"ibn=True needs a ResNet-family backbone (resnet*, resnext*, seresnet*, "
                f"seresnext*, resnest*); {name!r} is {type(model).__name__}"
            )
        convert_ibn_a(model)
    reduction = int(model.feature_info[-1]["reduction"]) if hasattr(model, "feature_info") else 1
    if last_stride == 1:
        if family == "resnet":
            _resnet_last_stride_one(model)
            reduction //= 2
        elif family == "densenet":
            model.features.transition3.pool = nn.Identity()
            reduction //= 2
        elif family != "vit":
            warnings.warn(
                f"last_stride=1 is not applied to {name!r} ({type(model).__name__}): "
                "only ResNet-family and DenseNet backbones support it",
                stacklevel=2,
            )
    if min(size) < reduction:
        raise ValueError(
            f"backbone {name!r}: input size {size[0]}x{size[1]} is smaller than the network's "
            f"total stride {reduction}"
        )
    stem, stages = _stem_and_stages(model, family)
    return Backbone(model, name, family, size, stem, stages)


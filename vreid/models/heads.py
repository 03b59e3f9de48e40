"""Pooling and heads on a backbone feature map ``(B, C, h, w)``.

Every head returns a dict with ``feat`` (f, the pooled, optionally embedded feature: triplet and
center loss), ``feat_bn`` (f_bn after the BNNeck), ``logits`` (identity / camera / orientation
classifier on f_bn) and ``feature`` (the test feature); attribute heads add ``color_logits``
and/or ``type_logits``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GEM_P = 3.0  # GeM initial exponent (Radenovic et al., TPAMI 2019)
GEM_EPS = 1e-6
CLASSIFIER_STD = 0.001  # BoT (Luo et al. 2019) classifier init
ATTR_DIM = 256  # width of the seed-000 type / colour FC features (not given in the paper)


class GlobalAvgPool(nn.Module):
    """Global average pooling (GAP): ``(B, C, h, w) -> (B, C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class GeM(nn.Module):
    """Generalised-mean pooling ``(mean_hw clamp(x, eps)^p)^(1/p)`` with a learnable p."""

    def __init__(self, p: float = GEM_P, eps: float = GEM_EPS):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


def build_pooling(name: str, gem_p: float = GEM_P) -> nn.Module:
    """``"avg"`` (GAP, the BoT default) or ``"gem"``."""
    if name == "avg":
        return GlobalAvgPool()
    if name == "gem":
        return GeM(gem_p)
    raise ValueError(f"pooling must be 'avg' or 'gem', got {name!r}")


def _frozen_bias_bn(dim: int) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(dim)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)
    return bn


def _classifier(dim: int, num_classes: int) -> nn.Linear:
    fc = nn.Linear(dim, num_classes, bias=False)
    nn.init.normal_(fc.weight, std=CLASSIFIER_STD)
    return fc


class BNNeck(nn.Module):
    """BNNeck (Luo et al. 2019; seeds 000 §3.1, 001 §3.1): ``f_bn = BN(f)`` with the BN bias
    frozen at zero, ``logits = W f_bn`` with a bias-free classifier."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = _frozen_bias_bn(dim)
        self.classifier = _classifier(dim, num_classes)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat_bn = self.bn(feat)
        return feat_bn, self.classifier(feat_bn)

    def reset_classifier(self, num_classes: int, init_weights: torch.Tensor | None = None) -> None:
        """New classifier for ``num_classes``; rows copied from ``init_weights``
        ``(num_classes, dim)`` when given (e.g. class centroids of f_bn)."""
        dim = self.bn.num_features
        fc = _classifier(dim, num_classes).to(self.bn.weight.device)
        if init_weights is not None:
            w = torch.as_tensor(init_weights)
            if tuple(w.shape) != (num_classes, dim):
                raise ValueError(
                    f"init_weights must have shape ({num_classes}, {dim}), got {tuple(w.shape)}"
                )
            with torch.no_grad():
                fc.weight.copy_(w)
        self.classifier = fc


class BNNeckHead(nn.Module):
    """Pool -> [Linear to ``embedding_dim``] -> BNNeck. The test feature is f_bn (BoT)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        pooling: str = "avg",
        embedding_dim: int | None = None,
        gem_p: float = GEM_P,
    ):
        super().__init__()
        self.pool = build_pooling(pooling, gem_p)
        # seed 000 §3.1: "features f are extracted by a fully-connected layer after ResNet50"
        self.embed = nn.Linear(in_channels, embedding_dim) if embedding_dim else nn.Identity()
        self.dim = embedding_dim or in_channels
        self.neck = BNNeck(self.dim, num_classes)
        self.feature_dim = self.dim

    def forward(self, fmap: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.embed(self.pool(fmap))
        feat_bn, logits = self.neck(feat)
        return {"feat": feat, "feat_bn": feat_bn, "logits": logits, "feature": feat_bn}


class _AttributeBranch(nn.Module):
    """FC -> BN (bias frozen) -> bias-free classifier; returns (feature, logits)."""

    def __init__(self, in_dim: int, attr_dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, attr_dim, bias=False)
        self.neck = BNNeck(attr_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.neck(self.fc(x))


class AttributeHead(BNNeckHead):
    """Attribute-guided network of seed 000 (§3.2, Fig. 2): after the BNNeck, one FC branch for
    vehicle type and one for colour, each with its classifier (CE losses weighted α, β, eq. 5).
    The test feature is the concatenation ``[f_bn, f_type, f_color]``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_colors: int,
        num_types: int,
        pooling: str = "avg",
        embedding_dim: int | None = None,
        gem_p: float = GEM_P,
        attr_dim: int = ATTR_DIM,
    ):
        super().__init__(in_channels, num_classes, pooling, embedding_dim, gem_p)
        if num_colors <= 0 and num_types <= 0:
            raise ValueError("the attribute head needs num_colors > 0 and/or num_types > 0")
        self.type_branch = _AttributeBranch(self.dim, attr_dim, num_types) if num_types else None
        self.color_branch = (
            _AttributeBranch(self.dim, attr_dim, num_colors) if num_colors else None
        )
        self.feature_dim = self.dim + attr_dim * ((num_types > 0) + (num_colors > 0))

    def forward(self, fmap: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(fmap)
        parts = [out["feat_bn"]]
        for key, branch in (("type", self.type_branch), ("color", self.color_branch)):
            if branch is not None:
                f_attr, logits = branch(out["feat_bn"])
                parts.append(f_attr)
                out[f"{key}_logits"] = logits
        out["feature"] = torch.cat(parts, dim=1)
        return out


class VerificationHead(nn.Module):
    """AGNet's verification network (seed 004 §III-D): the Square Layer ``f_v = (f_1 − f_2)²`` of
    two embeddings, then a 1x1 convolution (on a 1x1 map: a linear layer) to 2 logits
    ("different", "same"), a binary classification.

    ``forward(f)`` scores every pair of the batch at once, ``(B, B, 2)``, without building the
    ``(B, B, dim)`` differences: ``w·(f_i − f_j)² = w·f_i² + w·f_j² − 2 (w ⊙ f_i)·f_j``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, 2)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        w, b = self.fc.weight, self.fc.bias  # (2, dim), (2,)
        sq = feat.pow(2) @ w.t()  # (B, 2)
        cross = (feat[None] * w[:, None, :]) @ feat.t()  # (2, B, B)
        return sq[:, None, :] + sq[None, :, :] - 2.0 * cross.permute(1, 2, 0) + b


class AGNetHead(nn.Module):
    """Attribute-guided attention of AGNet (seed 004, §III-B/C).

    Attribute branch: ``M = softmax(conv1x1(GAP(f_r)))`` over channels (eq. 1), ``f_m = f_r ⊗ M``,
    pooled, BN, then colour / type classifiers (eq. 2). Category branch:
    ``f_attr = f_c ⊗ conv1x1(M)`` (eq. 3), ``f_cs = f_c + f_attr``, pooled (-> f), BNNeck (eq. 4).
    Both sub-branches start from the same backbone map (f_r = f_c). Test feature (eq. 5):
    ``[f_a, f_bn · (1 − α)]`` with f_a the BN'd attribute feature. In train mode the
    verification branch (§III-D, :class:`VerificationHead`) scores every pair of the batch on
    that feature (``verify_logits``), where ALS (eqs. 6-7) acts.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_colors: int,
        num_types: int,
        pooling: str = "avg",
        embedding_dim: int | None = None,
        gem_p: float = GEM_P,
        alpha: float = 0.0,  # eq. 5 feature weight; 004 gives no value, 0 = plain concatenation
    ):
        super().__init__()
        if num_colors <= 0 and num_types <= 0:
            raise ValueError("the AGNet head needs num_colors > 0 and/or num_types > 0")
        self.mask_conv = nn.Conv2d(in_channels, in_channels, kernel_size=1)  # eq. 1
        self.guide_conv = nn.Conv2d(in_channels, in_channels, kernel_size=1)  # eq. 3
        self.pool = build_pooling(pooling, gem_p)
        self.attr_pool = build_pooling(pooling, gem_p)
        self.embed = nn.Linear(in_channels, embedding_dim) if embedding_dim else nn.Identity()
        self.dim = embedding_dim or in_channels
        self.neck = BNNeck(self.dim, num_classes)
        self.attr_bn = _frozen_bias_bn(in_channels)
        self.color_classifier = _classifier(in_channels, num_colors) if num_colors else None
        self.type_classifier = _classifier(in_channels, num_types) if num_types else None
        self.alpha = alpha
        self.feature_dim = in_channels + self.dim
        self.verifier = VerificationHead(self.feature_dim)

    def forward(self, fmap: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = torch.softmax(self.mask_conv(fmap.mean(dim=(2, 3), keepdim=True)), dim=1)
        f_attr_branch = self.attr_bn(self.attr_pool(fmap * mask))
        f_cs = fmap + fmap * self.guide_conv(mask)
        feat = self.embed(self.pool(f_cs))
        feat_bn, logits = self.neck(feat)
        out = {"feat": feat, "feat_bn": feat_bn, "logits": logits}
        if self.color_classifier is not None:
            out["color_logits"] = self.color_classifier(f_attr_branch)
        if self.type_classifier is not None:
            out["type_logits"] = self.type_classifier(f_attr_branch)
        out["feature"] = torch.cat([f_attr_branch, feat_bn * (1.0 - self.alpha)], dim=1)
        if self.training:
            out["verify_logits"] = self.verifier(out["feature"])
        return out


def softmax_probs(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``color_prob`` / ``type_prob`` (softmax over the attribute logits present in ``out``)."""
    return {
        f"{key}_prob": F.softmax(out[f"{key}_logits"], dim=1)
        for key in ("color", "type")
        if f"{key}_logits" in out
    }

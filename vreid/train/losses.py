"""Training losses (pure PyTorch).

:class:`ReIDLoss` combines, on the train-mode outputs of :class:`vreid.models.ReIDModel`:
``L = w_id L_id + w_tri L_tri + β L_center + α L_type + β' L_color + λ3 L_ALS`` (seed 000 eqs. 4-5,
seed 004 eq. 8). Labels of -1 (unknown) are ignored by every classification term.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TRIPLET_MARGIN = 0.5  # seed 000 eq. 3; None = soft margin (seeds 001/003 eq. 1)
CENTER_WEIGHT = 5e-4  # β of seed 000 eq. 4 (seeds 001/003 drop the center loss: 0)
ATTR_WEIGHT = 1.0  # α = β = 1 for the type / colour CE (seed 000 eq. 5)
ALS_THETA = 0.1  # θ of seed 004 eq. 7 (not given in the paper)
ALS_ALPHA = 0.01  # α of seed 004 eq. 6 (not given in the paper)
ALS_BETA = 1.0  # β of seed 004 eq. 6 (not given in the paper)
# seed 004 eq. 8: λ1 (category), λ2 (colour + type), λ3 (ALS); use as ReIDLoss(..., **AGNET_WEIGHTS)
AGNET_WEIGHTS = {"id_weight": 0.5, "color_weight": 0.5, "type_weight": 0.5, "als_weight": 1.0}


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy with optional label smoothing ``q = (1 − ε) onehot + ε / K`` (BoT).
    Targets of -1 are ignored; a batch without any known target gives 0 (with a gradient)."""
    known = targets >= 0
    if not bool(known.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[known], targets[known], label_smoothing=label_smoothing)


def euclidean_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances ``(len(x), len(y))`` (squared distance clamped at 1e-12
    before the square root, so the gradient stays finite on the diagonal)."""
    sq = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1)[None, :] - 2.0 * x @ y.t()
    return sq.clamp(min=1e-12).sqrt()


def batch_hard_triplet(
    feat: torch.Tensor, labels: torch.Tensor, margin: float | None = TRIPLET_MARGIN
) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) on Euclidean distances, mean over anchors.

    d_ap = the farthest positive, d_an = the nearest negative of each anchor. With a margin m:
    ``[d_ap − d_an + m]_+`` (seed 000 eq. 3, m = 0.5); with ``margin=None`` the soft margin
    ``log(1 + exp(d_ap − d_an))`` (seeds 001/003 eq. 1). Anchors without a negative add 0.
    """
    dist = euclidean_distances(feat, feat)
    same = labels[:, None] == labels[None, :]
    d_ap = dist.masked_fill(~same, float("-inf")).max(dim=1).values
    d_an = dist.masked_fill(same, float("inf")).min(dim=1).values
    diff = d_ap - d_an
    if margin is None:
        return F.softplus(diff).mean()
    return F.relu(diff + margin).mean()


class CenterLoss(nn.Module):
    """Center loss (Wen et al. 2016; seed 000 eq. 2): ``½ ||f_j − c_{y_j}||²`` averaged over the
    batch (eq. 2 sums; the mean keeps β independent of the batch size). ``centers`` is a
    learnable ``(num_classes, feat_dim)`` parameter: give it to the optimizer."""

    def __init__(self, num_classes: int, feat_dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, feat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        known = labels >= 0
        if not bool(known.any()):
            return feat.sum() * 0.0
        diff = feat[known] - self.centers[labels[known]]
        return 0.5 * diff.pow(2).sum(dim=1).mean()


def class_attribute_table(
    labels: Sequence[int] | np.ndarray,
    attributes: Sequence[Sequence[int]] | np.ndarray,
    num_classes: int,
) -> torch.Tensor:
    """Per-class attributes ``(num_classes, A)`` for :class:`ALSLoss` from per-image ``labels``
    (class index per image) and ``attributes`` ``(N, A)`` (e.g. colour and type, -1 unknown):
    each entry is the most frequent known value of the class, -1 when none is known."""
    y = np.asarray(labels, dtype=np.int64).ravel()
    attr = np.asarray(attributes, dtype=np.int64).reshape(len(y), -1)
    table = np.full((num_classes, attr.shape[1]), -1, dtype=np.int64)
    for c in np.unique(y[(y >= 0) & (y < num_classes)]):
        rows = attr[y == c]
        for a in range(attr.shape[1]):
            known = rows[:, a][rows[:, a] >= 0]
            if len(known):
                values, counts = np.unique(known, return_counts=True)
                table[c, a] = values[np.argmax(counts)]
    return torch.from_numpy(table)


class ALSLoss(nn.Module):
    """Attribute-based label smoothing (seed 004 eqs. 6-7) on the identity logits.

    ``L = CE(q, y) + β Σ_i −ε_i log(α + q_i)`` with q = softmax(logits) and, for the sample of
    class y and each class i: ε_i = 1 − θ if i = y, θ if i ≠ y shares all attributes of y (eq. 7,
    "attr1 = attr2, id1 ≠ id2"), 0 otherwise; unknown attributes (-1) never match. The paper
    applies ALS in a pairwise verification branch; here the (sample, class) pairs play that role,
    which makes it a smoothing of the identity target toward vehicles sharing attributes.
    ``class_attributes``: ``(num_classes, A)`` integer table, see :func:`class_attribute_table`.
    """

    def __init__(
        self,
        class_attributes: torch.Tensor,
        theta: float = ALS_THETA,
        alpha: float = ALS_ALPHA,
        beta: float = ALS_BETA,
    ):
        super().__init__()
        table = torch.as_tensor(class_attributes, dtype=torch.long)
        if table.ndim != 2:
            raise ValueError(f"class_attributes must be (num_classes, A), got {tuple(table.shape)}")
        self.register_buffer("class_attributes", table)
        self.theta, self.alpha, self.beta = theta, alpha, beta

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != self.class_attributes.shape[0]:
            raise ValueError(
                f"ALS: logits have {logits.shape[1]} classes, class_attributes "
                f"{self.class_attributes.shape[0]}"
            )
        known = targets >= 0
        logits, targets = logits[known], targets[known]
        if len(targets) == 0:
            return logits.sum() * 0.0
        table = self.class_attributes
        own = table[targets]  # (B, A)
        share = ((own[:, None, :] == table[None, :, :]) & (own[:, None, :] >= 0)).all(dim=2)
        eps = self.theta * share.to(logits.dtype)
        eps[torch.arange(len(targets), device=logits.device), targets] = 1.0 - self.theta
        q = F.softmax(logits, dim=1)
        smooth = -(eps * torch.log(self.alpha + q)).sum(dim=1).mean()
        return F.cross_entropy(logits, targets) + self.beta * smooth


class ReIDLoss(nn.Module):
    """Total training loss on the train-mode output dict of ``ReIDModel``.

    ``L = id_weight·CE(logits) + triplet_weight·L_tri(feat) + center_weight·L_center
    + type_weight·CE(type_logits) + color_weight·CE(color_logits) + als_weight·L_ALS(logits)``

    Args:
        num_classes, feat_dim: classifier classes and size of ``feat`` (for the centers).
        triplet_margin: 0.5 (seed 000) or None for the soft margin (seeds 001/003).
        label_smoothing: ε of the ID cross-entropy (0 in seed 003).
        center_weight: β (seed 000: 5e-4; 0 disables the center loss and its parameters).
        center_on: ``"feat"`` (f, BoT and METHODS) or ``"feat_bn"`` (seed 000 §3.1 text).
        type_weight, color_weight: α, β of seed 000 eq. 5.
        als_class_attributes: enables ALS (seed 004) with this class attribute table;
            als_theta, als_alpha, als_beta: θ, α, β of 004 eqs. 6-7; als_weight: λ3 of eq. 8.
            For AGNet's eq. 8 weights pass ``**AGNET_WEIGHTS``.

    ``forward(outputs, targets, color=None, vtype=None)`` (per-image colour / type labels, named
    as the manifest columns, -1 unknown) returns ``(total, parts)`` with ``parts`` the detached
    unweighted terms (``id``, ``triplet``, ``center``, ``type``, ``color``, ``als`` as
    enabled). A model with colour / type logits needs those labels.
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        *,
        triplet_margin: float | None = TRIPLET_MARGIN,
        label_smoothing: float = 0.0,
        center_weight: float = CENTER_WEIGHT,
        center_on: str = "feat",
        id_weight: float = 1.0,
        triplet_weight: float = 1.0,
        type_weight: float = ATTR_WEIGHT,
        color_weight: float = ATTR_WEIGHT,
        als_class_attributes: torch.Tensor | None = None,
        als_theta: float = ALS_THETA,
        als_alpha: float = ALS_ALPHA,
        als_beta: float = ALS_BETA,
        als_weight: float = 1.0,
    ):
        super().__init__()
        if center_on not in ("feat", "feat_bn"):
            raise ValueError(f"center_on must be 'feat' or 'feat_bn', got {center_on!r}")
        self.triplet_margin = triplet_margin
        self.label_smoothing = label_smoothing
        self.center_weight = center_weight
        self.center_on = center_on
        self.center = CenterLoss(num_classes, feat_dim) if center_weight > 0 else None
        self.id_weight = id_weight
        self.triplet_weight = triplet_weight
        self.attr_weights = {"type": type_weight, "color": color_weight}
        self.als = (
            ALSLoss(als_class_attributes, als_theta, als_alpha, als_beta)
            if als_class_attributes is not None
            else None
        )
        self.als_weight = als_weight

    def forward(
        self,
        outputs: dict[str, torch.Tensor],
        targets: torch.Tensor,
        color: torch.Tensor | None = None,
        vtype: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, feat = outputs["logits"], outputs["feat"]
        parts = {"id": cross_entropy(logits, targets, self.label_smoothing)}
        total = self.id_weight * parts["id"]
        if self.triplet_weight:
            parts["triplet"] = batch_hard_triplet(feat, targets, self.triplet_margin)
            total = total + self.triplet_weight * parts["triplet"]
        if self.center is not None:
            parts["center"] = self.center(outputs[self.center_on], targets)
            total = total + self.center_weight * parts["center"]
        for key, labels, arg in (("type", vtype, "vtype"), ("color", color, "color")):
            if f"{key}_logits" not in outputs:
                continue
            if labels is None:
                raise ValueError(f"the model predicts {key}: pass {arg}= labels (-1 unknown)")
            parts[key] = cross_entropy(outputs[f"{key}_logits"], labels)
            total = total + self.attr_weights[key] * parts[key]
        if self.als is not None:
            parts["als"] = self.als(logits, targets)
            total = total + self.als_weight * parts["als"]
        return total, {k: v.detach() for k, v in parts.items()}

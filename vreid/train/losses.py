"""Training losses (pure PyTorch).

:class:`ReIDLoss` combines, on the train-mode outputs of :class:`vreid.models.ReIDModel`:
``L = w_id L_id + w_tri L_tri + β L_center + w_type L_type + w_color L_color + λ3 L_verify``
(seed 000 eqs. 4-5, seed 004 eq. 8). Labels of -1 (unknown) are ignored by every term. Default
weights are those of :class:`vreid.config.LossConfig` (one source for library and config).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vreid.config import LossConfig

DEFAULTS = LossConfig()  # the library's defaults are the config's


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
    feat: torch.Tensor, labels: torch.Tensor, margin: float | None = DEFAULTS.triplet_margin
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
    learnable ``(num_classes, feat_dim)`` parameter trained by its own optimiser, as BoT does
    (see :func:`vreid.train.optim.build_optimizers`), never by the model's."""

    def __init__(self, num_classes: int, feat_dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, feat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        known = labels >= 0
        if not bool(known.any()):
            return feat.sum() * 0.0
        diff = feat[known] - self.centers[labels[known]]
        return 0.5 * diff.pow(2).sum(dim=1).mean()


def verification_loss(
    pair_logits: torch.Tensor,
    labels: torch.Tensor,
    attributes: torch.Tensor | None = None,
    *,
    als: bool = DEFAULTS.als,
    theta: float = DEFAULTS.als_theta,
    alpha: float = DEFAULTS.als_alpha,
    beta: float = DEFAULTS.als_beta,
) -> torch.Tensor:
    """AGNet's verification loss (seed 004 §III-D, eqs. 6-7) over every pair i < j of the batch.

    ``pair_logits`` ``(B, B, 2)``: logits of "different" (0) and "same" (1) for each pair (the
    Square Layer head, :class:`vreid.models.heads.VerificationHead`); ``labels`` ``(B,)`` identity
    labels (-1 unknown: pairs with it are left out); ``attributes`` ``(B, A)`` (colour, type; -1
    unknown, never equal). Plain CE over the pairs, or with ``als``:
    ``ℓ = CE + β·mean(−ε log(α + q_target))`` with ε = 1 − θ for same-identity pairs, θ for
    different identities sharing every attribute ("attr1 = attr2, id1 ≠ id2"), 0 otherwise.
    """
    n = len(labels)
    i, j = torch.triu_indices(n, n, offset=1, device=labels.device)
    keep = (labels[i] >= 0) & (labels[j] >= 0)
    i, j = i[keep], j[keep]
    logits = pair_logits[i, j]
    if len(i) == 0:
        return pair_logits.sum() * 0.0
    same = labels[i] == labels[j]
    target = same.long()
    loss = F.cross_entropy(logits, target)
    if not als:
        return loss
    if attributes is None:
        share = torch.zeros_like(same)
    else:
        a, b = attributes[i], attributes[j]
        share = ((a == b) & (a >= 0)).all(dim=1)
    eps = torch.where(same, torch.full_like(logits[:, 0], 1.0 - theta),
                      torch.where(share, torch.full_like(logits[:, 0], theta), torch.zeros_like(logits[:, 0])))
    q = F.softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
    return loss + beta * (-(eps * torch.log(alpha + q))).mean()


class ReIDLoss(nn.Module):
    """Total training loss on the train-mode output dict of ``ReIDModel``.

    ``L = id_weight·CE(logits) + triplet_weight·L_tri(feat) + center_weight·L_center(feat)
    + type_weight·CE(type_logits) + color_weight·CE(color_logits)
    + verify_weight·L_verify(verify_logits)`` (seed 004 eq. 8 with λ1 = id_weight, λ2 =
    colour / type weights, λ3 = verify_weight).

    Args (defaults: :class:`vreid.config.LossConfig`):
        num_classes, feat_dim: classifier classes and size of ``feat`` (for the centers).
        triplet_margin: 0.5 (seed 000) or None for the soft margin (seeds 001/003).
        label_smoothing: ε of the ID cross-entropy (0 in seeds 000, 002, 003, 004).
        center_weight: β (seed 000: 5e-4; 0 disables the center loss and its parameters).
        center_on: ``"feat"`` (f, BoT and METHODS) or ``"feat_bn"`` (seed 000 §3.1 text).
        type_weight, color_weight: α, β of seed 000 eq. 5 (λ2 of 004 eq. 8).
        verify_weight: λ3 of 004 eq. 8, on the model's ``verify_logits`` (AGNet head);
            als, als_theta, als_alpha, als_beta: ALS of 004 eqs. 6-7 on that loss.

    ``forward(outputs, targets, color=None, vtype=None)`` (per-image colour / type labels, named
    as the manifest columns, -1 unknown) returns ``(total, parts)`` with ``parts`` the detached
    unweighted terms (``id``, ``triplet``, ``center``, ``type``, ``color``, ``verify`` as
    enabled). A model with colour / type logits needs those labels.
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        *,
        triplet_margin: float | None = DEFAULTS.triplet_margin,
        label_smoothing: float = DEFAULTS.label_smoothing,
        center_weight: float = DEFAULTS.center_weight,
        center_on: str = "feat",
        id_weight: float = DEFAULTS.id_weight,
        triplet_weight: float = DEFAULTS.triplet_weight,
        type_weight: float = DEFAULTS.type_weight,
        color_weight: float = DEFAULTS.color_weight,
        verify_weight: float = DEFAULTS.verify_weight,
        als: bool = DEFAULTS.als,
        als_theta: float = DEFAULTS.als_theta,
        als_alpha: float = DEFAULTS.als_alpha,
        als_beta: float = DEFAULTS.als_beta,
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
        self.verify_weight = verify_weight
        self.als = {"als": als, "theta": als_theta, "alpha": als_alpha, "beta": als_beta}

    @classmethod
    def from_config(cls, loss: LossConfig, num_classes: int, feat_dim: int) -> ReIDLoss:
        """The loss of one recipe stage (``StageConfig.loss``)."""
        fields = loss.model_dump(exclude={"center_lr"})
        return cls(num_classes, feat_dim, **fields)

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
        if self.verify_weight:
            if "verify_logits" not in outputs:
                raise ValueError("verify_weight > 0 needs the AGNet verification branch (head: agnet)")
            attrs = [a for a in (color, vtype) if a is not None]
            parts["verify"] = verification_loss(outputs["verify_logits"], targets,
                                                torch.stack(attrs, 1) if attrs else None, **self.als)
            total = total + self.verify_weight * parts["verify"]
        return total, {k: v.detach() for k, v in parts.items()}

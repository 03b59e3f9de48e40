"""Loss values against hand computations on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vreid.config import LossConfig
from vreid.train.losses import (
    CenterLoss,
    ReIDLoss,
    batch_hard_triplet,
    cross_entropy,
    euclidean_distances,
    verification_loss,
)

# four points on a line: ids 0 0 1 1 at x = 0, 1, 3, 5
FEAT = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [5.0, 0.0]])
LABELS = torch.tensor([0, 0, 1, 1])


def test_cross_entropy_label_smoothing_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    targets = torch.tensor([0, 2])
    eps, k = 0.1, 3
    logp = torch.log_softmax(logits, dim=1)
    q = torch.full((2, 3), eps / k)
    q[0, 0] += 1 - eps
    q[1, 2] += 1 - eps
    expected = -(q * logp).sum(1).mean()
    assert torch.allclose(cross_entropy(logits, targets, eps), expected)
    plain = -(logp[0, 0] + logp[1, 2]) / 2
    assert torch.allclose(cross_entropy(logits, targets), plain)


def test_cross_entropy_ignores_unknown_labels():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    assert torch.allclose(cross_entropy(logits, torch.tensor([0, -1])),
                          F.cross_entropy(logits[:1], torch.tensor([0])))
    none = cross_entropy(logits, torch.tensor([-1, -1]))
    assert none.item() == 0.0
    none.backward()


def test_euclidean_distances():
    d = euclidean_distances(FEAT, FEAT)
    assert torch.allclose(d, torch.cdist(FEAT, FEAT), atol=1e-5)


def test_batch_hard_triplet_margin_by_hand():
    # anchor: (hardest positive, hardest negative) = (1, 3), (1, 2), (2, 2), (2, 4)
    expected = (0.0 + 0.0 + 0.5 + 0.0) / 4
    assert batch_hard_triplet(FEAT, LABELS, margin=0.5).item() == pytest.approx(expected, abs=1e-5)
    assert batch_hard_triplet(FEAT, LABELS, margin=2.5).item() == pytest.approx(
        (0.5 + 1.5 + 2.5 + 0.5) / 4, abs=1e-5
    )


def test_batch_hard_triplet_soft_margin_by_hand():
    sp = lambda z: math.log1p(math.exp(z))  # noqa: E731
    expected = (sp(1 - 3) + sp(1 - 2) + sp(2 - 2) + sp(2 - 4)) / 4
    assert batch_hard_triplet(FEAT, LABELS, margin=None).item() == pytest.approx(expected, abs=1e-5)


def test_batch_hard_triplet_gradient_is_finite():
    feat = FEAT.clone().requires_grad_(True)
    batch_hard_triplet(feat, LABELS, margin=None).backward()
    assert torch.isfinite(feat.grad).all() and feat.grad.abs().sum() > 0


def test_center_loss_by_hand():
    loss = CenterLoss(num_classes=2, feat_dim=2)
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[0.0, 0.0], [4.0, 0.0]]))
    # squared distances to own centre: 0, 1, 1, 1 -> 0.5 * mean
    assert loss(FEAT, LABELS).item() == pytest.approx(0.5 * 3 / 4)
    loss(FEAT, LABELS).backward()
    assert loss.centers.grad.abs().sum() > 0


def test_verification_loss_als_by_hand():
    """004 eqs. 6-7 on the pairs i < j: ε = 1 − θ same id, θ different id with the same colour and
    type, 0 otherwise; ℓ = CE + β mean(−ε log(α + q_target))."""
    torch.manual_seed(0)
    logits = torch.randn(4, 4, 2)
    labels = torch.tensor([0, 0, 1, 2])
    attrs = torch.tensor([[1, 3], [1, 3], [1, 3], [2, 3]])  # colour, type
    theta, alpha, beta = 0.2, 0.05, 0.7
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    # (0,1) same id; (0,2) (1,2) different ids, same attributes; the rest differ in colour
    eps = {(0, 1): 0.8, (0, 2): 0.2, (1, 2): 0.2}
    ce, smooth = [], []
    for i, j in pairs:
        y = int(labels[i] == labels[j])
        logp = torch.log_softmax(logits[i, j], 0)
        ce.append(-logp[y])
        smooth.append(-eps.get((i, j), 0.0) * torch.log(alpha + logp[y].exp()))
    expected = torch.stack(ce).mean() + beta * torch.stack(smooth).mean()
    got = verification_loss(logits, labels, attrs, theta=theta, alpha=alpha, beta=beta)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(verification_loss(logits, labels, attrs, als=False), torch.stack(ce).mean(), atol=1e-6)
    # unknown identities leave their pairs out; unknown attributes never match
    part = verification_loss(logits, torch.tensor([0, 0, -1, 2]), attrs, als=False)
    assert torch.allclose(part, torch.stack([ce[0], ce[2], ce[4]]).mean(), atol=1e-6)
    blind = verification_loss(logits, labels, torch.full((4, 2), -1), theta=theta, alpha=alpha, beta=beta)
    no_share = torch.stack(ce).mean() + beta * smooth[0] / 6
    assert torch.allclose(blind, no_share, atol=1e-6)


def test_reid_loss_defaults_are_the_config_defaults():
    loss, cfg = ReIDLoss(3, 4), LossConfig()
    assert loss.label_smoothing == cfg.label_smoothing and loss.triplet_margin == cfg.triplet_margin
    assert loss.center_weight == cfg.center_weight and loss.verify_weight == cfg.verify_weight
    assert loss.als == {"als": cfg.als, "theta": cfg.als_theta, "alpha": cfg.als_alpha, "beta": cfg.als_beta}
    agnet = ReIDLoss.from_config(LossConfig(id_weight=0.5, color_weight=0.5, type_weight=0.5, verify_weight=1.0),
                                 3, 4)
    assert (agnet.id_weight, agnet.attr_weights, agnet.verify_weight) == (0.5, {"type": 0.5, "color": 0.5}, 1.0)


def test_agnet_eq8_total_counts_cross_entropy_once():
    torch.manual_seed(1)
    out = {"feat": torch.randn(4, 6), "feat_bn": torch.randn(4, 6), "logits": torch.randn(4, 3),
           "color_logits": torch.randn(4, 2), "type_logits": torch.randn(4, 2),
           "verify_logits": torch.randn(4, 4, 2)}
    pids, color, vtype = torch.tensor([0, 0, 1, 2]), torch.tensor([1, 1, 0, 1]), torch.tensor([0, 0, 1, 1])
    loss = ReIDLoss(3, 6, id_weight=0.5, color_weight=0.5, type_weight=0.5, verify_weight=1.0,
                    label_smoothing=0.0, triplet_weight=0.0)
    total, parts = loss(out, pids, color=color, vtype=vtype)
    assert set(parts) == {"id", "color", "type", "verify"}
    assert parts["id"].item() == pytest.approx(F.cross_entropy(out["logits"], pids).item(), abs=1e-6)
    expected = 0.5 * parts["id"] + 0.5 * (parts["color"] + parts["type"]) + parts["verify"]
    assert torch.allclose(total, expected)
    assert parts["verify"].item() == pytest.approx(verification_loss(
        out["verify_logits"], pids, torch.stack([color, vtype], 1)).item(), abs=1e-6)
    with pytest.raises(ValueError, match="agnet"):
        loss({k: v for k, v in out.items() if k != "verify_logits"}, pids, color=color, vtype=vtype)


def test_reid_loss_total_is_the_weighted_sum_of_parts():
    torch.manual_seed(0)
    feat = torch.randn(4, 6, requires_grad=True)
    out = {
        "feat": feat,
        "feat_bn": feat * 2,
        "logits": torch.randn(4, 3, requires_grad=True),
        "color_logits": torch.randn(4, 2, requires_grad=True),
    }
    pids = torch.tensor([0, 0, 1, 1])
    loss = ReIDLoss(3, 6, label_smoothing=0.1, color_weight=0.3, center_weight=5e-4)
    total, parts = loss(out, pids, color=torch.tensor([1, 1, 0, -1]))
    assert set(parts) == {"id", "triplet", "center", "color"}
    expected = parts["id"] + parts["triplet"] + 5e-4 * parts["center"] + 0.3 * parts["color"]
    assert torch.allclose(total.detach(), expected)
    assert parts["id"].item() == pytest.approx(cross_entropy(out["logits"], pids, 0.1).item())
    total.backward()
    assert feat.grad is not None and loss.center.centers.grad is not None
    with pytest.raises(ValueError, match="color="):
        loss(out, pids)


def test_reid_loss_seed_003_recipe_and_center_on_feat_bn():
    out = {"feat": FEAT, "feat_bn": FEAT * 0, "logits": torch.zeros(4, 2)}
    total, parts = ReIDLoss(2, 2, triplet_margin=None, center_weight=0.0)(out, LABELS)
    assert set(parts) == {"id", "triplet"}
    assert parts["triplet"].item() == pytest.approx(batch_hard_triplet(FEAT, LABELS, None).item())
    on_bn = ReIDLoss(2, 2, center_on="feat_bn", center_weight=5e-4)
    with torch.no_grad():
        on_bn.center.centers.zero_()
    assert on_bn(out, LABELS)[1]["center"].item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="center_on"):
        ReIDLoss(2, 2, center_on="logits")

"""Loss values against hand computations on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vreid.train.losses import (
    ALSLoss,
    CenterLoss,
    ReIDLoss,
    batch_hard_triplet,
    class_attribute_table,
    cross_entropy,
    euclidean_distances,
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


def test_class_attribute_table_majority_and_unknown():
    labels = [0, 0, 0, 1, 2, 2]
    attrs = [[1, 5], [1, -1], [2, 5], [-1, -1], [3, 0], [3, 0]]
    table = class_attribute_table(labels, attrs, num_classes=4)
    assert table.tolist() == [[1, 5], [-1, -1], [3, 0], [-1, -1]]


def test_als_loss_by_hand():
    table = torch.tensor([[0, 1], [0, 1], [1, 1], [-1, -1]])
    logits = torch.tensor([[1.0, 0.5, -0.5, 0.0], [0.0, 0.0, 2.0, 1.0]])
    targets = torch.tensor([0, 2])
    theta, alpha, beta = 0.2, 0.05, 0.7
    q = torch.softmax(logits, dim=1)
    # sample 0 (class 0): class 1 shares both attributes -> eps = [0.8, 0.2, 0, 0]
    # sample 1 (class 2): nobody shares -> eps = [0, 0, 0.8, 0]
    g0 = -(0.8 * torch.log(alpha + q[0, 0]) + 0.2 * torch.log(alpha + q[0, 1]))
    g1 = -(0.8 * torch.log(alpha + q[1, 2]))
    expected = F.cross_entropy(logits, targets) + beta * (g0 + g1) / 2
    als = ALSLoss(table, theta=theta, alpha=alpha, beta=beta)
    assert torch.allclose(als(logits, targets), expected)
    # θ = 0 and β = 0: plain cross-entropy (004: "If θ is set to 0, Eq. 6 is equivalent to Eq. 4")
    assert torch.allclose(ALSLoss(table, theta=0.0, beta=0.0)(logits, targets),
                          F.cross_entropy(logits, targets))
    with pytest.raises(ValueError, match="classes"):
        als(logits[:, :3], targets)


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
    loss = ReIDLoss(3, 6, label_smoothing=0.1, color_weight=0.3)
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
    on_bn = ReIDLoss(2, 2, center_on="feat_bn")
    with torch.no_grad():
        on_bn.center.centers.zero_()
    assert on_bn(out, LABELS)[1]["center"].item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="center_on"):
        ReIDLoss(2, 2, center_on="logits")

"""Backbone factory, IBN-a, last stride, heads and ReIDModel on tiny timm models (CPU, no
downloads)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vreid.models import IBN, GeM, build_backbone, build_model, orientation_to_bin
from vreid.models.heads import GlobalAvgPool
from vreid.models.heads import VerificationHead
from vreid.train.losses import ReIDLoss, verification_loss

SIZE = (64, 64)
TINY = "test_resnet"  # timm's 0.4M-parameter ResNet (BasicBlock, one block per stage)


def _images(n: int = 4, size=SIZE) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(0))


def test_unknown_backbone_lists_close_timm_names():
    with pytest.raises(ValueError, match="resnet18") as err:
        build_model("resnet18x", num_classes=3, input_size=SIZE)
    assert "unknown backbone 'resnet18x'" in str(err.value)
    with pytest.raises(ValueError, match="ibn=True"):
        build_model("resnet50_ibn_a", num_classes=3, input_size=SIZE)


@pytest.mark.parametrize(
    ("name", "size", "match"),
    [
        ("resnet18", (8, 8), "total stride 16"),
        ("test_vit", (50, 64), "not a multiple of the patch size"),
        ("resnet18", (64,), "input_size"),
    ],
)
def test_input_size_the_network_cannot_take(name, size, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, num_classes=3, input_size=size)


# plain BasicBlock, avg-pool down-sampling (``d``), ResNeSt (avg-down + avd pooling)
@pytest.mark.parametrize("name", [TINY, "resnet18d", "resnest14d"])
def test_last_stride_one_doubles_the_final_map(name):
    s2 = build_backbone(name, SIZE, last_stride=2)
    s1 = build_backbone(name, SIZE, last_stride=1)
    assert s2.feature_map_size == (2, 2)
    assert s1.feature_map_size == (4, 4)
    with torch.no_grad():
        assert s1.eval()(_images(1)).shape[-2:] == (4, 4)


def test_densenet_last_stride_one_removes_the_last_transition_pool():
    bb = build_backbone("densenet121", SIZE, last_stride=1)  # total stride 32 -> 16
    assert isinstance(bb.model.features.transition3.pool, torch.nn.Identity)
    assert bb.feature_map_size == (4, 4)


def test_hrnet_warns_last_stride_not_applied_and_dry_forward_rejects_size():
    with pytest.warns(UserWarning, match="not applied"), pytest.raises(
        ValueError, match="cannot take input size 48x48"
    ):
        build_backbone("hrnet_w18_small", (48, 48), last_stride=1)


@pytest.mark.parametrize("name", [TINY, "resnest14d"])
def test_ibn_a_in_stages_1_to_3_only(name):
    bb = build_backbone(name, SIZE, ibn=True)
    model = bb.model
    for stage in ("layer1", "layer2", "layer3"):
        for block in getattr(model, stage):
            assert isinstance(block.bn1, IBN)
            assert block.bn1.half == block.bn1.IN.num_features == block.bn1.BN.num_features
    assert not any(isinstance(m, IBN) for m in model.layer4.modules())
    assert not any(isinstance(m, IBN) for m in build_backbone(name, SIZE).modules())


def test_ibn_normalises_first_half_per_instance():
    ibn = IBN(8).train()
    x = torch.randn(4, 8, 5, 5) * 3 + 2
    y = ibn(x)
    per_instance = y[:, :4].mean(dim=(2, 3))
    assert torch.allclose(per_instance, torch.zeros_like(per_instance), atol=1e-5)
    assert torch.allclose(y[:, 4:].mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5)


def test_ibn_outside_resnet_family_is_rejected():
    with pytest.raises(ValueError, match="ResNet-family"):
        build_backbone("densenet121", SIZE, ibn=True)


@pytest.mark.parametrize("head", ["bnneck", "attribute", "agnet"])
def test_heads_train_and_eval_outputs(head):
    model = build_model(
        TINY, head=head, num_classes=5, input_size=SIZE, num_colors=3, num_types=2, ibn=True
    )
    x = _images()
    out = model.train()(x)
    assert out["feat"].shape == out["feat_bn"].shape == (4, model.feat_dim) == (4, 96)
    assert out["logits"].shape == (4, 5)
    if head == "bnneck":
        assert "color_logits" not in out and "type_logits" not in out
    else:
        assert out["color_logits"].shape == (4, 3) and out["type_logits"].shape == (4, 2)
    pids = torch.tensor([0, 0, 1, 1])
    loss = ReIDLoss(5, 96, center_weight=5e-4)
    total, parts = loss(
        out, pids, color=torch.tensor([0, 0, 2, -1]), vtype=torch.tensor([1, 1, 0, 0])
    )
    total.backward()
    grad = next(model.backbone.model.conv1.parameters()).grad
    assert grad is not None and grad.abs().sum() > 0
    assert model.backbone.model.layer1[0].bn1.IN.weight.grad is not None
    assert math.isfinite(total.item()) and set(parts) >= {"id", "triplet", "center"}

    with torch.no_grad():
        ev = model.eval()(x)
    assert ev["feature"].shape == (4, model.feature_dim)
    if head == "bnneck":
        assert set(ev) == {"feature"} and model.feature_dim == 96
    else:
        assert set(ev) == {"feature", "color_prob", "type_prob"}
        assert torch.allclose(ev["color_prob"].sum(1), torch.ones(4))
        assert torch.allclose(ev["type_prob"].sum(1), torch.ones(4))
    if head == "attribute":
        assert model.feature_dim == 96 + 2 * 256
        assert torch.equal(ev["feature"][:, :96], model.head(model.backbone(x))["feat_bn"])
    if head == "agnet":
        assert model.feature_dim == 96 + 96


def test_bnneck_bias_frozen_at_zero_and_bias_free_classifier():
    model = build_model(TINY, num_classes=5, input_size=SIZE)
    neck = model.head.neck
    assert not neck.bn.bias.requires_grad and torch.all(neck.bn.bias == 0)
    assert neck.classifier.bias is None
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    total, _ = ReIDLoss(5, 96)(model.train()(_images()), torch.tensor([0, 0, 1, 1]))
    total.backward()
    opt.step()
    assert torch.all(neck.bn.bias == 0)


def test_agnet_attention_mask_is_a_channel_softmax():
    model = build_model(
        TINY, head="agnet", num_classes=5, input_size=SIZE, num_colors=3, num_types=2
    )
    fmap = model.backbone(_images())
    mask = torch.softmax(model.head.mask_conv(fmap.mean(dim=(2, 3), keepdim=True)), dim=1)
    assert mask.shape == (4, 96, 1, 1)
    assert torch.allclose(mask.sum(1), torch.ones(4, 1, 1))


def test_verification_head_scores_every_pair_by_the_square_layer():
    """004 §III-D: f_v = (f_1 − f_2)², then a 1x1 conv (linear) to 2 logits, for each pair."""
    torch.manual_seed(0)
    head = VerificationHead(6)
    f = torch.randn(5, 6)
    got = head(f)
    assert got.shape == (5, 5, 2)
    explicit = head.fc((f[:, None, :] - f[None, :, :]).pow(2))
    assert torch.allclose(got, explicit, atol=1e-5)


def test_agnet_trains_with_the_verification_branch_and_eq8_weights():
    model = build_model(TINY, head="agnet", num_classes=4, input_size=SIZE, num_colors=3, num_types=2)
    out = model.train()(_images())
    assert out["verify_logits"].shape == (4, 4, 2)
    assert "verify_logits" not in model.eval()(_images())
    loss = ReIDLoss(4, model.feat_dim, id_weight=0.5, color_weight=0.5, type_weight=0.5, verify_weight=1.0,
                    label_smoothing=0.0, triplet_weight=0.0)
    pids, color, vtype = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 0]), torch.tensor([1, 1, 1, 1])
    total, parts = loss(model.train()(_images()), pids, color=color, vtype=vtype)
    assert torch.allclose(total.detach(), 0.5 * parts["id"] + 0.5 * (parts["color"] + parts["type"])
                          + parts["verify"])
    total.backward()
    assert model.head.verifier.fc.weight.grad.abs().sum() > 0  # ALS acts on the verification branch
    assert model.head.mask_conv.weight.grad.abs().sum() > 0
    assert parts["verify"].item() == pytest.approx(verification_loss(
        out["verify_logits"], pids, torch.stack([color, vtype], 1)).item(), rel=1e-4)


def test_gem_pooling_and_embedding():
    x = torch.rand(2, 3, 4, 4) + 0.1
    gem = GeM(p=1.0)
    assert torch.allclose(gem(x), GlobalAvgPool()(x), atol=1e-6)
    assert torch.all(GeM(p=3.0)(x) >= GlobalAvgPool()(x) - 1e-6)  # power mean >= mean
    model = build_model(TINY, num_classes=5, input_size=SIZE, pooling="gem", embedding_dim=32)
    out = model.train()(_images())
    assert out["feat"].shape == (4, 32) and model.feature_dim == 32
    with pytest.raises(ValueError, match="pooling"):
        build_model(TINY, num_classes=5, input_size=SIZE, pooling="max")


def test_vit_backbone_gives_token_feature():
    model = build_model("test_vit", num_classes=5, input_size=SIZE)
    assert model.backbone.feature_map_size == (1, 1)
    out = model.train()(_images())
    assert out["feat"].shape == (4, 64)
    with pytest.raises(ValueError, match="ViT"):
        build_model("test_vit", num_classes=5, input_size=SIZE, pooling="gem")


def test_camera_and_orientation_tasks():
    cam = build_model(TINY, task="camera", num_classes=6, input_size=SIZE)
    ori = build_model(TINY, task="orientation", num_classes=36, input_size=SIZE)
    assert cam.task == "camera" and cam.num_classes == 6
    assert ori.train()(_images())["logits"].shape == (4, 36)
    assert ori.eval()(_images())["feature"].shape == (4, 96)
    with pytest.raises(ValueError, match="task='reid'"):
        build_model(
            TINY, head="attribute", task="camera", num_classes=6, input_size=SIZE, num_colors=2
        )


def test_orientation_to_bin():
    assert orientation_to_bin(0.0) == 0
    assert orientation_to_bin(9.99) == 0
    assert orientation_to_bin(10.0) == 1
    assert orientation_to_bin(359.9) == 35
    assert orientation_to_bin(360.0) == 0
    assert orientation_to_bin(-5.0) == 35
    assert orientation_to_bin(float("nan")) == -1
    assert orientation_to_bin(95.0, num_bins=4) == 1
    arr = orientation_to_bin(np.array([5.0, 185.0, np.nan]))
    assert arr.dtype == np.int64 and arr.tolist() == [0, 18, -1]
    ten = orientation_to_bin(torch.tensor([5.0, 185.0, float("nan")]))
    assert ten.tolist() == [0, 18, -1]


def test_reset_classifier_with_centroids():
    model = build_model(TINY, num_classes=5, input_size=SIZE)
    centroids = torch.randn(7, 96)
    model.reset_classifier(7, init_weights=centroids)
    assert model.num_classes == 7 and model.config["num_classes"] == 7
    assert torch.equal(model.head.neck.classifier.weight, centroids)
    assert model.train()(_images())["logits"].shape == (4, 7)
    with pytest.raises(ValueError, match="shape"):
        model.reset_classifier(3, init_weights=torch.randn(3, 10))


def test_freeze_first_two_stages():
    model = build_model(TINY, num_classes=5, input_size=SIZE)
    model.freeze_stages(2)
    net = model.backbone.model
    assert not any(p.requires_grad for p in net.conv1.parameters())
    assert not any(p.requires_grad for p in net.layer1.parameters())
    assert not any(p.requires_grad for p in net.layer2.parameters())
    assert all(p.requires_grad for p in net.layer3.parameters())
    model.train()
    assert not net.layer2[0].bn1.training and net.layer3[0].bn1.training
    before = net.layer1[0].bn1.running_mean.clone()
    total, _ = ReIDLoss(5, 96)(model(_images()), torch.tensor([0, 0, 1, 1]))
    total.backward()
    assert torch.equal(net.layer1[0].bn1.running_mean, before)
    assert net.layer3[0].conv1.weight.grad is not None and net.layer2[0].conv1.weight.grad is None
    with pytest.raises(ValueError, match="n must be"):
        model.freeze_stages(5)
    model.freeze_stages(0)  # a later stage may unfreeze everything
    assert all(p.requires_grad for p in net.parameters())
    assert not model.head.neck.bn.bias.requires_grad  # the BNNeck bias stays frozen
    model.train()
    assert net.layer1[0].bn1.training


def test_pretrained_path_backbone_and_full_checkpoints(tmp_path):
    src = build_model(TINY, num_classes=5, input_size=SIZE, ibn=True)
    backbone_file = tmp_path / "backbone.pth"
    torch.save({"state_dict": src.backbone.model.state_dict()}, backbone_file)
    dst = build_model(
        TINY, num_classes=3, input_size=SIZE, ibn=True, pretrained_path=str(backbone_file)
    )
    for k, v in src.backbone.model.state_dict().items():
        assert torch.equal(dst.backbone.model.state_dict()[k], v), k

    full_file = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(full_file))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stage2 = build_model(
            TINY, num_classes=9, input_size=SIZE, ibn=True, pretrained_path=str(full_file)
        )
    assert any("classifier" in str(w.message) for w in caught)  # other class count: kept at init
    assert torch.equal(stage2.head.neck.bn.weight, src.head.neck.bn.weight)
    assert stage2.num_classes == 9

    with pytest.raises(FileNotFoundError):
        build_model(TINY, num_classes=3, input_size=SIZE, pretrained_path=str(tmp_path / "no.pt"))
    torch.save({"foo": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no tensor matches"):
        build_model(
            TINY, num_classes=3, input_size=SIZE, pretrained_path=str(tmp_path / "other.pth")
        )


def _ibn_net_release(model) -> dict:
    """A state dict keyed as IBN-Net's releases: torchvision ResNet names with ``bn1.IN`` / ``bn1.BN``,
    the ImageNet ``fc`` classifier, saved from DataParallel (``module.``) under ``state_dict``."""
    state = {f"module.{k}": v.clone() for k, v in model.backbone.model.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(1000, model.backbone.out_channels)
    state["module.fc.bias"] = torch.zeros(1000)
    return {"state_dict": state}


def test_ibn_net_checkpoint_loads_into_ibn_a_model(tmp_path):
    torch.manual_seed(3)
    src = build_model(TINY, num_classes=5, input_size=SIZE, ibn=True)
    with torch.no_grad():
        for p in src.backbone.model.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "resnet_ibn_a.pth"
    torch.save(_ibn_net_release(src), path)
    from vreid.models import load_weights

    dst = build_model(TINY, num_classes=3, input_size=SIZE, ibn=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = load_weights(dst, path)
    assert report.layout == "ibn_net" and report.at_init == []
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"]  # the ImageNet classifier
    for k, v in src.backbone.model.state_dict().items():
        assert torch.equal(dst.backbone.model.state_dict()[k], v), k
    assert not [w for w in caught if "not in the file" in str(w.message)]
    # a partial file: what is left at init is reported by name
    partial = {k: v for k, v in _ibn_net_release(src)["state_dict"].items() if "layer4" not in k}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.warns(UserWarning, match=r"kept at init.*layer4"):
        report = load_weights(build_model(TINY, num_classes=3, input_size=SIZE, ibn=True), tmp_path / "partial.pth")
    assert report.at_init and all(k.startswith("backbone.model.layer4") for k in report.at_init)
    with pytest.raises(ValueError, match="ibn: true"):
        build_model(TINY, num_classes=3, input_size=SIZE, ibn=False, pretrained_path=str(path))


def test_plain_resnet_to_ibn_conversion_warns(monkeypatch):
    import timm

    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False, **kw: create(name, **kw))  # no download
    with pytest.warns(UserWarning, match="IBN-Net's own IBN-a checkpoints"):
        build_backbone(TINY, SIZE, pretrained=True, ibn=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_backbone(TINY, SIZE, pretrained=True, ibn=False)


def test_config_rebuilds_the_model():
    model = build_model(
        TINY, head="attribute", num_classes=5, input_size=SIZE, num_colors=3, num_types=2
    )
    again = build_model(**model.config)
    again.load_state_dict(model.state_dict())
    x = _images()
    with torch.no_grad():
        assert torch.allclose(model.eval()(x)["feature"], again.eval()(x)["feature"])


def test_vit_checkpoint_at_another_size_is_resampled(tmp_path):
    src = build_model("test_vit", num_classes=3, input_size=SIZE)
    torch.save(src.backbone.model.state_dict(), tmp_path / "vit.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every tensor loads: pos_embed resampled by timm's filter
        dst = build_model(
            "test_vit", num_classes=3, input_size=(64, 96), pretrained_path=str(tmp_path / "vit.pth")
        )
    assert dst.backbone.model.pos_embed.shape[1] == 1 + 4 * 6
    assert torch.equal(dst.backbone.model.blocks[0].attn.qkv.weight,
                       src.backbone.model.blocks[0].attn.qkv.weight)

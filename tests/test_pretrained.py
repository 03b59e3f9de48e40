"""pretrained_path reads torchvision ResNet and fast-reid BoT checkpoints (key layouts of their
published code: torchvision's ResNet, fast-reid's ResNet backbone + EmbeddingHead), reports what
stayed at init, and fails on another architecture naming the first mismatching keys."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision

from vreid.models import build_model
from vreid.models.pretrained import PretrainedMismatch, load_pretrained

SIZE = (64, 64)


def test_torchvision_resnet_checkpoint_loads_into_plain_and_ibn_models(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    state = tv.state_dict()
    assert "fc.weight" in state and "layer1.0.bn1.running_var" in state  # torchvision's own names
    path = tmp_path / "resnet18-tv.pth"
    torch.save(state, path)

    model = build_model("resnet18", num_classes=4, input_size=SIZE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = load_pretrained(model, path)
    assert report.layout == "backbone" and sorted(report.dropped) == ["fc.bias", "fc.weight"]
    net = model.backbone.model.state_dict()
    for k, v in state.items():
        if not k.startswith("fc."):
            assert torch.equal(net[k], v), k
    assert report.at_init == [] and not caught  # every backbone tensor came from the file

    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4.")}, partial)
    with pytest.warns(UserWarning, match=r"kept at init.*backbone\.model\.layer4\.0\.bn1\.bias"):
        assert all(k.startswith("backbone.model.layer4.") for k in load_pretrained(model, partial).at_init)

    ibn = build_model("resnet18", num_classes=4, input_size=SIZE, ibn=True)
    load_pretrained(ibn, path)
    block = ibn.backbone.model.layer2[1].bn1
    half = block.half
    assert torch.equal(block.IN.weight, state["layer2.1.bn1.weight"][:half])
    assert torch.equal(block.BN.weight, state["layer2.1.bn1.weight"][half:])
    assert torch.equal(block.BN.running_mean, state["layer2.1.bn1.running_mean"][half:])
    assert torch.equal(ibn.backbone.model.layer4[0].bn1.weight, state["layer4.0.bn1.weight"])  # stage 4: plain BN


def _fastreid_checkpoint(num_classes: int) -> dict:
    """A fast-reid Baseline checkpoint (bagtricks R50-ibn): backbone.* of its ResNet with IBN
    bn1.IN / bn1.BN in stages 1-3, EmbeddingHead (GeM pool_layer.p, bottleneck.0 = BN neck,
    weight = classifier), the meta-architecture's pixel_mean / pixel_std, under "model" as its
    Checkpointer saves it."""
    torch.manual_seed(1)
    src = build_model("resnet50", num_classes=2, input_size=SIZE, ibn=True)  # same module names as fast-reid's ResNet
    state = {f"backbone.{k}": v.clone() for k, v in src.backbone.model.state_dict().items()}
    dim = 2048
    state.update({
        "heads.pool_layer.p": torch.tensor([3.5]),
        "heads.bottleneck.0.weight": torch.rand(dim) + 0.5,
        "heads.bottleneck.0.bias": torch.zeros(dim),
        "heads.bottleneck.0.running_mean": torch.randn(dim),
        "heads.bottleneck.0.running_var": torch.rand(dim) + 0.5,
        "heads.bottleneck.0.num_batches_tracked": torch.tensor(100),
        "heads.weight": torch.randn(num_classes, dim) * 0.01,
        "pixel_mean": torch.tensor([123.675, 116.28, 103.53]).view(1, -1, 1, 1),
        "pixel_std": torch.tensor([58.395, 57.12, 57.375]).view(1, -1, 1, 1),
    })
    for name in ("backbone.layer1.0.bn1.IN.weight", "backbone.layer3.5.bn1.BN.running_mean",
                 "backbone.layer4.2.bn1.weight", "backbone.layer1.0.downsample.1.running_var"):
        assert name in state, name  # fast-reid's key names
    return {"model": state, "iteration": 12000}


def test_fastreid_bot_ibn_checkpoint_maps_backbone_and_heads(tmp_path):
    ckpt = _fastreid_checkpoint(num_classes=7)
    path = tmp_path / "veriwild_bot_R50-ibn.pth"
    torch.save(ckpt, path)
    model = build_model("resnet50", num_classes=7, input_size=SIZE, ibn=True, pooling="gem")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every model tensor is in the file: nothing stays at init
        report = load_pretrained(model, path)
    assert report.layout == "fastreid" and sorted(report.dropped) == ["pixel_mean", "pixel_std"]
    assert report.at_init == []
    s = ckpt["model"]
    assert torch.equal(model.backbone.model.layer1[0].bn1.IN.weight, s["backbone.layer1.0.bn1.IN.weight"])
    assert torch.equal(model.head.neck.classifier.weight, s["heads.weight"])
    # the test feature is fast-reid's: BN_neck(GeM_p(backbone(x))) with the file's tensors
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        fmap = model.backbone(x)
        p = float(s["heads.pool_layer.p"])
        pooled = fmap.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1 / p)
        want = F.batch_norm(pooled, s["heads.bottleneck.0.running_mean"], s["heads.bottleneck.0.running_var"],
                            s["heads.bottleneck.0.weight"], s["heads.bottleneck.0.bias"], eps=1e-5)
        assert torch.allclose(model(x)["feature"], want, atol=1e-4)

    # another number of classes (a new dataset): the classifier stays at init, and says so
    other = build_model("resnet50", num_classes=3, input_size=SIZE, ibn=True, pooling="gem")
    with pytest.warns(UserWarning, match="head.neck.classifier.weight"):
        assert load_pretrained(other, path).at_init == ["head.neck.classifier.weight"]


def test_checkpoint_of_another_architecture_fails_with_the_first_mismatching_keys(tmp_path):
    path = tmp_path / "resnet50-tv.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    model = build_model("resnet18", num_classes=4, input_size=SIZE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PretrainedMismatch, match="not a checkpoint of this architecture") as err:
        load_pretrained(model, path)
    msg = str(err.value)
    assert str(path) in msg
    assert "backbone.model.layer1.0.conv1.weight: file 64x64x1x1, model 64x64x3x3" in msg  # Bottleneck vs BasicBlock
    assert "backbone.model.layer1.0.conv3.weight" in msg  # a key resnet18 does not have
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded
    # through the config path too (ModelConfig.pretrained_path -> build_model)
    with pytest.raises(PretrainedMismatch):
        build_model("resnet18", num_classes=4, input_size=SIZE, pretrained_path=str(path))

"""Weakly supervised re-crop (003 §3.1): boxes from hand-made heatmaps, the stage's cropped copy,
the heatmap_crop TTA view, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from vreid.recrop.boxes import (
    BoxError,
    box_from_heatmap,
    box_iou,
    boxes_from_fmaps,
    cam_channel_weights,
    heatmaps,
    mask_box,
)


def _map(h=10, w=20):
    return np.zeros((h, w))


def test_box_of_largest_region_above_range_threshold():
    hm = _map()
    hm[2:6, 3:9] = 1.0      # the large region: rows 2-5, cols 3-8
    hm[8:9, 15:17] = 0.9    # a small one, above the threshold too
    box, fallback = box_from_heatmap(hm, 0.5, rule="range", region="largest")
    assert not fallback
    np.testing.assert_allclose(box, [3 / 20, 2 / 10, 9 / 20, 6 / 10])
    box_all, _ = box_from_heatmap(hm, 0.5, rule="range", region="all")  # [34] code: every pixel above
    np.testing.assert_allclose(box_all, [3 / 20, 2 / 10, 17 / 20, 9 / 10])
    box_hi, _ = box_from_heatmap(hm, 0.95, rule="range", region="all")  # the small region falls below
    np.testing.assert_allclose(box_hi, box)


def test_mean_rule_threshold_and_margin_and_clipping():
    hm = _map()
    hm[0:4, 0:10] = 1.0  # normalised mean 0.2: rule mean x1.5 -> 0.3 keeps the block
    box, _ = box_from_heatmap(hm, 1.5, rule="mean")
    np.testing.assert_allclose(box, [0.0, 0.0, 0.5, 0.4])
    grown, _ = box_from_heatmap(hm, 1.5, rule="mean", margin=0.1)  # +0.05 / +0.04 each side, clipped at 0
    np.testing.assert_allclose(grown, [0.0, 0.0, 0.55, 0.44])
    hm2 = _map()
    hm2[:, 15:] = 1.0
    wide, _ = box_from_heatmap(hm2, 0.5, rule="range", margin=0.5)
    np.testing.assert_allclose(wide, [0.625, 0.0, 1.0, 1.0])


def test_flat_heatmap_falls_back_to_the_whole_image():
    box, fallback = box_from_heatmap(np.full((8, 8), 3.0), 0.5, rule="range")
    assert fallback and box.tolist() == [0.0, 0.0, 1.0, 1.0]
    hm = _map()
    hm[0, 0] = 1.0  # mean rule with a huge multiple: nothing reaches it
    box, fallback = box_from_heatmap(hm, 500.0, rule="mean")
    assert fallback and box.tolist() == [0.0, 0.0, 1.0, 1.0]


def test_bad_threshold_and_spatial_map_are_errors():
    with pytest.raises(BoxError, match="must lie in"):
        box_from_heatmap(_map(), 1.2, rule="range")
    with pytest.raises(BoxError, match="no spatial extent"):
        heatmaps(np.ones((2, 8, 1, 1)), "channel_mean")
    from vreid.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="recrop.*threshold"):
        load_config(None, ["recrop.threshold_rule=range", "recrop.threshold=1.5"])
    with pytest.raises(ConfigError, match="recrop.enabled"):
        load_config(None, ["extract.tta=[original, heatmap_crop]"])
    with pytest.raises(ConfigError, match="on-disk layout"):
        load_config("configs/tiny.yaml", ["recrop.enabled=true", "data.format=manifest"])


def test_heatmap_types_and_cam():
    f = np.zeros((1, 2, 4, 4))
    f[0, 0, 0, 0], f[0, 1, 3, 3] = 2.0, -3.0
    assert heatmaps(f, "channel_sq_sum")[0, 3, 3] == 9.0 and heatmaps(f, "channel_mean")[0, 0, 0] == 1.0
    w = cam_channel_weights(np.array([[1.0, 0.0], [0.0, -1.0]]), np.array([2.0, 1.0]), None, np.array([1]))
    cam = heatmaps(f, "cam", w)  # class 1 looks at channel 1, negated: the (3, 3) peak
    assert np.unravel_index(cam[0].argmax(), (4, 4)) == (3, 3)
    boxes, fb = boxes_from_fmaps(f, (8, 8), "cam", 0.9, rule="range", cam_weights=w)
    assert not fb[0] and boxes[0, 2] == 1.0 and boxes[0, 0] >= 0.5


def test_mask_box_and_iou():
    m = np.zeros((10, 10), np.uint8)
    m[2:5, 1:6] = 255
    np.testing.assert_allclose(mask_box(m), [0.1, 0.2, 0.6, 0.5])
    assert mask_box(np.zeros((4, 4))) is None
    np.testing.assert_allclose(box_iou(np.array([0, 0, 0.5, 1.0]), np.array([0.25, 0, 0.75, 1.0])), [1 / 3])


def test_heatmap_crop_view_crops_by_the_stored_box():
    from vreid.features.tta import make_view

    img = torch.zeros(2, 1, 8, 8)
    img[0, 0, :4, :4] = 1.0  # image 0: its box is the lit quarter -> all ones after the crop
    img[1, 0, :, 4:] = torch.arange(4.0)  # image 1: box on the right half
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 1.0]])
    out = make_view(img, "heatmap_crop", 0.9, boxes)
    # bilinear sampling: only the last row / column blends with the pixels just outside the box
    assert out.shape == img.shape and torch.allclose(out[0, :, :7, :7], torch.ones(1, 7, 7))
    assert out[0].mean() > 0.9 > img[0].mean()
    assert out[1, 0, 0, 0] < out[1, 0, 0, -1]
    flipped = make_view(img, "heatmap_crop_flip", 0.9, boxes)
    assert torch.allclose(flipped, torch.flip(out, dims=[-1]))
    with pytest.raises(ValueError, match="needs one box per image"):
        make_view(img, "heatmap_crop", 0.9)


def _export(run_dir: Path, name: str, backbone="resnet10t"):
    from vreid.models import build_model
    from vreid.models.trained import export_trained_model

    torch.manual_seed(0)
    args = dict(backbone=backbone, head="bnneck", task="reid", num_classes=30, input_size=[48, 48])
    model = build_model(**{**args, "input_size": (48, 48)}).eval()
    export_trained_model(model.state_dict(), args, {"key": "k", "name": name, "class_ids": list(range(30))},
                         run_dir / "models" / name)


def test_stage_writes_a_readable_cropped_copy_and_a_rerun_skips(tmp_path, tiny_city, tiny_manifest, ray_session):
    from vreid.config import load_config
    from vreid.data import load_manifest
    from vreid.data.domains import add_crop_copy
    from vreid.features.extract import extract_features
    from vreid.features.store import read_success
    from vreid.recrop.stage import read_crop_copy, run_recrop
    from vreid.train.launcher import training_manifest

    cfg = load_config("configs/tiny.yaml", [f"run_dir={tmp_path / 'run'}", f"data.root={tiny_city}",
                                            "recrop.enabled=true", "recrop.model=bot", "recrop.actors=1",
                                            "recrop.cpus_per_actor=0.5",
                                            "extract.tta=[original, heatmap_crop, heatmap_crop_flip]"])
    cfg.models = cfg.models[:1]
    _export(Path(cfg.run_dir), "bot")
    first = run_recrop(cfg, tiny_manifest)
    root = Path(first["root"])
    assert first["images"] == tiny_manifest.num_rows
    for fmt in ("synth", "aic"):  # the copy is the same layout: both readers read it back
        back = load_manifest(root, fmt)
        assert sorted(back.column("image_id").to_pylist()) == sorted(tiny_manifest.column("image_id").to_pylist())
    crop, crop_root = read_crop_copy(cfg)
    import pyarrow.parquet as pq

    linked = pq.read_table(root / "manifest.parquet")
    assert set(pc.unique(linked.column("domain")).to_pylist()) == {"crop"}
    assert linked.column("source_image_id").to_pylist() == linked.column("image_id").to_pylist()
    assert all((Path(s) / i).is_file() for s, i in zip(linked.column("source_root").to_pylist(),
                                                       linked.column("source_image_id").to_pylist()))
    from PIL import Image

    boxes = pq.read_table(Path(first["root"]).parent / "boxes.parquet")
    one = boxes.slice(0, 1).to_pylist()[0]
    with Image.open(root / one["image_id"]) as c, Image.open(tiny_city / one["image_id"]) as s:
        b = one["box"]
        assert c.size == (round((b[2] - b[0]) * s.size[0]) or 1, round((b[3] - b[1]) * s.size[1]) or 1)
    metrics = json.loads((root.parent / "box_iou.json").read_text())
    assert metrics["all"]["with_mask_box"] == tiny_manifest.num_rows and 0 < metrics["all"]["iou_heatmap"] <= 1
    stamp = (root.parent / "_SUCCESS.json").stat().st_mtime_ns
    assert run_recrop(cfg, tiny_manifest)["key"] == first["key"]  # the rerun skips the complete copy
    assert (root.parent / "_SUCCESS.json").stat().st_mtime_ns == stamp
    training = training_manifest(cfg, tiny_manifest)
    both = add_crop_copy(training, crop, crop_root)
    train_n = pc.sum(pc.equal(training.column("split"), "train")).as_py()
    assert pc.sum(pc.equal(both.column("domain"), "crop")).as_py() == train_n
    crops = both.filter(pc.equal(both.column("domain"), "crop"))  # same identities, no held-out image
    pid_of = dict(zip(training.column("image_id").to_pylist(), training.column("pid").to_pylist()))
    split_of = dict(zip(training.column("image_id").to_pylist(), training.column("split").to_pylist()))
    for image_id, pid in zip(crops.column("image_id").to_pylist(), crops.column("pid").to_pylist()):
        rel = str(Path(image_id).relative_to(crop_root))
        assert Path(image_id).is_file() and pid_of[rel] == pid and split_of[rel] == "train"
    stores = extract_features(cfg, tiny_manifest, ["test"])
    assert read_success(stores["bot"]["test"])["boxes"] == first["key"]


def test_stage_refuses_a_model_without_a_spatial_map(tmp_path, tiny_city, tiny_manifest, ray_session):
    from vreid.models import build_model
    from vreid.recrop.stage import check_spatial

    vit = build_model("vit_tiny_patch16_224", num_classes=3, input_size=(32, 32), img_size=32)
    with pytest.raises(BoxError, match="no spatial feature map"):
        check_spatial(vit, "vit")

"""Train / test transforms, random shrink and background substitution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import write_png

from vreid.data.transforms import (
    RandomShrink,
    build_test_transform,
    build_train_transform,
    read_mask,
    substitute_background,
)

SIZE = (64, 48)


def _image(h=120, w=90, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def test_train_and_test_output_shapes_for_tensor_and_pil():
    pil = Image.fromarray(np.zeros((30, 70, 3), np.uint8))
    for t in (build_train_transform(SIZE), build_test_transform(SIZE)):
        for img in (_image(), pil):
            out = t(img)
            assert out.shape == (3, *SIZE) and out.dtype == torch.float32


def test_train_transform_deterministic_when_seeded():
    t = build_train_transform(SIZE, erase_p=1.0, flip_p=0.5)
    torch.manual_seed(3)
    a = t(_image())
    torch.manual_seed(3)
    b = t(_image())
    torch.manual_seed(4)
    c = t(_image())
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_test_transform_normalises():
    white = torch.full((3, 10, 10), 255, dtype=torch.uint8)
    out = build_test_transform(SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(white)
    assert torch.allclose(out, torch.ones_like(out))


def test_random_shrink_scales_large_images_only():
    img = _image(200, 100)
    g = torch.Generator().manual_seed(0)
    shrink = RandomShrink(SIZE, p=1.0, scale_range=(0.4, 0.6), generator=g)
    for _ in range(5):
        h, w = shrink(img).shape[-2:]
        assert 0.4 * 200 - 1 <= h <= 0.6 * 200 + 1 and 0.4 * 100 - 1 <= w <= 0.6 * 100 + 1
    small = _image(60, 100)  # not larger than the input height: untouched
    assert shrink(small) is small
    assert RandomShrink(SIZE, p=0.0)(img) is img
    a = RandomShrink(SIZE, p=1.0, generator=torch.Generator().manual_seed(7))(img)
    b = RandomShrink(SIZE, p=1.0, generator=torch.Generator().manual_seed(7))(img)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="scale_range"):
        RandomShrink(SIZE, scale_range=(0.6, 0.4))


def test_background_substitution_keeps_vehicle_pixels(tmp_path):
    img = _image(40, 30, seed=1)
    background = _image(80, 50, seed=2)
    mask = torch.zeros(1, 40, 30, dtype=torch.uint8)
    mask[:, 10:30, 5:20] = 255
    write_png(mask, str(tmp_path / "mask.png"))
    vehicle = read_mask(tmp_path / "mask.png")
    assert vehicle.dtype == torch.bool and vehicle.shape == (40, 30) and vehicle.sum() == 20 * 15

    out = substitute_background(img, vehicle, background, p=1.0)
    assert torch.equal(out[:, vehicle], img[:, vehicle])
    assert not torch.equal(out[:, ~vehicle], img[:, ~vehicle])
    assert torch.equal(substitute_background(img, mask, background, p=1.0), out)  # uint8 mask
    assert substitute_background(img, vehicle, background, p=0.0) is img
    as_numpy = substitute_background(  # decoded layout: (H, W, C) image, (H, W) uint8 mask
        img.permute(1, 2, 0).numpy(), mask[0].numpy(), background.permute(1, 2, 0).numpy(), p=1.0
    )
    assert torch.equal(as_numpy, out)

    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    runs1 = [substitute_background(img, vehicle, background, 0.5, g1) is img for _ in range(20)]
    runs2 = [substitute_background(img, vehicle, background, 0.5, g2) is img for _ in range(20)]
    assert runs1 == runs2 and 0 < sum(runs1) < 20

    with pytest.raises(ValueError, match="mask shape"):
        substitute_background(img, vehicle[:20], background, p=1.0)
    with pytest.raises(ValueError, match="dtype"):
        substitute_background(img, vehicle, background.float(), p=1.0)

"""Image transforms on ``torchvision.transforms.v2``.

Train (BoT, seeds 000/001/003): [random shrink] -> resize -> flip -> pad + random crop ->
float + normalise -> random erasing. Background substitution (seed 000) runs before, on the
decoded image and its mask. Inputs are PIL images or uint8 ``(C, H, W)`` tensors; outputs are
normalised float32 ``(3, H, W)`` tensors.

Randomness: the v2 built-ins draw from torch's global generator (seeded per DataLoader worker
by torch); :class:`RandomShrink` and :func:`substitute_background` take an optional explicit
``torch.Generator``. Seed torch (``torch.manual_seed``) for a reproducible pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as TF
from torch import nn
from torchvision.io import ImageReadMode, decode_image, read_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FLIP_P = 0.5  # seeds 000/001/003
PAD = 10  # seed 000 §4.2: padded with 10 pixels, then randomly cropped
ERASE_P = 0.5  # seed 000 §4.2
SHRINK_P = 0.5  # seed 000 §3.1 random shrink
SHRINK_RANGE = (0.4, 0.6)  # seed 000 §3.1 scaling factor
BACKGROUND_P = 0.5  # seed 000 §3.1 background substitution


def _size(input_size: Sequence[int]) -> tuple[int, int]:
    if len(input_size) != 2 or min(int(v) for v in input_size) < 1:
        raise ValueError(f"input_size must be (height, width) positive ints, got {input_size!r}")
    return int(input_size[0]), int(input_size[1])


class RandomShrink(nn.Module):
    """Random shrink (seed 000 §3.1): an image larger than ``size`` in both height and width is,
    with probability ``p``, downscaled by a factor s ~ U(``scale_range``); the Resize that follows
    brings it back to the input size, so large crops also train the model on low-resolution
    vehicles. Smaller images pass unchanged."""

    def __init__(
        self,
        size: Sequence[int],
        p: float = SHRINK_P,
        scale_range: tuple[float, float] = SHRINK_RANGE,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        lo, hi = scale_range
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"shrink scale_range needs 0 < lo <= hi <= 1, got {scale_range}")
        self.size = _size(size)
        self.p, self.scale_range, self.generator = p, (lo, hi), generator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        if h <= self.size[0] or w <= self.size[1]:
            return image
        draw = torch.rand(2, generator=self.generator)
        if draw[0].item() >= self.p:
            return image
        lo, hi = self.scale_range
        s = lo + (hi - lo) * draw[1].item()
        return TF.resize(image, [max(1, round(h * s)), max(1, round(w * s))], antialias=True)


def build_train_transform(
    input_size: Sequence[int],
    flip_p: float = FLIP_P,
    pad: int = PAD,
    erase_p: float = ERASE_P,
    shrink_p: float = SHRINK_P,
    shrink_range: tuple[float, float] = SHRINK_RANGE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    generator: torch.Generator | None = None,
) -> v2.Compose:
    """Training transform: random shrink (p ``shrink_p``, 0 disables) -> resize to
    ``input_size`` (height, width) -> horizontal flip (``flip_p``) -> pad ``pad`` + random crop
    back to ``input_size`` -> float32 in [0, 1] -> normalise -> random erasing (``erase_p``,
    torchvision's area 0.02-0.33, filled with 0 = the mean colour after normalisation).
    ``generator`` drives the random shrink only."""
    size = _size(input_size)
    steps: list[nn.Module] = [v2.ToImage()]
    if shrink_p > 0:
        steps.append(RandomShrink(size, shrink_p, shrink_range, generator))
    steps += [v2.Resize(size, antialias=True), v2.RandomHorizontalFlip(flip_p)]
    if pad > 0:
        steps += [v2.Pad(pad), v2.RandomCrop(size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if erase_p > 0:
        steps.append(v2.RandomErasing(p=erase_p))
    return v2.Compose(steps)


def build_test_transform(
    input_size: Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Test transform: resize to ``input_size`` (height, width) -> float32 -> normalise."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(_size(input_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def read_mask(path: str | Path) -> torch.Tensor:
    """Vehicle mask from a single-channel PNG (255 = vehicle) as a bool ``(H, W)`` tensor."""
    return decode_image(read_file(str(path)), mode=ImageReadMode.GRAY)[0] > 127


def _chw(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Tensors are taken as ``(C, H, W)``; numpy arrays as ``(H, W, C)`` (PIL / decoded layout)
    or ``(H, W)``."""
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
        return t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return x


def substitute_background(
    image: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray,
    background_image: torch.Tensor | np.ndarray,
    p: float = BACKGROUND_P,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Background substitution (seed 000 §3.1): with probability ``p``, keep the vehicle pixels
    of ``image`` (``(C, H, W)``) where ``mask`` is set and take the rest from
    ``background_image`` (``(C, h, w)``, same dtype, resized to ``(H, W)``).

    ``mask``: ``(H, W)`` or ``(1, H, W)``, bool or uint8 (255 = vehicle, > 127 counts). Numpy
    inputs are accepted in ``(H, W, C)`` / ``(H, W)`` layout. Returns a ``(C, H, W)`` tensor
    (``image`` itself, as a tensor, when not applied).
    """
    image, mask, background_image = _chw(image), _chw(mask), _chw(background_image)
    if image.ndim != 3 or background_image.ndim != 3:
        raise ValueError(
            f"image and background_image must be (C, H, W), got {tuple(image.shape)} and "
            f"{tuple(background_image.shape)}"
        )
    m = mask[0] if mask.ndim == 3 and mask.shape[0] == 1 else mask
    if m.shape != image.shape[-2:]:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match image size {tuple(image.shape[-2:])}"
        )
    if background_image.shape[0] != image.shape[0] or background_image.dtype != image.dtype:
        raise ValueError(
            f"background_image {tuple(background_image.shape)} {background_image.dtype} does not "
            f"match image channels / dtype {tuple(image.shape)} {image.dtype}"
        )
    if torch.rand(1, generator=generator).item() >= p:
        return image
    vehicle = m if m.dtype == torch.bool else m > 127
    background = TF.resize(background_image, list(image.shape[-2:]), antialias=True)
    return torch.where(vehicle[None], image, background)

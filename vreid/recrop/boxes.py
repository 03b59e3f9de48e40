"""Weakly supervised vehicle boxes from a re-ID model's heatmap (seed 003 §3.1 "CityFlow-V2-CROP",
after Zhu et al. [34], VOC-ReID), as pure functions on numpy arrays.

last feature map (B, C, h, w) -> heatmap (B, h, w) -> upsampled to the image grid -> normalised
to [0, 1] by its own range -> thresholded -> bounding box of the largest connected region above
the threshold (or of every pixel above it) -> plus a margin, clipped to the image. Boxes are
normalised ``(x0, y0, x1, y1)`` in [0, 1] with exclusive ends, so one box fits the image at any
resolution. A heatmap with no pixel above the threshold (a flat map) gives the whole image,
flagged as a fallback.

Heatmaps: 003 says only "heatmap response of each image" of an initial re-ID model, and crops
the test set too, where no label exists, so it is not a class activation map of the true
identity; the code of [34] (``tools/aicity20/weakly_supervised_crop_aug.py``) sums the squared
activations over channels. Offered: ``channel_sq_sum`` ([34] code), ``channel_mean`` (the mean
activation) and ``cam`` (Zhou et al. 2016: the class activation map of the image's identity,
for labelled images only).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

HEATMAPS = ("channel_sq_sum", "channel_mean", "cam")
THRESHOLD_RULES = ("mean", "range")
REGIONS = ("largest", "all")


class BoxError(ValueError):
    """Input that no box can be computed from (no spatial map, a bad threshold, bad shapes)."""


def check_threshold(rule: str, threshold: float) -> None:
    """``range``: a pixel is foreground when its normalised value >= ``threshold`` in (0, 1);
    ``mean``: when it is >= ``threshold`` x the normalised map's mean, ``threshold`` > 0."""
    if rule not in THRESHOLD_RULES:
        raise BoxError(f"threshold rule '{rule}': expected one of {THRESHOLD_RULES}")
    if rule == "range" and not 0.0 < threshold < 1.0:
        raise BoxError(f"threshold {threshold} with rule 'range' must lie in (0, 1): a fraction of the map's range")
    if rule == "mean" and not threshold > 0.0:
        raise BoxError(f"threshold {threshold} with rule 'mean' must be > 0: a multiple of the map's mean")


def heatmaps(fmaps: np.ndarray, method: str, cam_weights: np.ndarray | None = None) -> np.ndarray:
    """(B, C, h, w) feature maps -> (B, h, w) heatmaps.

    ``cam_weights`` (B, C): per image, the channel weights of its identity's logit (``cam``);
    see :func:`cam_channel_weights`.
    """
    if fmaps.ndim != 4:
        raise BoxError(f"feature maps must be (B, C, h, w), got shape {fmaps.shape}")
    if fmaps.shape[2] * fmaps.shape[3] < 2:
        raise BoxError(f"feature map of spatial size {fmaps.shape[2]}x{fmaps.shape[3]} has no spatial extent "
                       "(e.g. a ViT class token): no heatmap, no box")
    if method == "channel_sq_sum":
        return np.square(fmaps, dtype=np.float64).sum(axis=1)
    if method == "channel_mean":
        return fmaps.astype(np.float64).mean(axis=1)
    if method == "cam":
        if cam_weights is None or cam_weights.shape != fmaps.shape[:2]:
            raise BoxError(f"heatmap 'cam' needs channel weights of shape {fmaps.shape[:2]}, got "
                           f"{None if cam_weights is None else cam_weights.shape}")
        return np.einsum("bc,bchw->bhw", cam_weights.astype(np.float64), fmaps.astype(np.float64))
    raise BoxError(f"heatmap '{method}': expected one of {HEATMAPS}")


def cam_channel_weights(classifier: np.ndarray, bn_scale: np.ndarray, embed: np.ndarray | None,
                        classes: np.ndarray) -> np.ndarray:
    """Channel weights of the CAM for a BNNeck head on average pooling: the logit of class k is
    ``W_k . (s * (E f) + t)`` with f the pooled map, s the BN's per-channel scale
    ``gamma / sqrt(var + eps)`` and E the optional embedding, so its map is
    ``sum_c (W_k * s) E [c] fmap_c`` (the constant drops out of the normalised map).

    classifier (K, D), bn_scale (D,), embed (D, C) or None, classes (B,) class indices -> (B, C).
    """
    w = classifier[classes] * bn_scale[None, :]
    return w @ embed if embed is not None else w


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(B, h, w) -> (B, H, W), bilinear (scipy.ndimage.zoom, order 1)."""
    b, h, w = maps.shape
    return ndimage.zoom(maps, (1, size[0] / h, size[1] / w), order=1, grid_mode=True, mode="nearest")


def box_from_heatmap(heatmap: np.ndarray, threshold: float, rule: str = "mean", region: str = "largest",
                     margin: float = 0.0) -> tuple[np.ndarray, bool]:
    """One (H, W) heatmap -> (normalised box (4,), fallback).

    The map is normalised to [0, 1] by its range; foreground is >= the threshold (see
    :func:`check_threshold`); ``region`` ``largest`` keeps the largest 8-connected foreground
    region (``scipy.ndimage.label``), ``all`` every foreground pixel ([34] code); the box grows by
    ``margin`` x its width / height on each side and is clipped to the image. No foreground
    (a flat map) -> the whole image and ``fallback = True``.
    """
    check_threshold(rule, threshold)
    if region not in REGIONS:
        raise BoxError(f"region '{region}': expected one of {REGIONS}")
    if margin < 0:
        raise BoxError(f"margin {margin} must be >= 0")
    if heatmap.ndim != 2:
        raise BoxError(f"heatmap must be (H, W), got shape {heatmap.shape}")
    full = np.array([0.0, 0.0, 1.0, 1.0])
    lo, hi = float(np.min(heatmap)), float(np.max(heatmap))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise BoxError("heatmap holds NaN or Inf")
    if hi <= lo:
        return full, True
    norm = (heatmap - lo) / (hi - lo)
    cut = threshold if rule == "range" else threshold * float(norm.mean())
    fg = norm >= cut
    if not fg.any():
        return full, True
    if region == "largest":
        labels, n = ndimage.label(fg, structure=np.ones((3, 3), bool))
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        sizes[0] = 0
        fg = labels == int(np.argmax(sizes))
    rows, cols = ndimage.find_objects(fg.astype(np.int32))[0]
    h, w = heatmap.shape
    box = np.array([cols.start / w, rows.start / h, cols.stop / w, rows.stop / h])
    dx, dy = margin * (box[2] - box[0]), margin * (box[3] - box[1])
    return np.clip(box + np.array([-dx, -dy, dx, dy]), 0.0, 1.0), False


def boxes_from_fmaps(fmaps: np.ndarray, image_size: tuple[int, int], method: str, threshold: float,
                     rule: str = "mean", region: str = "largest", margin: float = 0.0,
                     cam_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(B, C, h, w) feature maps of images of ``image_size`` (H, W) -> boxes (B, 4) normalised,
    fallback (B,) bool."""
    check_threshold(rule, threshold)
    maps = upsample(heatmaps(fmaps, method, cam_weights), image_size)
    out = [box_from_heatmap(m, threshold, rule, region, margin) for m in maps]
    return (np.stack([b for b, _ in out]) if out else np.zeros((0, 4))), np.array([f for _, f in out], bool)


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Normalised box of the non-zero pixels of an (H, W) mask; None for an empty mask."""
    objs = ndimage.find_objects((mask > 0).astype(np.int32))
    if not objs:
        return None
    rows, cols = objs[0]
    h, w = mask.shape
    return np.array([cols.start / w, rows.start / h, cols.stop / w, rows.stop / h])


def centre_box(ratio: float) -> np.ndarray:
    """The fixed centre crop of the ``crop`` TTA view as a normalised box."""
    pad = (1.0 - ratio) / 2
    return np.array([pad, pad, 1.0 - pad, 1.0 - pad])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of (N, 4) and (N, 4) (or (4,)) normalised boxes."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def pixel_box(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """A normalised box -> integer pixel box (left, top, right, bottom) of an image, at least 1x1."""
    x0, y0 = int(np.floor(box[0] * width)), int(np.floor(box[1] * height))
    x1, y1 = int(np.ceil(box[2] * width)), int(np.ceil(box[3] * height))
    x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    return x0, y0, max(min(x1, width), x0 + 1), max(min(y1, height), y0 + 1)

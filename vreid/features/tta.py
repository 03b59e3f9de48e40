"""Test-time augmentation (seed 003): average the features of several views, then L2-normalise."""

from __future__ import annotations

import torch
import torch.nn.functional as F

VIEWS = ("original", "flip", "crop", "crop_flip", "heatmap_crop", "heatmap_crop_flip")
BOX_VIEWS = ("heatmap_crop", "heatmap_crop_flip")  # crop by each image's stored box (vreid.recrop, 003 §3.3)
PROB_COLUMNS = ("color_prob", "type_prob", "camera_prob")  # per-image class probabilities written to stores


def make_view(images: torch.Tensor, view: str, crop_ratio: float, boxes: torch.Tensor | None = None) -> torch.Tensor:
    """One view of a (B, C, H, W) batch: the image, its horizontal flip, its centre crop of
    ``crop_ratio`` resized back to (H, W), the crop by each image's box (``boxes`` (B, 4):
    normalised x0, y0, x1, y1, from the recrop stage) resized back, or either crop flipped."""
    if view not in VIEWS:
        raise ValueError(f"unknown TTA view '{view}'; expected one of {VIEWS}")
    out = images
    if view in BOX_VIEWS:
        from torchvision.ops import roi_align

        if boxes is None or tuple(boxes.shape) != (images.shape[0], 4):
            raise ValueError(f"TTA view '{view}' needs one box per image, shape ({images.shape[0]}, 4), got "
                             f"{None if boxes is None else tuple(boxes.shape)}")
        h, w = images.shape[-2:]
        scale = torch.tensor([w, h, w, h], dtype=images.dtype, device=images.device)
        rois = torch.cat([torch.arange(images.shape[0], dtype=images.dtype, device=images.device)[:, None],
                          boxes.to(images) * scale], dim=1)
        out = roi_align(images, rois, output_size=(h, w), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    if view.startswith("crop"):
        h, w = images.shape[-2:]
        ch, cw = max(1, round(h * crop_ratio)), max(1, round(w * crop_ratio))
        top, left = (h - ch) // 2, (w - cw) // 2
        out = F.interpolate(out[..., top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                            align_corners=False)
    if view.endswith("flip"):
        out = torch.flip(out, dims=[-1])
    return out


@torch.no_grad()
def tta_outputs(model: torch.nn.Module, images: torch.Tensor, views: list[str] | tuple[str, ...],
                crop_ratio: float = 0.9, boxes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Model outputs averaged over ``views``; ``feature`` is L2-normalised after averaging.
    ``boxes``: each image's normalised box, for the ``heatmap_crop`` views.

    Class probabilities (``color_prob`` / ``type_prob`` / ``camera_prob``), where the model has
    them, are averaged over the same views.
    """
    if not views:
        raise ValueError("TTA needs at least one view")
    sums: dict[str, torch.Tensor] = {}
    for view in views:
        out = model(make_view(images, view, crop_ratio, boxes))
        for key in ("feature", *PROB_COLUMNS):
            if key in out:
                v = out[key].float()
                sums[key] = sums[key] + v if key in sums else v
    result = {k: v / len(views) for k, v in sums.items()}
    result["feature"] = F.normalize(result["feature"], dim=1)
    return result

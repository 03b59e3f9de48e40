"""The re-crop stage: Ray Data over the dataset's images computes each image's heatmap box with
the initial model (actor pool), writes a cropped copy in the dataset's own on-disk layout (tasks)
and a manifest of it (domain ``crop``, each row linked to its source image).

Output, under ``<run_dir>/recrop/<key>/`` (the key digests the model's weights, the recrop
settings and the dataset, so a changed setting writes a new copy and a rerun skips a complete
one): ``data/`` (the layout: image folders, label / name / track lists, ``gt/`` and ``masks/``
where the dataset has them, plus ``manifest.parquet``), ``boxes.parquet`` (``image_id``, ``box``
normalised x0 y0 x1 y1, ``fallback``, ``heatmap``, IoU against the mask box where a mask
exists), ``box_iou.json`` and ``_SUCCESS.json`` written last. Written under ``<key>.tmp`` and
renamed when complete; ``<run_dir>/recrop/summary.json`` points at the latest complete copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vreid.recrop.boxes import BoxError, box_iou, boxes_from_fmaps, cam_channel_weights, centre_box, mask_box, pixel_box

log = logging.getLogger("vreid.recrop")
SUCCESS = "_SUCCESS.json"
BOX_TYPE = pa.list_(pa.float32(), 4)
_SETTINGS = ("heatmap", "threshold_rule", "threshold", "region", "margin", "jpeg_quality")


def recrop_key(cfg, model_sha256: str) -> str:
    payload = {"recrop": cfg.recrop.model_dump(mode="json", include=set(_SETTINGS)), "model": model_sha256,
               "data": cfg.data.model_dump(mode="json", include={"format", "root", "synth_preset", "seed",
                                                                 "synth_options"})}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def recrop_dir(cfg) -> tuple[Path, str]:
    """The copy's directory and key for the config's initial model (which must be trained)."""
    from vreid.models.trained import read_trained_meta

    meta = read_trained_meta(Path(cfg.run_dir) / "models" / cfg.recrop.model)
    key = recrop_key(cfg, meta["sha256"])
    return Path(cfg.run_dir).resolve() / "recrop" / key, key


def check_spatial(model, name: str) -> None:
    """Boxes need a spatial last feature map; a ViT's class token has none."""
    bb = model.backbone
    if bb.family == "vit" or bb.feature_map_size[0] * bb.feature_map_size[1] < 2:
        raise BoxError(f"recrop.model '{name}' (backbone {bb.name}) has no spatial feature map (its feature is "
                       f"{bb.feature_map_size[0]}x{bb.feature_map_size[1]}, e.g. a ViT class token): no heatmap, "
                       "no box; name a CNN model")


def cam_parts(model, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Classifier, BN scale and embedding of a BNNeck head on average pooling (for ``cam``)."""
    from torch import nn

    from vreid.models.heads import BNNeckHead, GlobalAvgPool

    head = model.head
    if not isinstance(head, BNNeckHead) or not isinstance(head.pool, GlobalAvgPool):
        raise BoxError(f"recrop.heatmap 'cam' needs a bnneck / attribute head on average pooling; model '{name}' "
                       f"has {type(head).__name__} with {type(getattr(head, 'pool', None)).__name__}")
    bn = head.neck.bn
    scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().cpu().numpy()
    embed = head.embed.weight.detach().cpu().numpy() if isinstance(head.embed, nn.Linear) else None
    return head.neck.classifier.weight.detach().cpu().numpy(), scale, embed


class BoxFinder:
    """Callable class for ``map_batches``: the initial model is loaded once per actor."""

    def __init__(self, model_dir: str, name: str, settings: dict[str, Any]):
        from vreid.models.trained import load_trained_model

        self.model, meta = load_trained_model(model_dir, "cpu")
        check_spatial(self.model, name)
        self.size = tuple(meta["build_args"]["input_size"])
        self.s = settings
        self.cam = cam_parts(self.model, name) if settings["heatmap"] == "cam" else None
        self.class_of = {int(c): i for i, c in enumerate(meta.get("class_ids", []))}

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        import torch

        with torch.no_grad():
            fmaps = self.model.backbone(torch.from_numpy(np.ascontiguousarray(batch["image"]))).numpy()
        n = fmaps.shape[0]
        method = np.array([self.s["heatmap"]] * n, dtype=object)
        args = dict(threshold=self.s["threshold"], rule=self.s["threshold_rule"], region=self.s["region"],
                    margin=self.s["margin"])
        if self.cam is None:
            boxes, fallback = boxes_from_fmaps(fmaps, self.size, self.s["heatmap"], **args)
        else:  # the CAM of the identity where it is a training class, else the mean activation
            classes = np.array([self.class_of.get(int(p), -1) for p in batch["pid"]])
            boxes, fallback = np.zeros((n, 4)), np.zeros(n, bool)
            known = classes >= 0
            method[~known] = "channel_mean"
            if known.any():
                w = cam_channel_weights(*self.cam, classes[known])
                boxes[known], fallback[known] = boxes_from_fmaps(fmaps[known], self.size, "cam", cam_weights=w, **args)
            if (~known).any():
                boxes[~known], fallback[~known] = boxes_from_fmaps(fmaps[~known], self.size, "channel_mean", **args)
        return pa.table({"image_id": pa.array(batch["image_id"].tolist(), pa.string()),
                         "mask_path": pa.array([None if m is None else str(m) for m in batch["mask_path"]], pa.string()),
                         "box": pa.FixedSizeListArray.from_arrays(pa.array(boxes.astype(np.float32).ravel()), 4),
                         "fallback": pa.array(fallback), "heatmap": pa.array(method.tolist(), pa.string())})


def write_crops(batch: pa.Table, root: str, out: str, quality: int, centre_ratio: float) -> pa.Table:
    """Crop each source image (and its mask) by its box into ``out`` at the same relative path
    (a Ray Data task body); adds the IoU of the heatmap box and of the fixed centre crop against
    the mask's box (NaN without a mask)."""
    from PIL import Image

    boxes = np.asarray(batch.column("box").combine_chunks().flatten(), np.float64).reshape(-1, 4)
    iou_h, iou_c = np.full(len(boxes), np.nan), np.full(len(boxes), np.nan)
    for i, (image_id, mask_path) in enumerate(zip(batch.column("image_id").to_pylist(),
                                                  batch.column("mask_path").to_pylist())):
        with Image.open(Path(root) / image_id) as img:
            px = pixel_box(boxes[i], *img.size)
            dest = Path(out) / image_id
            dest.parent.mkdir(parents=True, exist_ok=True)
            img.convert("RGB").crop(px).save(dest, quality=quality)
        if mask_path is not None:
            with Image.open(Path(root) / mask_path) as mask:
                truth = mask_box(np.asarray(mask))
                dest = Path(out) / mask_path
                dest.parent.mkdir(parents=True, exist_ok=True)
                mask.crop(px).save(dest)
            if truth is not None:
                iou_h[i] = box_iou(boxes[i], truth)[0]
                iou_c[i] = box_iou(centre_box(centre_ratio), truth)[0]
    return batch.drop_columns(["mask_path"]).append_column("iou_heatmap", pa.array(iou_h)) \
        .append_column("iou_centre", pa.array(iou_c))


def _copy_lists(src: Path, dst: Path) -> None:
    """The layout's list, label and ground-truth files (everything but images, masks and markers)."""
    for p in src.iterdir():
        if p.is_file() and not p.name.startswith(("_SUCCESS", ".")):
            shutil.copy2(p, dst / p.name)
    if (src / "gt").is_dir():
        shutil.copytree(src / "gt", dst / "gt", dirs_exist_ok=True)


def box_metrics(boxes: pa.Table, split_of: dict[str, str], centre_ratio: float) -> dict[str, Any]:
    """Per split and overall: images, fallbacks, mean box area and, where masks give the true
    box, the mean IoU of the heatmap boxes and of the fixed centre crop against it."""
    ids = boxes.column("image_id").to_pylist()
    split = np.array([split_of[i] for i in ids])
    b = np.asarray(boxes.column("box").combine_chunks().flatten(), np.float64).reshape(-1, 4)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    fb = boxes.column("fallback").to_numpy(zero_copy_only=False)
    ih, ic = boxes.column("iou_heatmap").to_numpy(), boxes.column("iou_centre").to_numpy()
    out = {"centre_crop_ratio": centre_ratio}
    for name in ("all", "train", "query", "gallery"):
        sel = np.ones(len(ids), bool) if name == "all" else split == name
        if not sel.any():
            continue
        m = sel & ~np.isnan(ih)
        out[name] = {"images": int(sel.sum()), "fallbacks": int(fb[sel].sum()),
                     "mean_box_area": float(area[sel].mean()), "with_mask_box": int(m.sum()),
                     "iou_heatmap": float(ih[m].mean()) if m.any() else None,
                     "iou_centre_crop": float(ic[m].mean()) if m.any() else None}
    return out


def run_recrop(cfg, manifest: pa.Table) -> dict[str, Any]:
    """The stage: boxes, the cropped copy and its manifest for every image of the dataset (not of
    ``data.extra_train``), or the complete copy of the same key; returns its paths and metrics."""
    import ray

    from vreid.data import dataset_root, load_manifest
    from vreid.features.extract import decode_batch
    from vreid.models.trained import read_trained_meta

    rc = cfg.recrop
    out, key = recrop_dir(cfg)
    done = out / SUCCESS
    if done.is_file() and json.loads(done.read_text()).get("key") == key:
        log.info("stage recrop: copy %s complete, skipping", out)
        return json.loads(done.read_text())
    model_dir = Path(cfg.run_dir) / "models" / rc.model
    meta = read_trained_meta(model_dir)
    root = dataset_root(manifest)
    rows = manifest.filter(pc.equal(manifest.column("domain"), "real")).select(["image_id", "split", "pid", "mask_path"])
    tmp = out.with_name(f"{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    settings = rc.model_dump(include=set(_SETTINGS))
    log.info("stage recrop: %d images, heatmap %s of model %s, threshold %s %g, region %s, margin %g -> %s",
             rows.num_rows, rc.heatmap, rc.model, rc.threshold_rule, rc.threshold, rc.region, rc.margin, out)
    ids = rows.select(["image_id", "pid", "mask_path"])
    ds = ray.data.from_arrow([ids.slice(i, rc.batch_size) for i in range(0, ids.num_rows, rc.batch_size)])
    ds = ds.map_batches(decode_batch, fn_kwargs={"root": str(root), "input_size": tuple(meta["build_args"]["input_size"])},
                        batch_size=rc.batch_size, num_cpus=rc.cpus_per_task, batch_format="numpy")
    ds = ds.map_batches(BoxFinder, fn_constructor_kwargs={"model_dir": str(model_dir), "name": rc.model,
                                                          "settings": settings},
                        batch_size=rc.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=rc.actors),
                        num_cpus=rc.cpus_per_actor)
    ds = ds.map_batches(write_crops, fn_kwargs={"root": str(root), "out": str(tmp / "data"), "quality": rc.jpeg_quality,
                                                "centre_ratio": cfg.extract.crop_ratio},
                        batch_size=None, batch_format="pyarrow", num_cpus=rc.cpus_per_task)
    boxes = pa.concat_tables(ray.get(ds.to_arrow_refs())).sort_by("image_id")
    if boxes.num_rows != rows.num_rows:
        missing = sorted(set(rows.column("image_id").to_pylist()) - set(boxes.column("image_id").to_pylist()))
        raise BoxError(f"recrop: {len(missing)} image(s) could not be decoded, e.g. {missing[:3]} (under {root})")
    _copy_lists(root, tmp / "data")
    crop = load_manifest(tmp / "data", cfg.data.format, on_bad_image=cfg.data.on_bad_image)
    crop = crop.set_column(crop.schema.get_field_index("domain"), "domain", pa.array(["crop"] * crop.num_rows))
    crop = crop.append_column("source_image_id", crop.column("image_id")) \
        .append_column("source_root", pa.array([str(root)] * crop.num_rows, pa.string()))
    pq.write_table(crop.replace_schema_metadata(None), tmp / "data" / "manifest.parquet")
    pq.write_table(boxes, tmp / "boxes.parquet")
    metrics = box_metrics(boxes, dict(zip(rows.column("image_id").to_pylist(), rows.column("split").to_pylist())),
                          cfg.extract.crop_ratio)
    (tmp / "box_iou.json").write_text(json.dumps(metrics, indent=1))
    result = {"key": key, "model": rc.model, "model_sha256": meta["sha256"], "root": str(out / "data"),
              "source_root": str(root), "format": cfg.data.format, "images": boxes.num_rows, "metrics": metrics}
    (tmp / SUCCESS).write_text(json.dumps(result, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    (out.parent / "summary.json").write_text(json.dumps({**result, "root": str(out / "data")}, indent=1))
    a = metrics["all"]
    log.info("stage recrop: %d boxes, %d fallbacks (whole image); mean IoU vs mask boxes: heatmap %s, centre crop %s",
             a["images"], a["fallbacks"], a["iou_heatmap"], a["iou_centre_crop"])
    return result


def read_crop_copy(cfg) -> tuple[pa.Table, str]:
    """The complete copy's manifest (the manifest schema, domain ``crop``) and its root."""
    from vreid.data import validate_manifest

    out, key = recrop_dir(cfg)
    if not (out / SUCCESS).is_file():
        raise FileNotFoundError(f"{out}: no complete re-cropped copy for recrop.model '{cfg.recrop.model}' and these "
                                "recrop settings; run the recrop stage first")
    table = pq.read_table(out / "data" / "manifest.parquet")
    return validate_manifest(table, str(out / "data" / "manifest.parquet")), str(out / "data")


def read_boxes(cfg) -> tuple[str, pa.Table]:
    """(key, ``image_id`` + ``box``) of the complete copy, for the ``heatmap_crop`` TTA views."""
    out, key = recrop_dir(cfg)
    if not (out / SUCCESS).is_file():
        raise FileNotFoundError(f"{out}: extract.tta has heatmap_crop views but the recrop stage has not written "
                                f"boxes for recrop.model '{cfg.recrop.model}' and these settings")
    return key, pq.read_table(out / "boxes.parquet", columns=["image_id", "box"])

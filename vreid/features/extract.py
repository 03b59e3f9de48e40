"""Ray Data extraction of query / gallery features into one Parquet store per model.

CPU tasks decode and transform images (the same test transform as training's validation);
an actor pool (``map_batches`` with a callable class, ``ActorPoolStrategy``) loads each model
once per actor and runs it with TTA; ``write_parquet`` writes the parts. One pass per model
covers all of its stores (test and validation sets). A store goes to a temporary directory
renamed when complete, with ``_SUCCESS.json`` written last; a rerun skips stores whose
``_SUCCESS.json`` names the same checkpoint and redoes the rest.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from vreid.features.store import (
    SCHEMA_VERSION,
    SUCCESS,
    StoreError,
    filesystem,
    read_success,
    redact,
    store_uri,
    to_fixed_list,
    write_success,
)
from vreid.errors import InputError, root_cause
from vreid.fault_points import pause_point
from vreid.models.trained import read_trained_meta

log = logging.getLogger("vreid.features")


class UnreadableImages(InputError):
    """Images that could not be decoded at extraction under ``data.on_bad_image: fail``."""


def decode_batch(batch: dict[str, np.ndarray], root: str, input_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Decode + test transform of a batch of ``image_id`` (a Ray Data task body); the other
    columns pass through. An image that cannot be decoded is left out: the driver finds it
    missing from the store and applies ``data.on_bad_image`` (raising here would leave Ray
    Data's actor pool alive in the caller's process)."""
    from vreid.data.images import ImageDecodeError, decode_image
    from vreid.data.transforms import build_test_transform

    transform = build_test_transform(tuple(input_size))
    images, keep = [], []
    for i, image_id in enumerate(batch["image_id"]):
        try:
            img = decode_image(Path(root) / str(image_id))
        except ImageDecodeError as exc:
            log.warning("leaving out %s", exc)
            continue
        images.append(transform(img).numpy())
        keep.append(i)
    return {**{k: v[keep] for k, v in batch.items()},
            "image": np.stack(images) if images else np.zeros((0, 3, *input_size), np.float32)}


class FeatureExtractor:
    """Callable class for ``map_batches``: the model is loaded once per actor."""

    def __init__(self, model_dir: str, views: list[str], crop_ratio: float, dtype: str, device: str):
        import torch

        from vreid.models.trained import load_trained_model

        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("extract.num_gpus_per_actor > 0 but this actor sees no CUDA device")
        self.device = torch.device(device)
        self.model, _ = load_trained_model(model_dir, self.device)
        self.views, self.crop_ratio, self.dtype = list(views), crop_ratio, dtype

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        import torch

        from vreid.features.tta import PROB_COLUMNS, tta_outputs

        pause_point("extract.batch", rows=len(batch["image_id"]))
        images = torch.from_numpy(np.ascontiguousarray(batch["image"], dtype=np.float32)).to(self.device)
        boxes = torch.from_numpy(np.stack(batch["box"]).astype(np.float32)).to(self.device) if "box" in batch else None
        out = tta_outputs(self.model, images, self.views, self.crop_ratio, boxes)
        cols = {k: pa.array(v.tolist(), pa.string()) if v.dtype == object else pa.array(v)
                for k, v in batch.items() if k not in ("image", "box")}
        cols["feature"] = to_fixed_list(out["feature"].cpu().numpy(), self.dtype)
        for key in PROB_COLUMNS:
            if key in out:
                p = out[key].cpu().numpy().astype(np.float32)
                cols[key] = pa.array(list(p), type=pa.list_(pa.float32()))
        return pa.table(cols)


def store_metadata(model_dir: Path, model_meta: dict[str, Any], ecfg, rows: int, dim: int,
                   splits: list[str], skipped: list[dict[str, str]], boxes_key: str | None = None) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "model": model_meta["name"],
            "task": model_meta["build_args"]["task"], "checkpoint_sha256": model_meta["sha256"],
            "dim": dim, "dtype": ecfg.dtype, "image_size": list(model_meta["build_args"]["input_size"]),
            "tta": list(ecfg.tta), "crop_ratio": ecfg.crop_ratio, "rows": rows, "skipped": skipped, "splits": splits,
            "boxes": boxes_key,
            "model_dir": str(model_dir), "created": time.time()}


def _is_complete(done: dict[str, Any] | None, meta: dict[str, Any], rows: pa.Table, ecfg, on_bad_image: str,
                 boxes_key: str | None = None) -> bool:
    """A store of this checkpoint, views, dtype and re-crop boxes for these rows (a store that
    skipped images counts only while skipping is allowed)."""
    return done is not None and done.get("checkpoint_sha256") == meta["sha256"] \
        and done.get("rows", 0) + len(done.get("skipped", [])) == rows.num_rows \
        and (on_bad_image == "skip" or not done.get("skipped")) \
        and done.get("tta") == list(ecfg.tta) and done.get("dtype") == ecfg.dtype \
        and done.get("boxes") == boxes_key


def skipped_at_extraction(rows: pa.Table, written: pa.ChunkedArray, dataset_root: str | Path) -> list[dict[str, str]]:
    """Rows the decode tasks left out as unreadable, each with its decode error."""
    from vreid.data.images import ImageDecodeError, decode_image

    ids = rows.column("image_id")
    skipped = []
    for image_id in ids.filter(pc.invert(pc.is_in(ids, value_set=written))).to_pylist():
        try:
            decode_image(Path(dataset_root) / image_id)
            reason = "left out of the store although it decodes now"
        except ImageDecodeError as exc:
            reason = exc.reason
        skipped.append({"image_id": image_id, "reason": reason})
    return skipped


class _StoreWrite:
    """Where one store is written: a temporary directory renamed when complete on a filesystem;
    on an object store (no rename) the final prefix, which ``_SUCCESS.json`` alone marks complete."""

    def __init__(self, uri: str, done: dict[str, Any] | None):
        self.uri = uri
        self.fs, self.path = filesystem(uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.target = f"{self.path}.tmp" if self.local else self.path
        if done is not None:  # first unmark the old store: an object store deletes its files in no set order
            self.fs.delete_file(f"{self.path}/{SUCCESS}")
        for stale in {self.target, self.path}:  # an interrupted run leaves an incomplete directory: start over
            if self.fs.get_file_info(stale).type != pafs.FileType.NotFound:
                self.fs.delete_dir(stale)
        self.fs.create_dir(self.target)

    def abort(self) -> None:
        """Remove what this write left (its parts and any marker): a failed pass leaves nothing."""
        if self.fs.get_file_info(self.target).type != pafs.FileType.NotFound:
            self.fs.delete_dir(self.target)

    def finish(self, smeta: dict[str, Any]) -> None:
        write_success(self.fs, self.target, smeta)
        if self.local:
            shutil.move(self.target, self.path)


def with_boxes(ids: pa.Table, boxes: pa.Table) -> pa.Table:
    """``ids`` with each image's ``box`` (in the same row order); an image without one fails."""
    index = pc.index_in(ids.column("image_id"), value_set=boxes.column("image_id"))
    missing = ids.column("image_id").filter(pc.is_null(index)).to_pylist()
    if missing:
        raise ValueError(f"the recrop boxes have no box for {len(missing)} image(s) to extract, e.g. {missing[:3]}; "
                         "rerun the recrop stage on this dataset")
    return ids.append_column("box", boxes.column("box").take(index))


def _select_store(batch: pa.Table, index: int) -> pa.Table:
    return batch.filter(pc.equal(batch.column("store"), index)).drop_columns(["store"])


def extract_stores(model_dir: str | Path, stores: dict[str, pa.Table], dataset_root: str | Path, ecfg,
                   on_bad_image: str = "fail", boxes: tuple[str, pa.Table] | None = None) -> dict[str, dict[str, Any]]:
    """One model's features for several stores (uri -> manifest rows of some splits) in one Ray
    Data pass, so that the model actors start once. Stores already complete for this checkpoint
    (and TTA views, dtype, row count, boxes) are skipped; returns uri -> the store's metadata.

    ``boxes``: (key, table of ``image_id``, ``box``) from the recrop stage, which the
    ``heatmap_crop`` views need."""
    import ray

    from vreid.features.tta import BOX_VIEWS

    box_views = [v for v in ecfg.tta if v in BOX_VIEWS]
    if box_views and boxes is None:
        raise ValueError(f"extract.tta views {box_views} need the boxes of the recrop stage (recrop.enabled: true)")
    boxes_key = boxes[0] if box_views else None

    model_dir = Path(model_dir)
    meta = read_trained_meta(model_dir)
    out, todo = {}, []
    for uri, rows in stores.items():
        done = read_success(uri)
        if _is_complete(done, meta, rows, ecfg, on_bad_image, boxes_key):
            log.info("store %s: complete for checkpoint %s, skipping", redact(uri), meta["sha256"][:12])
            out[uri] = done
        else:
            todo.append((_StoreWrite(uri, done), rows))
    if not todo:
        return out
    input_size = tuple(meta["build_args"]["input_size"])
    use_gpu = ecfg.num_gpus_per_actor > 0
    ids = pa.concat_tables([rows.select(["image_id", "split"]).append_column(
        "store", pa.array(np.full(rows.num_rows, i, np.int32))) for i, (_, rows) in enumerate(todo)])
    if boxes_key is not None:
        ids = with_boxes(ids, boxes[1])
    # one block per batch, so decode tasks and model actors share the work without a shuffle
    ds = ray.data.from_arrow([ids.slice(i, ecfg.batch_size) for i in range(0, ids.num_rows, ecfg.batch_size)])
    ds = ds.map_batches(decode_batch, fn_kwargs={"root": str(dataset_root), "input_size": input_size},
                        batch_size=ecfg.batch_size, num_cpus=ecfg.cpus_per_decode_task, batch_format="numpy")
    ds = ds.map_batches(FeatureExtractor,
                        fn_constructor_kwargs={"model_dir": str(model_dir), "views": list(ecfg.tta),
                                               "crop_ratio": ecfg.crop_ratio, "dtype": ecfg.dtype,
                                               "device": "cuda" if use_gpu else "cpu"},
                        batch_size=ecfg.batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=ecfg.actors),
                        num_cpus=ecfg.cpus_per_actor, num_gpus=ecfg.num_gpus_per_actor,
                        **({"resources": dict(ecfg.resources_per_actor)} if ecfg.resources_per_actor else {}))
    if len(todo) > 1:  # the features stay in the object store while each store takes its rows
        ds = ds.materialize()
    metas, w = [], todo[0][0]
    try:
        for i, (w, rows) in enumerate(todo):
            ds.map_batches(_select_store, fn_kwargs={"index": i}, batch_format="pyarrow",
                           batch_size=None).write_parquet(w.target, filesystem=w.fs)
            parts = pads.dataset(w.target, filesystem=w.fs, format="parquet")
            if "feature" in parts.schema.names:
                written, dim = parts.to_table(columns=["image_id"]).column("image_id"), \
                    parts.schema.field("feature").type.list_size
            else:  # no image of the store decoded: no part was written
                written, dim = pa.chunked_array([], pa.string()), None
            metas.append(store_metadata(model_dir, meta, ecfg, len(written), dim,
                                        sorted(pc.unique(rows.column("split")).to_pylist()),
                                        skipped_at_extraction(rows, written, dataset_root), boxes_key))
        bad = [f"{Path(dataset_root) / s['image_id']}: {s['reason']}" for m in metas for s in m["skipped"]]
        empty = [redact(w.uri) for (w, _), m in zip(todo, metas) if m["skipped"] and not m["rows"]]
        if bad and (on_bad_image == "fail" or empty):
            why = ("data.on_bad_image: fail; 'skip' leaves them out" if on_bad_image == "fail"
                   else f"no image of {', '.join(empty)} decodes, nothing to store")
            raise UnreadableImages(f"{len(bad)} image(s) cannot be decoded ({why}): "
                                   + "; ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))
        for (w, _), smeta in zip(todo, metas):
            w.finish(smeta)
            out[w.uri] = smeta
            log.info("store %s: %d rows, dim %d, %s", redact(w.uri), smeta["rows"], smeta["dim"], ecfg.dtype)
    except Exception as exc:
        for pending, _ in todo:  # nothing of this pass stays behind, complete-looking or not
            if pending.uri not in out:
                pending.abort()
        err = root_cause(exc)  # a filesystem error (disk full, ...) of a Ray Data write task or of the driver
        if not isinstance(err, OSError):
            raise
        reason = f"[Errno {err.errno}] {os.strerror(err.errno)}" if err.errno else str(err)
        raise StoreError(f"{redact(w.uri)}: writing the store failed under {w.target}: {reason}; nothing "
                         "was marked complete and its partial files were removed") from None
    return out


def extract_features(cfg, manifest: pa.Table, store_sets: list[str],
                     models: list[str] | None = None) -> dict[str, dict[str, str]]:
    """Every trained reid/camera/orientation model of ``cfg`` -> its stores, one Ray Data pass per
    model; returns model -> store set -> uri.

    Store set ``"test"`` is the dataset's query + gallery; ``"val"`` the validation split held
    out of the training identities (the same split training validated on).
    """
    from vreid.data import dataset_root, split_table
    from vreid.train.launcher import training_manifest

    tables = {}
    for store_set in store_sets:
        if store_set == "val":
            if cfg.data.validation.num_ids == 0:
                raise ValueError("store set 'val' needs data.validation.num_ids > 0")
            table = training_manifest(cfg, manifest)
        elif store_set == "test":
            table = manifest
        else:
            raise ValueError(f"unknown store set '{store_set}'; expected test or val")
        tables[store_set] = pa.concat_tables([split_table(table, s) for s in ("query", "gallery")])
    from vreid.features.tta import BOX_VIEWS

    boxes = None
    if any(v in BOX_VIEWS for v in cfg.extract.tta):
        from vreid.recrop.stage import read_boxes

        boxes = read_boxes(cfg)
    out = {}
    for m in cfg.models:
        if models is not None and m.name not in models:
            continue
        uris = {s: store_uri(cfg.store_root, m.name, s) for s in store_sets}
        log.info("extract %s (%s): %d images on %d actor(s) (%g CPU, %g GPU each%s)", m.name, " + ".join(store_sets),
                 sum(t.num_rows for t in tables.values()), cfg.extract.actors, cfg.extract.cpus_per_actor,
                 cfg.extract.num_gpus_per_actor,
                 "".join(f", {v:g} {k}" for k, v in cfg.extract.resources_per_actor.items()))
        extract_stores(Path(cfg.run_dir) / "models" / m.name, {uris[s]: tables[s] for s in store_sets},
                       dataset_root(manifest), cfg.extract, cfg.data.on_bad_image, boxes)
        out[m.name] = uris
    return out

"""Ray Data extraction of query / gallery features into one Parquet store per model.

CPU tasks decode and transform images (the same test transform as training's validation);
an actor pool (``map_batches`` with a callable class, ``ActorPoolStrategy``) loads each model
once per actor and runs it with TTA; ``write_parquet`` writes the parts. Everything goes to a
temporary directory renamed when complete, with ``_SUCCESS.json`` written last; a rerun skips
stores whose ``_SUCCESS.json`` names the same checkpoint and redoes the rest.
"""

from __future__ import annotations

import logging
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
    filesystem,
    read_success,
    redact,
    store_uri,
    to_fixed_list,
    write_success,
)
from vreid.models.trained import read_trained_meta

log = logging.getLogger("vreid.features")


def decode_batch(batch: dict[str, np.ndarray], root: str, input_size: tuple[int, int],
                 on_bad_image: str = "fail") -> dict[str, np.ndarray]:
    """Decode + test transform of a batch of ``image_id`` (a Ray Data task body)."""
    from vreid.data.images import ImageDecodeError, decode_image
    from vreid.data.transforms import build_test_transform

    transform = build_test_transform(tuple(input_size))
    images, keep = [], []
    for i, image_id in enumerate(batch["image_id"]):
        try:
            img = decode_image(Path(root) / str(image_id))
        except ImageDecodeError as exc:
            if on_bad_image == "fail":
                raise
            log.warning("skipping %s", exc)
            continue
        images.append(transform(img).numpy())
        keep.append(i)
    return {"image_id": batch["image_id"][keep], "split": batch["split"][keep],
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

        images = torch.from_numpy(np.ascontiguousarray(batch["image"], dtype=np.float32)).to(self.device)
        out = tta_outputs(self.model, images, self.views, self.crop_ratio)
        cols = {"image_id": pa.array(batch["image_id"].tolist(), pa.string()),
                "split": pa.array(batch["split"].tolist(), pa.string()),
                "feature": to_fixed_list(out["feature"].cpu().numpy(), self.dtype)}
        for key in PROB_COLUMNS:
            if key in out:
                p = out[key].cpu().numpy().astype(np.float32)
                cols[key] = pa.array(list(p), type=pa.list_(pa.float32()))
        return pa.table(cols)


def store_metadata(model_dir: Path, model_meta: dict[str, Any], ecfg, rows: int, dim: int,
                   splits: list[str]) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "model": model_meta["name"],
            "task": model_meta["build_args"]["task"], "checkpoint_sha256": model_meta["sha256"],
            "dim": dim, "dtype": ecfg.dtype, "image_size": list(model_meta["build_args"]["input_size"]),
            "tta": list(ecfg.tta), "crop_ratio": ecfg.crop_ratio, "rows": rows, "splits": splits,
            "model_dir": str(model_dir), "created": time.time()}


def extract_store(model_dir: str | Path, rows: pa.Table, dataset_root: str | Path, uri: str, ecfg,
                  on_bad_image: str = "fail") -> dict[str, Any]:
    """Extract one model's features for ``rows`` (manifest rows of some splits) into ``uri``."""
    import ray

    model_dir = Path(model_dir)
    meta = read_trained_meta(model_dir)
    done = read_success(uri)
    if done is not None and done.get("checkpoint_sha256") == meta["sha256"] and done.get("rows") == rows.num_rows \
            and done.get("tta") == list(ecfg.tta) and done.get("dtype") == ecfg.dtype:
        log.info("store %s: complete for checkpoint %s, skipping", redact(uri), meta["sha256"][:12])
        return done
    fs, path = filesystem(uri)
    local = isinstance(fs, pafs.LocalFileSystem)  # object stores: _SUCCESS.json alone marks completion
    target = f"{path}.tmp" if local else path
    if done is not None:  # first unmark the old store: an object store deletes its files in no set order
        fs.delete_file(f"{path}/{SUCCESS}")
    for stale in {target, path}:  # an interrupted run leaves an incomplete directory: start over
        if fs.get_file_info(stale).type != pafs.FileType.NotFound:
            fs.delete_dir(stale)
    fs.create_dir(target)
    input_size = tuple(meta["build_args"]["input_size"])
    use_gpu = ecfg.num_gpus_per_actor > 0
    ids = rows.select(["image_id", "split"])
    # one block per batch, so decode tasks and model actors share the work without a shuffle
    ds = ray.data.from_arrow([ids.slice(i, ecfg.batch_size) for i in range(0, ids.num_rows, ecfg.batch_size)])
    ds = ds.map_batches(decode_batch, fn_kwargs={"root": str(dataset_root), "input_size": input_size,
                                                 "on_bad_image": on_bad_image},
                        batch_size=ecfg.batch_size, num_cpus=ecfg.cpus_per_decode_task, batch_format="numpy")
    ds = ds.map_batches(FeatureExtractor,
                        fn_constructor_kwargs={"model_dir": str(model_dir), "views": list(ecfg.tta),
                                               "crop_ratio": ecfg.crop_ratio, "dtype": ecfg.dtype,
                                               "device": "cuda" if use_gpu else "cpu"},
                        batch_size=ecfg.batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=ecfg.actors),
                        num_cpus=ecfg.cpus_per_actor, num_gpus=ecfg.num_gpus_per_actor)
    ds.write_parquet(target, filesystem=fs)
    parts = pads.dataset(target, filesystem=fs, format="parquet")
    n = parts.count_rows()
    first = parts.head(1, columns=["feature"])
    dim = first.schema.field("feature").type.list_size
    smeta = store_metadata(model_dir, meta, ecfg, n, dim, sorted(pc.unique(rows.column("split")).to_pylist()))
    write_success(fs, target, smeta)
    if local:
        shutil.move(target, path)
    log.info("store %s: %d rows, dim %d, %s", redact(uri), n, dim, ecfg.dtype)
    return smeta


def extract_features(cfg, manifest: pa.Table, store_set: str = "test",
                     models: list[str] | None = None) -> dict[str, str]:
    """Every trained reid/camera/orientation model of ``cfg`` → one store each; returns name → uri.

    ``store_set="test"`` extracts the dataset's query + gallery; ``"val"`` the validation split
    held out of the training identities (the same split training validated on).
    """
    from vreid.data import dataset_root, split_table
    from vreid.train.launcher import training_manifest

    if store_set == "val":
        table = training_manifest(cfg, manifest)
        if cfg.data.validation.num_ids == 0:
            raise ValueError("store set 'val' needs data.validation.num_ids > 0")
    else:
        table = manifest
    rows = pa.concat_tables([split_table(table, s) for s in ("query", "gallery")])
    out = {}
    for m in cfg.models:
        if models is not None and m.name not in models:
            continue
        uri = store_uri(cfg.store_root, m.name, store_set)
        model_dir = Path(cfg.run_dir) / "models" / m.name
        log.info("extract %s (%s set): %d images on %d actor(s) (%g CPU, %g GPU each)", m.name, store_set,
                 rows.num_rows, cfg.extract.actors, cfg.extract.cpus_per_actor, cfg.extract.num_gpus_per_actor)
        extract_store(model_dir, rows, dataset_root(manifest), uri, cfg.extract, cfg.data.on_bad_image)
        out[m.name] = uri
    return out

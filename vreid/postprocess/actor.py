"""The ensemble / post-process actor: loads and validates the feature stores once, caches the
ensemble and the k-NN graph, and serves ``run(postprocess_config)`` for the final run and for
Tune trials. Also the writer of ``<run>/results/<name>/``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vreid.config import PostprocessConfig, RunConfig
from vreid.data import split_table
from vreid.fault_points import pause_point
from vreid.features.store import StoreError, load_features, redact, store_uri, without_skipped
from vreid.models.trained import read_trained_meta
from vreid.postprocess.pipeline import (
    PostprocessError,
    PostprocessInputs,
    PostprocessResult,
    Side,
    ablation_table,
    check_comparison,
    run_comparison,
    run_postprocess,
)

log = logging.getLogger("vreid.postprocess")


def _side(rows: pa.Table) -> Side:
    ts = rows.column("timestamp").to_numpy(zero_copy_only=False)
    return Side(image_ids=np.asarray(rows.column("image_id").to_pylist(), dtype=object),
                orders=rows.column("order").to_numpy(), pids=rows.column("pid").to_numpy(),
                camids=rows.column("camid").to_numpy(), trackids=rows.column("trackid").to_numpy(),
                timestamps=np.asarray(ts, dtype=np.float64))


def load_inputs(cfg: RunConfig, manifest: pa.Table, store_set: str = "test") -> PostprocessInputs:
    """Read every model's store for query and gallery, validated against the manifest and the
    trained model's checkpoint digest; images a store skipped as unreadable are left out: a
    gallery image is then ranked last in ``track2.txt``, a test query fails here, naming it (a
    submission ranks every query of the official list)."""
    from vreid.train.launcher import training_manifest

    uris = {m.name: store_uri(cfg.store_root, m.name, store_set) for m in cfg.models}
    full = training_manifest(cfg, manifest) if store_set == "val" else manifest
    table, skipped = without_skipped(full, list(uris.values()))
    gone = {s["image_id"] for s in skipped}
    left_out = {}
    for split in ("query", "gallery"):
        rows = split_table(full, split)
        mask = np.isin(np.asarray(rows.column("image_id").to_pylist(), dtype=object), list(gone))
        left_out[split] = (rows.column("image_id").to_numpy(zero_copy_only=False)[mask],
                           rows.column("order").to_numpy()[mask], rows.num_rows)
    if store_set == "test" and len(left_out["query"][0]):
        raise PostprocessError(f"query images {left_out['query'][0][:10].tolist()} were left out as unreadable "
                               "(data.on_bad_image: skip), but track2.txt must rank every query of the official "
                               "list: replace or repair them and extract again")
    for s in skipped:
        log.warning("image %s left out: skipped at extraction (%s)", s["image_id"], s["reason"])
    features, extras, tasks, weights, classes = {}, {}, {}, {}, {}
    for m in cfg.models:
        meta = read_trained_meta(Path(cfg.run_dir) / "models" / m.name)
        uri = uris[m.name]
        qf, qx, smeta = load_features(uri, table, "query", expect_sha256=meta["sha256"])
        gf, gx, _ = load_features(uri, table, "gallery", expect_sha256=meta["sha256"])
        features[m.name] = (qf, gf)
        for k in qx:
            if qx[k].shape[1] != gx[k].shape[1]:
                raise StoreError(f"{redact(uri)}: column '{k}' has {qx[k].shape[1]} values per query image and "
                                 f"{gx[k].shape[1]} per gallery image; expected one probability per class on both")
        extras[m.name] = {k: (qx[k], gx[k]) for k in qx}
        tasks[m.name] = smeta["task"]
        weights[m.name] = m.weight
        if "class_ids" in meta:
            classes[m.name] = meta["class_ids"]
    query = _side(split_table(table, "query"))
    if store_set == "val":  # queries drawn from training tracks: one-image items, as AI City test queries
        query.trackids = np.full(len(query.trackids), -1, np.int64)
    return PostprocessInputs(query=query, gallery=_side(split_table(table, "gallery")),
                             features=features, extras=extras, tasks=tasks, weights=weights,
                             camera_classes=classes, gallery_left_out=left_out["gallery"][1].astype(np.int64),
                             num_gallery_official=left_out["gallery"][2], num_query_official=left_out["query"][2])


def write_results(inputs: PostprocessInputs, result: PostprocessResult, out_dir: str | Path,
                  config: PostprocessConfig, comparison: list[dict[str, Any]] | None = None) -> Path:
    """``rankings.parquet``, ``track2.txt``, ``metrics.json`` (ablation, final, the comparison rows;
    + the resolved config), atomically."""
    from vreid.eval import write_submission

    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    g = inputs.gallery
    ids = g.image_ids[result.indices]
    table = pa.table({
        "query_id": pa.array(inputs.query.image_ids.tolist(), pa.string()),
        "query_order": pa.array(inputs.query.orders, pa.int32()),
        "gallery_ids": pa.array([list(r) for r in ids], pa.list_(pa.string())),
        "gallery_orders": pa.array([list(r) for r in g.orders[result.indices]], pa.list_(pa.int32())),
        "distances": pa.array(list(result.distances.astype(np.float32)), pa.list_(pa.float32())),
    })
    pq.write_table(table, tmp / "rankings.parquet")
    rows, num_gallery = submission_rows(inputs, result)
    write_submission(rows, tmp / "track2.txt", num_gallery=num_gallery)
    metrics = {"name": config.name, "ablation": result.ablation, "final": result.final,
               "comparison": comparison or []}
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (tmp / "postprocess.json").write_text(config.model_dump_json(indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def submission_rows(inputs: PostprocessInputs, result: PostprocessResult) -> tuple[np.ndarray, int]:
    """The rows of ``track2.txt`` and the official gallery size: one row per official query in
    official order, gallery ``order`` values (indices into the official gallery list), images
    left out as unreadable ranked last."""
    q, g = inputs.query, inputs.gallery
    num_q = inputs.num_query_official if inputs.num_query_official is not None else len(q.orders)
    num_g = inputs.num_gallery_official if inputs.num_gallery_official is not None else len(g.orders)
    order = np.argsort(q.orders, kind="stable")
    if not np.array_equal(q.orders[order], np.arange(num_q)):
        raise PostprocessError(f"the queries' official orders are not 0..{num_q - 1} (missing: "
                               f"{np.setdiff1d(np.arange(num_q), q.orders)[:10].tolist()}): a submission ranks "
                               "every query of the official list")
    rows = g.orders[result.indices][order].astype(np.int64)
    left = np.sort(inputs.gallery_left_out)
    if rows.shape[1] < min(100, num_g) and len(left):
        rows = np.hstack([rows, np.broadcast_to(left, (len(rows), len(left)))])
    return rows, num_g


class PostprocessActor:
    """Holds the loaded stores and the caches; use as ``ray.remote(PostprocessActor)``."""

    def __init__(self, cfg: dict[str, Any], store_set: str = "test"):
        self.cfg = RunConfig.model_validate(cfg)
        self.store_set = store_set
        self._inputs: PostprocessInputs | None = None
        self.cache: dict = {}

    def inputs_ref(self) -> PostprocessInputs:
        """The loaded stores; loaded on the first call, so that bad input reaches the caller as the
        error it is (an actor whose constructor raises only reports that it died)."""
        from vreid.data import load_dataset

        if self._inputs is None:
            self._inputs = load_inputs(self.cfg, load_dataset(self.cfg.data), self.store_set)
        return self._inputs

    def run(self, pcfg: dict[str, Any], out_dir: str | None = None) -> dict[str, Any]:
        config = PostprocessConfig.model_validate(pcfg)
        inputs = self.inputs_ref()
        check_comparison(inputs, config)  # a bad comparison entry fails before any work
        pause_point("postprocess.run", results=config.name)
        result = run_postprocess(inputs, config, self.cache)
        comparison = run_comparison(inputs, config, self.cache)
        if out_dir is not None:
            write_results(inputs, result, out_dir, config, comparison)
        return {"ablation": result.ablation, "final": result.final, "comparison": comparison,
                "indices": result.indices, "distances": result.distances}


def postprocess_run(cfg: RunConfig, pcfg: PostprocessConfig | None = None, store_set: str = "test") -> dict:
    """Start the actor, run ``pcfg`` (default: the config's), write ``<run>/results/<name>/``."""
    import ray

    pcfg = pcfg or cfg.postprocess
    # restarted (elsewhere) when it dies with its node, and the call retried (run() is idempotent)
    # for as long as it can restart: a bounded retry count is used up while the actor is only
    # unreachable, before the GCS has declared its node dead and restarted it
    actor = ray.remote(num_cpus=1, resources=pcfg.actor_resources or None, max_restarts=pcfg.actor_max_restarts,
                       max_task_retries=-1 if pcfg.actor_max_restarts else 0)(PostprocessActor).remote(
        cfg.model_dump(mode="json"), store_set)
    out_dir = str(Path(cfg.run_dir).resolve() / "results" / pcfg.name)
    out = ray.get(actor.run.remote(pcfg.model_dump(mode="json"), out_dir))
    ray.kill(actor)
    if out["ablation"]:
        log.info("ablation (%s):\n%s", pcfg.name, ablation_table(out["ablation"]))
    if out["comparison"]:
        log.info("re-ranking level comparison:\n%s", ablation_table(out["comparison"]))
    log.info("results written to %s", out_dir)
    return {**out, "out_dir": out_dir}

"""Runs every model of a config as its own ``TorchTrainer`` (Ray Train V2), all at once.

Each trainer's ``fit`` runs inside a zero-CPU Ray task so the trainers proceed concurrently;
each has its own ``ScalingConfig`` and ``FailureConfig`` (restarts from the last checkpoint) and a
storage name derived from the model's config, so a rerun of the same config resumes where it
stopped and a finished model (``models/<name>/_SUCCESS.json`` with the same key) is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vreid.config import ModelConfig, RunConfig
from vreid.data import dataset_root, split_table, validation_split, write_manifest
from vreid.models.trained import SUCCESS, export_trained_model, read_trained_meta
from vreid.resources import (InfeasibleResources, check_requests, cluster_capacity, describe, fmt, model_request,
                             placeable)

log = logging.getLogger("vreid.train")


@dataclass
class ModelResult:
    name: str
    status: str  # trained | skipped | failed
    model_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def table_fingerprint(table: pa.Table) -> str:
    """Digest of the rows a model trains on (image, split, label), for tables not fixed by the config."""
    h = hashlib.sha256()
    for col in ("image_id", "split", "pid"):
        h.update(json.dumps(table.column(col).to_pylist()).encode())
    return h.hexdigest()[:16]


def model_key(cfg: RunConfig, model: ModelConfig, rows: str | None = None) -> str:
    """What a trained model depends on: its own config, the data, the validation split and seed
    (and ``rows``, the fingerprint of a training table built outside the config, e.g. pseudo-labels)."""
    payload = {"model": model.model_dump(mode="json", exclude={"weight", "scaling"}),
               "data": cfg.data.model_dump(mode="json", exclude={"on_bad_image", "verify_images"}),
               "seed": cfg.seed, **({"rows": rows} if rows else {})}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def with_run_paths(model: ModelConfig, run_dir: Path) -> ModelConfig:
    """``model`` as the workers see it: ``init_from`` relative to the run directory made absolute
    (the key and the recorded config keep it relative, so a moved run is still complete)."""
    if not model.init_from:
        return model
    return model.model_copy(update={"init_from": str(run_dir / model.init_from)})


def training_manifest(cfg: RunConfig, manifest: pa.Table) -> pa.Table:
    """Training rows plus, when configured, the validation query/gallery held out of them."""
    v = cfg.data.validation
    if v.num_ids > 0:
        return validation_split(manifest, v.num_ids, v.queries_per_id, v.seed)
    return split_table(manifest, "train")


def check_resources(models: list[ModelConfig], wait_s: float = 0.0) -> None:
    """Fail fast when a model's worker group can never be placed (Train V2 would wait forever):
    not on the cluster's nodes, nor on the nodes its autoscaler can add (:mod:`vreid.resources`).

    A group the autoscaler's node types can hold is left to wait (Train V2 waits for the nodes).
    With the node types unknown and ``wait_s`` > 0, the autoscaler is asked for the bundles and
    given that long; the request is withdrawn afterwards, so that the nodes can go idle later.
    """
    import ray

    requests = [model_request(m) for m in models]
    cap = cluster_capacity()
    waiting = check_requests(requests, cap, wait_s=wait_s)
    if waiting and cap.node_types is None:  # wait_s > 0: ask the autoscaler, then poll the nodes
        from ray.autoscaler.sdk import request_resources

        deadline = time.monotonic() + wait_s
        request_resources(bundles=[r.bundle for r in waiting for _ in range(r.count)])
        try:
            while True:
                cap = cluster_capacity()
                if all(placeable(r.bundle, r.count, cap.nodes) >= r.count for r in waiting):
                    break
                if time.monotonic() >= deadline:
                    raise InfeasibleResources(
                        "; ".join(f"{r.who} asks for {fmt(r.bundle)}" for r in waiting)
                        + f": still not on the cluster's nodes after waiting {wait_s:g} s for the autoscaler "
                        f"(train.resource_wait_s; {describe(cap)})")
                time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
        finally:
            request_resources(bundles=[])  # a standing request would keep the nodes from ever going idle
    total = ray.cluster_resources()
    together: dict[str, float] = {}
    for r in requests:
        for res, v in r.bundle.items():
            together[res] = together.get(res, 0.0) + v * r.count
    short = [f"{v:g} {res} (the cluster has {total.get(res, 0.0):g})" for res, v in together.items()
             if v > total.get(res, 0.0) + 1e-9]
    if short and not waiting:
        log.warning("the models ask for %s together: some start only when others finish", " and ".join(short))


class UnreadableTrainingImages(ValueError):
    """Training images that do not decode, under ``data.on_bad_image: fail``."""


def _decode_failures(root: str, paths: list[str]) -> list[dict[str, str]]:
    from vreid.data.images import ImageDecodeError, decode_image

    bad = []
    for rel in paths:
        try:
            decode_image(Path(root) / rel)
        except ImageDecodeError as exc:
            bad.append({"image_id": rel, "reason": str(exc.reason)})
    return bad


DECODE_CHUNK = 2000  # images per decode-check task


def check_training_images(table: pa.Table, root: Path, on_bad_image: str) -> tuple[pa.Table, list[dict[str, str]]]:
    """Decode every image (and mask) of a training table before training starts, in Ray tasks:
    under ``fail`` an undecodable one raises :class:`UnreadableTrainingImages` naming each file;
    under ``skip`` its rows are left out and returned with the reasons."""
    import ray

    masks = [m for m in table.column("mask_path").to_pylist() if m]
    paths = sorted(set(table.column("image_id").to_pylist()) | set(masks))
    task = ray.remote(num_cpus=0.5)(_decode_failures)
    refs = [task.remote(str(root), paths[i: i + DECODE_CHUNK]) for i in range(0, len(paths), DECODE_CHUNK)]
    bad = [b for part in ray.get(refs) for b in part]
    if not bad:
        return table, []
    if on_bad_image == "fail":
        raise UnreadableTrainingImages(
            f"{len(bad)} training image(s) cannot be decoded (data.on_bad_image: fail; 'skip' leaves them out): "
            + "; ".join(f"{root / b['image_id']}: {b['reason']}" for b in bad[:10]) + (" ..." if len(bad) > 10 else ""))
    names = {b["image_id"] for b in bad}
    keep = pc.invert(pc.or_kleene(pc.is_in(table.column("image_id"), pa.array(sorted(names))),
                            pc.is_in(table.column("mask_path"), pa.array(sorted(names)))))
    return table.filter(pc.fill_null(keep, True)), bad


def preflight(models: list[ModelConfig], table: pa.Table, dataset: str = "the dataset") -> None:
    """Errors a user can fix, raised before any worker starts: unknown backbone (with close timm
    names), an input size the network cannot take, a P x K the training split cannot fill, an
    attribute head on a dataset without colour / type labels."""
    from vreid.models import build_model
    from vreid.train.loop import attribute_classes, stage_rows

    train = table.filter(pc.equal(table.column("split"), "train"))
    for m in models:
        try:
            build_model(m.backbone, head=m.head, task=m.task, num_classes=2, input_size=tuple(m.input_size),
                        num_colors=2 if m.head != "bnneck" else 0, num_types=2 if m.head != "bnneck" else 0,
                        ibn=m.ibn, last_stride=m.last_stride, pooling=m.pooling, embedding_dim=m.embedding_dim)
        except ValueError as exc:
            raise ValueError(f"model '{m.name}': {exc}") from None
        if m.init_from:
            try:
                read_trained_meta(m.init_from)
            except FileNotFoundError as exc:
                raise ValueError(f"model '{m.name}': init_from: {exc}") from None
        for stage in m.recipe:
            rows = stage_rows(train, stage)
            if not m.init_from:
                try:
                    attribute_classes(rows, m.head, dataset)
                except ValueError as exc:
                    raise ValueError(f"model '{m.name}' stage '{stage.name}': {exc}") from None
            ids = len(pc.unique(rows.column("pid")))
            if ids < stage.p * m.scaling.num_workers:
                raise ValueError(
                    f"model '{m.name}' stage '{stage.name}': P x K = {stage.p} x {stage.k} on "
                    f"{m.scaling.num_workers} worker(s) needs {stage.p * m.scaling.num_workers} identities, "
                    f"the training split has {ids}")


# How running out of memory shows in a failed worker group's error: Python's MemoryError, torch's
# CPU / CUDA allocators, pyarrow's, Ray's memory monitor (OutOfMemoryError) and the kernel OOM killer.
OOM_MARKERS = ("MemoryError", "OutOfMemoryError", "can't allocate memory", "Cannot allocate memory",
               "CUDA out of memory", "running low on memory", "out of memory", "oom-kill")


def out_of_memory_reason(exc: BaseException, m: ModelConfig) -> str | None:
    """The error a user reads when ``m``'s workers ran out of memory, naming the failing allocation
    and what to change; None when ``exc`` is about something else."""
    text = f"{type(exc).__name__}: {exc}"
    hits = [line.strip() for line in text.splitlines() if any(k in line for k in OOM_MARKERS)]
    if not hits:
        return None
    return (f"out of memory: a training worker of model '{m.name}' could not allocate what it needed: "
            f"{hits[-1][:300]}; lower the batch (recipe p x k), input_size or train.loader_workers, or give each "
            "worker more memory (fewer workers per node, larger nodes)")


def _fit(model_cfg: dict, loop_cfg: dict, storage: str, run_name: str, max_failures: int) -> dict[str, Any]:
    """Body of the zero-CPU task that owns one trainer; returns the final checkpoint's state."""
    import torch
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from vreid.train.loop import HISTORY_FILE, STATE_FILE, STATUS_FILE, train_loop_per_worker

    m = ModelConfig.model_validate(model_cfg)
    resources = {"CPU": m.scaling.cpus_per_worker, **m.scaling.resources}
    if m.scaling.use_gpu:
        resources["GPU"] = m.scaling.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**loop_cfg, "model": model_cfg, "run_path": str(Path(storage) / run_name)},
        scaling_config=ScalingConfig(num_workers=m.scaling.num_workers, use_gpu=m.scaling.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=run_name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # TrainingFailedError wraps the worker's exception
        return {"error": out_of_memory_reason(exc, m) or f"{type(exc).__name__}: {exc}"}
    if result.checkpoint is None:
        return {"error": "training reported no checkpoint"}
    with result.checkpoint.as_directory() as d:
        if (Path(d) / STATUS_FILE).is_file():
            status = json.loads((Path(d) / STATUS_FILE).read_text())
            return {"error": f"loss became NaN/Inf in epoch {status['epoch']} (stage {status['stage']}); "
                             "lower the learning rate or check the data"}
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        history = json.loads((Path(d) / HISTORY_FILE).read_text())
    return {"state_dict": state["model"], "build_args": json.loads(state["build_args"]),
            "class_ids": json.loads(state["class_ids"]),
            "history": history, "metrics": result.metrics}


def train_models(cfg: RunConfig, manifest: pa.Table, only: list[str] | None = None, *,
                 tables: dict[str, pa.Table] | None = None, work: str = "train") -> list[ModelResult]:
    """Train every model of ``cfg`` (or those named in ``only``) concurrently; returns one result
    per model (none raises). ``tables``: a training manifest per model name when it is not the
    config's own (:func:`training_manifest`), e.g. each UDA model's pseudo-labelled test images;
    ``work``: the folder of the run directory for the trainers' manifests and checkpoints."""
    import ray

    run_dir = Path(cfg.run_dir).resolve()
    models = [m for m in cfg.models if only is None or m.name in only]
    if tables is not None and (missing := [m.name for m in models if m.name not in tables]):
        raise ValueError(f"train_models: no training table for {missing}")
    results: dict[str, ModelResult] = {}
    todo = []
    for m in models:
        key = model_key(cfg, m, table_fingerprint(tables[m.name]) if tables is not None else None)
        out = run_dir / "models" / m.name
        done = out / SUCCESS
        if done.is_file() and json.loads(done.read_text()).get("key") == key:
            results[m.name] = ModelResult(m.name, "skipped", out,
                                          json.loads((out / "model.json").read_text()).get("final_metrics", {}))
            log.info("model %s: already trained (%s), skipping", m.name, out)
        else:
            todo.append((m, key))
    if not todo:
        return [results[m.name] for m in models]
    check_resources([m for m, _ in todo], cfg.train.resource_wait_s)
    shared = training_manifest(cfg, manifest) if tables is None else None  # the config's own, for all
    if shared is not None:
        tables = {m.name: shared for m, _ in todo}
    root = dataset_root(manifest)
    dataset = f"dataset '{cfg.data.root}' (format {cfg.data.format})"
    skipped: dict[str, list[dict[str, str]]] = {}
    if not cfg.data.verify_images:  # otherwise every image was decoded when the dataset was read
        checked: dict[int, tuple[pa.Table, list]] = {}
        for m, _ in todo:
            t = tables[m.name]
            if id(t) not in checked:
                checked[id(t)] = check_training_images(t, root, cfg.data.on_bad_image)
            tables[m.name], skipped[m.name] = checked[id(t)]
        if shared is not None:
            shared = tables[todo[0][0].name]
        for name, bad in skipped.items():
            if bad:
                log.warning("model %s: %d undecodable training image(s) left out (data.on_bad_image: skip): %s",
                            name, len(bad), ", ".join(b["image_id"] for b in bad[:5]))
    for m, _ in todo:
        preflight([with_run_paths(m, run_dir)], tables[m.name], dataset)
    shared_path = write_manifest(shared, run_dir / work / "manifest.parquet") if shared is not None else None
    manifests = {}
    for m, _ in todo:
        table = tables[m.name]
        path = shared_path or write_manifest(table, run_dir / work / "manifests" / f"{m.name}.parquet")
        manifests[m.name] = (str(path), pc.sum(pc.not_equal(table.column("split"), "train")).as_py() or 0)
    loop_cfg = {"dataset_root": str(root), "dataset": dataset,
                "seed": cfg.seed, "num_threads": cfg.train.num_threads, "amp": cfg.train.amp,
                "eval_every": cfg.train.eval_every, "eval_batch_size": cfg.train.eval_batch_size,
                "loader_workers": cfg.train.loader_workers}
    storage = str(run_dir / work / "ray")
    fit = ray.remote(num_cpus=0, max_retries=0)(_fit)
    pending = {}
    for m, key in todo:
        manifest_path, n_val = manifests[m.name]
        log.info("model %s: %s/%s on %d worker(s) (use_gpu=%s, %g CPU, %g GPU each), %d epochs, "
                 "%d validation images", m.name, m.backbone, m.head, m.scaling.num_workers, m.scaling.use_gpu,
                 m.scaling.cpus_per_worker, m.scaling.gpus_per_worker if m.scaling.use_gpu else 0,
                 sum(s.epochs for s in m.recipe), n_val)
        ref = fit.remote(with_run_paths(m, run_dir).model_dump(mode="json"), {**loop_cfg, "manifest_path": manifest_path}, storage,
                         f"{m.name}-{key}", cfg.train.max_failures)
        pending[ref] = (m, key)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        m, key = pending.pop(done[0])
        out = run_dir / "models" / m.name
        try:
            res = ray.get(done[0])
        except Exception as exc:  # the task itself died
            res = {"error": out_of_memory_reason(exc, m) or f"{type(exc).__name__}: {exc}"}
        if "error" in res:
            log.error("model %s failed: %s", m.name, res["error"])
            results[m.name] = ModelResult(m.name, "failed", out, res.get("metrics") or {}, res["error"])
            continue
        final = {k: v for k, v in res["metrics"].items() if isinstance(v, (int, float, str))}
        export_trained_model(res["state_dict"], res["build_args"],
                             {"key": key, "name": m.name, "config": m.model_dump(mode="json"),
                              "class_ids": res["class_ids"], "skipped_images": skipped.get(m.name, []),
                              "history": res["history"], "final_metrics": final}, out)
        log.info("model %s: trained, written to %s (%s)", m.name, out,
                 ", ".join(f"{k}={v:.4g}" for k, v in final.items() if isinstance(v, float)))
        results[m.name] = ModelResult(m.name, "trained", out, final)
    return [results[m.name] for m in models]


def require_trained(results: list[ModelResult]) -> None:
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise RuntimeError("training failed for " + "; ".join(f"{r.name}: {r.error}" for r in failed))


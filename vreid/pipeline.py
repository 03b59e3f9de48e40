"""The flow of DESIGN.md as one function: synth -> train -> [recrop: boxes, cropped copy, models
trained on it] -> extract -> [UDA stage 2: pseudo-label,
fine-tune, extract] -> tune -> post-process -> report. Each stage skips work that is complete for
the same config, so a rerun after a failure continues where it stopped; results of a complete
run are replaced only atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from vreid.config import PostprocessConfig, RunConfig, dump_config, load_config
from vreid.data import load_dataset, skipped_images
from vreid.fault_points import pause_point

log = logging.getLogger("vreid.pipeline")


def dataset_summary(manifest) -> str:
    lines = [f"{'split':8s} {'images':>7s} {'ids':>5s} {'cams':>5s} {'tracks':>6s}"]
    for split in ("train", "query", "gallery"):
        part = manifest.filter(pc.equal(manifest.column("split"), split))
        lines.append(f"{split:8s} {part.num_rows:7d} {pc.count_distinct(part.column('pid')).as_py():5d} "
                     f"{pc.count_distinct(part.column('camid')).as_py():5d} "
                     f"{pc.count_distinct(part.column('trackid')).as_py():6d}")
    return "\n".join(lines)


def check_run_dir(run_dir: str) -> Path:
    """The run directory must be writable before any stage starts (a clear error, not a late one)."""
    if "://" in run_dir:
        raise ValueError(f"run_dir '{run_dir}': the pipeline job writes models and results locally; "
                         "give a shared filesystem path (extract.store_root may be a URI: the feature stores)")
    path = Path(run_dir).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"run_dir '{run_dir}' cannot be written: {exc}") from None
    return path


def check_cluster(cfg: RunConfig) -> None:
    """Say so at once when a stage asks for resources (CPUs, GPUs, custom resources) that no node of
    the cluster has and no node type of its autoscaler can provide (:mod:`vreid.resources`); what
    the autoscaler can provide is left to wait for it."""
    from vreid.resources import check_requests, run_requests

    check_requests(run_requests(cfg), wait_s=cfg.train.resource_wait_s)


def _tune_key(cfg: RunConfig) -> str:
    """What a finished sweep depends on: its settings and the exact weights of every model."""
    from vreid.models.trained import read_trained_meta

    weights = [read_trained_meta(Path(cfg.run_dir) / "models" / m.name)["sha256"] for m in cfg.models]
    # (how often a failed trial is retried changes no result: not part of the key)
    payload = {"tune": cfg.tune.model_dump(mode="json", exclude={"max_failures"}), "postprocess": cfg.postprocess.model_dump(mode="json"),
               "models": weights, "extract": cfg.extract.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def tuned_postprocess(cfg: RunConfig, manifest, callbacks: list | None = None) -> PostprocessConfig:
    """The Tune stage: sweep on the validation stores, or reuse a finished sweep of this config."""
    from vreid.postprocess.actor import load_inputs
    from vreid.tune.sweep import run_sweep

    out = Path(cfg.run_dir).resolve() / "tune" / cfg.tune.name
    key = _tune_key(cfg)
    summary = out / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("key") == key:
        log.info("stage tune: sweep already complete (%s), reusing its best configuration", out)
        return load_config(out / "best_postprocess.yaml", model=PostprocessConfig)
    marker = out / "sweep_key.txt"  # written first: an interrupted sweep of this config resumes
    if out.exists() and not (marker.is_file() and marker.read_text() == key):
        log.info("stage tune: %s holds a sweep of other models or settings, starting over", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(key)
    result = run_sweep(cfg, load_inputs(cfg, manifest, "val"), callbacks=callbacks)
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "key": key}, indent=1))
    return result["best_config"]


def run_uda_stage(cfg: RunConfig, manifest, timings: dict[str, float]) -> RunConfig:
    """UDA stage 2: post-process stage 1 for the comparison, pseudo-label, fine-tune, re-extract,
    post-process stage 2 with the same settings; returns the config the later stages run on."""
    from vreid.features.extract import extract_features
    from vreid.postprocess.actor import postprocess_run
    from vreid.train.uda import train_stage2, write_stage2_summary

    with _stage("postprocess_stage1", timings):
        stage1 = postprocess_run(cfg, cfg.postprocess.model_copy(update={"name": "stage1"}))
    with _stage("train_stage2", timings):
        cfg2, todo, quality = train_stage2(cfg, manifest)
    test = {"stage1": stage1["ablation"]}
    if todo:
        with _stage("extract_stage2", timings):
            extract_features(cfg2, manifest, store_sets(cfg2))
        with _stage("postprocess_stage2", timings):
            test["stage2"] = postprocess_run(cfg2, cfg2.postprocess.model_copy(update={"name": "stage2"}))["ablation"]
    write_stage2_summary(cfg.run_dir, todo, quality, test)
    return cfg2


def run_recrop_stage(cfg: RunConfig, manifest, crop_models: list[str], timings: dict[str, float]) -> None:
    """Re-crop (003 §3.1): boxes and the cropped copy from the initial model, then the models that
    train on the copy (domain 'crop'), each on the training table plus the crops of its train rows."""
    from vreid.data.domains import add_crop_copy
    from vreid.recrop.stage import read_crop_copy, run_recrop
    from vreid.train.launcher import require_trained, train_models, training_manifest

    with _stage("recrop", timings):
        run_recrop(cfg, manifest)
    if crop_models:
        with _stage("train_crop", timings):
            table = add_crop_copy(training_manifest(cfg, manifest), *read_crop_copy(cfg))
            require_trained(train_models(cfg, manifest, only=crop_models, tables={m: table for m in crop_models},
                                         work="train_crop"))


def store_sets(cfg: RunConfig) -> list[str]:
    """The test set's stores, and the validation set's when there is one (the Tune sweep's)."""
    return ["test", "val"] if cfg.data.validation.num_ids > 0 else ["test"]


@contextmanager
def _stage(name: str, timings: dict[str, float]):
    log.info("stage %s: start", name)
    pause_point("pipeline.stage", stage=name)
    t0 = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t0
    log.info("stage %s: done in %.1f s", name, timings[name])


def run_pipeline(cfg: RunConfig) -> dict[str, Any]:
    """Run every stage in order; returns the timings, the final ablation and the output paths."""
    import ray

    from vreid.features.extract import extract_features
    from vreid.postprocess.actor import postprocess_run
    from vreid.postprocess.pipeline import ablation_table
    from vreid.report import write_report
    from vreid.tracking import open_tracker
    from vreid.train.launcher import require_trained, train_models

    run_dir = check_run_dir(cfg.run_dir)
    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    res = ray.cluster_resources()
    log.info("run %s: Ray cluster with %g CPUs, %g GPUs; outputs under %s", cfg.name, res.get("CPU", 0),
             res.get("GPU", 0), run_dir)
    check_cluster(cfg)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    tracker = open_tracker(cfg)
    timings: dict[str, float] = {}
    with _stage("data", timings):
        manifest = load_dataset(cfg.data)
        for skipped in skipped_images(manifest):
            log.warning("skipped image %s: %s", skipped["image_id"], skipped["reason"])
        log.info("dataset %s (%s):\n%s", cfg.data.root, cfg.data.format, dataset_summary(manifest))
    crop_models = [m.name for m in cfg.models if any("crop" in st.domains for st in m.recipe)]
    with _stage("train", timings):
        require_trained(train_models(cfg, manifest, only=[m.name for m in cfg.models if m.name not in crop_models]))
    if cfg.recrop.enabled:
        run_recrop_stage(cfg, manifest, crop_models, timings)
    tracker.log_models(run_dir, [m.name for m in cfg.models])
    validation = cfg.data.validation.num_ids > 0
    with _stage("extract", timings):
        extract_features(cfg, manifest, store_sets(cfg))
    if cfg.uda.enabled:
        cfg = run_uda_stage(cfg, manifest, timings)
    pcfg = cfg.postprocess
    if cfg.tune.space:
        if not validation:
            raise ValueError("tune.space is set but data.validation.num_ids is 0: the sweep needs a validation split")
        with _stage("tune", timings):
            pcfg = tuned_postprocess(cfg, manifest, tracker.tune_callbacks())
    with _stage("postprocess", timings):
        out = postprocess_run(cfg, pcfg)
    if cfg.data.format == "vehicleid" and out["ablation"]:
        from vreid.eval.gallery_draws import vehicleid_draws

        with _stage("gallery_draws", timings):
            vehicleid_draws(cfg, pcfg, manifest)
    with _stage("report", timings):
        report = write_report(run_dir, manifest, pcfg.name, dump_config(cfg), timings)
    (run_dir / "timings.json").write_text(json.dumps(timings, indent=1))
    tracker.log_results(pcfg.name, out["ablation"], report, [Path(out["out_dir"]) / "metrics.json"])
    if out["ablation"]:
        print(f"\nablation on the test split ({pcfg.name}):\n{ablation_table(out['ablation'])}")
    print(f"\nresults: {out['out_dir']}\nreport:  {report}\ntimings: " +
          ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    return {"timings": timings, "ablation": out["ablation"], "results": out["out_dir"], "report": str(report)}

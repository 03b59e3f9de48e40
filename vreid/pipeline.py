"""The flow of DESIGN.md as one function: dataset -> ... (stages are added as they land)."""

from __future__ import annotations

import logging
import time

import pyarrow.compute as pc

from vreid.config import RunConfig
from vreid.data import load_dataset, skipped_images

log = logging.getLogger("vreid.pipeline")


def dataset_summary(manifest) -> str:
    lines = [f"{'split':8s} {'images':>7s} {'ids':>5s} {'cams':>5s} {'tracks':>6s}"]
    for split in ("train", "query", "gallery"):
        part = manifest.filter(pc.equal(manifest.column("split"), split))
        lines.append(f"{split:8s} {part.num_rows:7d} {pc.count_distinct(part.column('pid')).as_py():5d} "
                     f"{pc.count_distinct(part.column('camid')).as_py():5d} "
                     f"{pc.count_distinct(part.column('trackid')).as_py():6d}")
    return "\n".join(lines)


def run_pipeline(cfg: RunConfig) -> dict:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    log.info("stage data: %s dataset at %s", cfg.data.format, cfg.data.root)
    manifest = load_dataset(cfg.data)
    timings["data"] = time.perf_counter() - t0
    skipped = skipped_images(manifest)
    if skipped:
        log.warning("skipped %d unreadable images (first: %s)", len(skipped), skipped[0])
    print(dataset_summary(manifest))
    return {"manifest": manifest, "timings": timings}

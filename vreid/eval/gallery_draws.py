"""VehicleID's protocol (Liu et al., CVPR 2016; METHODS.md, On-disk formats): the gallery is one
random image per identity, so a score is the mean over N seeded gallery draws, reported with its
spread. The test images are the same in every draw (only which of them is the gallery changes),
so one feature store serves all draws: each draw re-splits the stored features by image id."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vreid.config import PostprocessConfig, RunConfig
from vreid.postprocess.pipeline import PostprocessInputs, run_postprocess

log = logging.getLogger("vreid.eval")
DRAWS_FILE = "gallery_draws.json"


def redraw(inputs: PostprocessInputs, query: Any, gallery: Any) -> PostprocessInputs:
    """``inputs`` re-split into another draw's query and gallery sides (``Side`` objects over the
    same images): every feature and head output follows its image id."""
    ids = np.concatenate([inputs.query.image_ids, inputs.gallery.image_ids])
    pos = {image_id: i for i, image_id in enumerate(ids)}
    missing = [i for i in [*query.image_ids, *gallery.image_ids] if i not in pos]
    if missing:
        raise ValueError(f"gallery draw: image '{missing[0]}' has no stored feature (the draws must cover "
                         "the same test images)")
    qi = np.array([pos[i] for i in query.image_ids], dtype=np.int64)
    gi = np.array([pos[i] for i in gallery.image_ids], dtype=np.int64)

    def split(pair: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        both = np.concatenate(pair)
        return both[qi], both[gi]

    return replace(inputs, query=query, gallery=gallery,
                   features={m: split(f) for m, f in inputs.features.items()},
                   extras={m: {k: split(v) for k, v in cols.items()} for m, cols in inputs.extras.items()})


def spread(draws: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric: mean, standard deviation (ddof 1; 0 for one draw), min and max over the draws."""
    keys = [k for k, v in draws[0].items() if isinstance(v, (int, float))]
    out = {}
    for k in keys:
        x = np.array([d[k] for d in draws], dtype=np.float64)
        out[k] = {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
                  "min": float(x.min()), "max": float(x.max())}
    return out


def gallery_draws(inputs: PostprocessInputs, sides: list[tuple[Any, Any]], pcfg: PostprocessConfig) -> dict:
    """Run the post-processing ``pcfg`` on every draw's (query, gallery) sides; returns the final
    metrics of each draw and their mean and spread."""
    draws = []
    for query, gallery in sides:
        final = run_postprocess(redraw(inputs, query, gallery), pcfg, with_ablation=False).final
        draws.append({k: v for k, v in final.items() if k != "step"})
    return {"num_draws": len(draws), "draws": draws, "summary": spread(draws)}


def vehicleid_draws(cfg: RunConfig, pcfg: PostprocessConfig, manifest: pa.Table) -> dict:
    """The driver side: ``data.vehicleid_draws`` draws with seeds ``data.seed + i`` (draw 0 is
    the run's own), on the run's test stores; written to ``<run>/results/<name>/gallery_draws.json``."""
    from vreid.data import load_manifest, split_table
    from vreid.postprocess.actor import _side, load_inputs

    inputs = load_inputs(cfg, manifest, "test")
    d = cfg.data
    sides, seeds = [], [d.seed + i for i in range(d.vehicleid_draws)]
    for seed in seeds:
        draw = load_manifest(d.root, "vehicleid", on_bad_image=d.on_bad_image,
                             vehicleid_test_size=d.vehicleid_test_size, seed=seed)
        sides.append((_side(split_table(draw, "query")), _side(split_table(draw, "gallery"))))
    result = {"seeds": seeds, **gallery_draws(inputs, sides, pcfg)}
    out = Path(cfg.run_dir).resolve() / "results" / pcfg.name / DRAWS_FILE
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    m = result["summary"]["mAP"]
    log.info("VehicleID, %d gallery draws: mAP %.2f +- %.2f (min %.2f, max %.2f)", len(seeds),
             100 * m["mean"], 100 * m["std"], 100 * m["min"], 100 * m["max"])
    return result

"""Re-crop evidence on the demo city (issue 16, seed 003 §3.1 / §3.3).

With the demo's initial model (``--initial``: r18-bot), runs the recrop stage (boxes, cropped copy,
IoU against the synthetic masks' boxes vs the fixed centre crop), then the test mAP of plain
ranking (no post-processing step) for TTA [original, flip] vs 003's four views [original, flip,
heatmap_crop, heatmap_crop_flip] (and the centre-crop views for reference); with ``--train-crop``
also trains the same recipe on real + crop and scores it the same ways.

    PYTHONPATH=. python benchmarks/recrop.py --run-dir runs/recrop-demo [--copy-initial DIR] [--train-crop]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _ray_bench  # noqa: E402

VIEWS = {"tta2": ["original", "flip"], "tta4_centre": ["original", "flip", "crop", "crop_flip"],
         "tta4_heatmap": ["original", "flip", "heatmap_crop", "heatmap_crop_flip"]}


def score(cfg, models, name: str, manifest, out: dict) -> None:
    """Test mAP of plain ranking on model ``name``'s features under each TTA variant."""
    from vreid.config import EnsembleConfig, PostprocessConfig
    from vreid.features.extract import extract_features
    from vreid.postprocess.actor import postprocess_run

    for variant, views in VIEWS.items():
        vcfg = cfg.model_copy(update={"models": models})
        vcfg.extract = vcfg.extract.model_copy(update={"tta": views, "store_root": str(Path(cfg.run_dir) / variant)})
        t0 = time.perf_counter()
        extract_features(vcfg, manifest, ["test"], models=[name])
        res = postprocess_run(vcfg, PostprocessConfig(name=f"{name}-{variant}", ensemble=EnsembleConfig(models=[name]),
                                                      steps=[]))
        row = res["ablation"][0]
        out[f"{name}/{variant}"] = {"mAP": round(row["mAP"], 4), "rank-1": round(row["rank-1"], 4),
                                    "s": round(time.perf_counter() - t0, 1)}
        print(name, variant, out[f"{name}/{variant}"], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--run-dir", default="runs/recrop-demo")
    ap.add_argument("--initial", default="r18-bot")
    ap.add_argument("--copy-initial", help="a trained model directory to use as the initial model")
    ap.add_argument("--train-crop", action="store_true")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    from vreid.config import load_config
    from vreid.data import load_dataset
    from vreid.data.domains import add_crop_copy
    from vreid.recrop.stage import read_crop_copy, run_recrop
    from vreid.train.launcher import require_trained, train_models, training_manifest

    _ray_bench.start_ray(match_niceness=False)
    cfg = load_config(args.config, [f"run_dir={args.run_dir}", "recrop.enabled=true", f"recrop.model={args.initial}",
                                    "extract.tta=[original, flip]", *args.set])
    base = next(m for m in cfg.models if m.name == args.initial)
    cfg.models = [base]
    if args.copy_initial and not (Path(cfg.run_dir) / "models" / base.name / "_SUCCESS.json").is_file():
        shutil.copytree(args.copy_initial, Path(cfg.run_dir) / "models" / base.name, dirs_exist_ok=True)
    manifest = load_dataset(cfg.data)
    t0 = time.perf_counter()
    require_trained(train_models(cfg, manifest, only=[base.name]))
    out = {"initial_train_s": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    rec = run_recrop(cfg, manifest)
    out.update({"recrop_s": round(time.perf_counter() - t0, 1), "box": rec["metrics"]})
    score(cfg, [base], base.name, manifest, out)
    if args.train_crop:
        crop_model = base.model_copy(update={"name": f"{base.name}-crop", "recipe": [
            s.model_copy(update={"domains": ["real", "crop"]}) for s in base.recipe]})
        cfg.models = [base, crop_model]
        t0 = time.perf_counter()
        table = add_crop_copy(training_manifest(cfg, manifest), *read_crop_copy(cfg))
        require_trained(train_models(cfg, manifest, only=[crop_model.name], tables={crop_model.name: table},
                                     work="train_crop"))
        out["crop_train_s"] = round(time.perf_counter() - t0, 1)
        score(cfg, [base, crop_model], crop_model.name, manifest, out)
    _ray_bench.emit(out)


if __name__ == "__main__":
    main()

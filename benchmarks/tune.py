"""Tune sweep cost: 100 post-processing trials on a ~2,000-image validation split.

Inputs: a synthetic ``PostprocessInputs`` like ``tests/test_postprocess_pipeline.py::_city``,
at validation-split size (default 250 queries + 1,750 gallery, dim 256): clustered identity
features with per-camera offsets (camera bias), gallery tracklets of consecutive images of one
identity on one camera, and noisy colour / type class probabilities (argmax right ~85% of the
time) for the attribute constraint; noise levels chosen so that each step matters (ensemble
mAP ~0.07, after re-ranking ~0.87). Generation is not timed.

Pipeline (base values = the paper defaults): camera_bias (mean) -> tracklet (wf) -> rerank
(k1 20, k2 6, lambda 0.3) -> attribute_constraint (delta_t 0.1, delta_c 0.1) ->
camera_verification. Space: rerank.k1 int [5, 40], rerank.k2 int [2, 8], rerank.lambda_value
[0.1, 0.9], attribute_constraint.delta_type [0, 0.5], delta_color [0, 0.5].

Measured, side by side in one run:
- ``total_s``: ``vreid.tune.sweep.run_sweep`` end to end (default evaluation, the shared feature
  state + k-NN graph, Tune start, ``num_samples`` trials ``max_concurrent_trials`` at a time,
  best YAML / trial table / plot); ``per_trial_s`` = total / trials (wall per trial), and each
  trial's own ``time_total_s`` from the trial table (median);
- ``knn_s``: ``vreid.postprocess.knn.knn_graph`` on the same (post feature-step) query+gallery
  features for the sweep's largest k, i.e. what each trial would redo without the sharing;
- ``trial_cached_s`` / ``trial_uncached_s``: one trial's computation (``run_postprocess`` at the
  base values) with a copy of the shared cache (what a Tune trial runs) and with an empty one.
Those three are best-of-``--repeats``. Last line: one JSON object (target ``total_s`` < 300).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _ray_bench import best_of, emit, start_ray  # sets Ray's environment before Ray is imported

BASE = {"name": "final", "ensemble": {"attribute_model": "m"}, "top_k": 100,
        "steps": [{"step": "camera_bias", "method": "mean"},
                  {"step": "tracklet", "method": "wf"},
                  {"step": "rerank", "k1": 20, "k2": 6, "lambda_value": 0.3},
                  {"step": "attribute_constraint", "delta_type": 0.1, "delta_color": 0.1},
                  {"step": "camera_verification"}]}
SPACE = {"rerank.k1": {"type": "int", "low": 5, "high": 40},
         "rerank.k2": {"type": "int", "low": 2, "high": 8},
         "rerank.lambda_value": {"type": "float", "low": 0.1, "high": 0.9},
         "attribute_constraint.delta_type": {"type": "float", "low": 0.0, "high": 0.5},
         "attribute_constraint.delta_color": {"type": "float", "low": 0.0, "high": 0.5}}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=250)
    ap.add_argument("--gallery", type=int, default=1750)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--cams", type=int, default=8)
    ap.add_argument("--noise", type=float, default=3.0, help="per-image noise (identity centres: unit normal)")
    ap.add_argument("--cam-shift", type=float, default=1.0, help="per-camera offset scale (camera bias)")
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--search", default="auto", choices=["auto", "optuna", "random"])
    ap.add_argument("--repeats", type=int, default=3, help="best-of-N for the k-NN and single-trial timings")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def make_inputs(n_query: int, n_gallery: int, dim: int, cams: int, seed: int = 0, noise: float = 3.0,
                cam_shift: float = 1.0):
    """Validation-split-like inputs: identities x cameras x tracklets, camera-shifted features."""
    import numpy as np

    from vreid.postprocess.pipeline import PostprocessInputs, Side

    rng = np.random.default_rng(seed)
    n = n_query + n_gallery
    per_id = 24  # images per identity (several cameras, a tracklet per camera)
    n_ids = max(2, n // per_id)
    n_colors, n_types = 10, 7
    centers = rng.normal(size=(n_ids, dim)).astype(np.float32)
    offsets = (rng.normal(size=(cams, dim)) * cam_shift).astype(np.float32)
    pid = np.repeat(np.arange(n_ids), int(np.ceil(n / n_ids)))[:n]
    cam = rng.integers(0, cams, n)
    track = pid.astype(np.int64) * cams + cam  # one tracklet per identity and camera
    feats = centers[pid] + offsets[cam] + rng.normal(scale=noise, size=(n, dim)).astype(np.float32)
    ts = pid * 100.0 + cam * 10.0 + rng.random(n)
    id_color, id_type = rng.integers(0, n_colors, n_ids), rng.integers(0, n_types, n_ids)

    def probs(true, k):
        logits = rng.normal(scale=1.0, size=(n, k)).astype(np.float32)
        logits[np.arange(n), true] += 2.5
        e = np.exp(logits - logits.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    color, vtype = probs(id_color[pid], n_colors), probs(id_type[pid], n_types)
    # queries: one image of every identity on a random camera, then random others, up to n_query
    is_q = np.zeros(n, bool)
    first = np.unique(pid, return_index=True)[1]
    pick = rng.permutation(first)[:n_query]
    is_q[pick] = True
    if is_q.sum() < n_query:
        rest = rng.permutation(np.flatnonzero(~is_q))[: n_query - int(is_q.sum())]
        is_q[rest] = True
    order = rng.permutation(n)
    feats, pid, cam, track, ts, color, vtype, is_q = (a[order] for a in (feats, pid, cam, track, ts, color,
                                                                           vtype, is_q))

    def side(mask):
        k = int(mask.sum())
        return Side(np.asarray([f"img{i:05d}.jpg" for i in np.flatnonzero(mask)], object),
                    np.arange(k, dtype=np.int32), pid[mask].astype(np.int32), cam[mask].astype(np.int32),
                    track[mask].astype(np.int64), ts[mask].astype(np.float64))

    q, g = side(is_q), side(~is_q)
    q.trackids[:] = -1  # AI City queries have no track
    return PostprocessInputs(query=q, gallery=g, features={"m": (feats[is_q], feats[~is_q])},
                             extras={"m": {"color_prob": (color[is_q], color[~is_q]),
                                           "type_prob": (vtype[is_q], vtype[~is_q])}},
                             tasks={"m": "reid"}, weights={"m": 1.0})


def main(argv=None) -> dict:
    args = parse_args(argv)
    import numpy as np
    import pandas as pd

    from vreid.config import RunConfig
    from vreid.postprocess.knn import knn_graph
    from vreid.postprocess.pipeline import feature_state_key, run_postprocess
    from vreid.tune.sweep import largest_k, run_sweep, shared_cache

    start_ray(match_niceness=False)
    inputs = make_inputs(args.queries, args.gallery, args.dim, args.cams, args.seed, args.noise, args.cam_shift)
    nq, ng = len(inputs.query.pids), len(inputs.gallery.pids)
    work = Path(tempfile.mkdtemp(prefix="vreid-bench-tune-"))
    try:
        cfg = RunConfig.model_validate({
            "run_dir": str(work / "run"), "postprocess": BASE,
            "tune": {"num_samples": args.trials, "max_concurrent_trials": args.concurrent, "search": args.search,
                     "seed": args.seed, "space": SPACE}})
        base, space = cfg.postprocess, cfg.tune.space
        k = largest_k(base, space)

        # the sweep, end to end
        t = time.perf_counter()
        out = run_sweep(cfg, inputs)
        total_s = time.perf_counter() - t
        df = pd.read_csv(Path(out["out_dir"]) / "trials.csv")
        trial_own = df["time_total_s"].dropna().to_numpy() if "time_total_s" in df else np.array([])

        # what the sharing saves: the k-NN graph on the same features, and one trial with / without it
        cache = shared_cache(inputs, base, space)
        qf, gf, _ = cache[("features", feature_state_key(base))]
        both = np.concatenate([qf, gf])
        knn_s, _ = best_of(lambda: knn_graph(both, k), args.repeats)
        cached_s, res_c = best_of(lambda: run_postprocess(inputs, base, dict(cache), with_ablation=False),
                                  args.repeats)
        uncached_s, res_u = best_of(lambda: run_postprocess(inputs, base, {}, with_ablation=False), args.repeats)
        if not np.array_equal(res_c.indices, res_u.indices):
            raise RuntimeError("the shared-cache trial ranks differently from the uncached one")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "bench": "tune",
        "queries": nq,
        "gallery": ng,
        "dim": args.dim,
        "trials": int(out["num_trials"]),
        "failed_trials": int(out["failed_trials"]),
        "concurrent": args.concurrent,
        "search": args.search,
        "max_k": k,
        "total_s": round(total_s, 1),
        "per_trial_s": round(total_s / max(1, int(out["num_trials"])), 3),
        "trial_own_median_s": round(float(statistics.median(trial_own)), 3) if len(trial_own) else None,
        "trial_cached_s": round(cached_s, 3),
        "trial_uncached_s": round(uncached_s, 3),
        "knn_s": round(knn_s, 3),
        "knn_vs_cached_trial": round(knn_s / cached_s, 2),
        "uncached_vs_cached_trial": round(uncached_s / cached_s, 2),
        "default_mAP": round(float(out["default_score"]), 4),
        "best_mAP": round(float(out["best_score"]), 4),
        "best_params": {kk: (round(v, 3) if isinstance(v, float) else v) for kk, v in out["best_params"].items()},
        "target_total_s": 300,
        "target_met": total_s < 300,
    }
    return emit(result)


if __name__ == "__main__":
    main()

"""Time ``vreid.eval.evaluate`` against one ``numpy.argsort(distmat, axis=1)`` of the same matrix.

CityFlow test size (1,052 queries × 18,290 gallery images), random float32 distances (as from
float32 features), 333 identities and 40 cameras; target: evaluate <= 2 × argsort.
``ratio`` compares with ``kind="stable"``, the ranking evaluate computes (METHODS.md: ties keep
gallery order); ``ratio_vs_quicksort`` with numpy's default (unstable, SIMD) argsort.
Best of ``--repeats`` runs of each, interleaved. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from vreid.eval import evaluate


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--q", type=int, default=1052)
    ap.add_argument("--g", type=int, default=18290)
    ap.add_argument("--ids", type=int, default=333)
    ap.add_argument("--cams", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    distmat = rng.random((args.q, args.g)).astype(args.dtype)
    q_pids, g_pids = rng.integers(0, args.ids, args.q), rng.integers(0, args.ids, args.g)
    q_cams, g_cams = rng.integers(0, args.cams, args.q), rng.integers(0, args.cams, args.g)

    metrics = evaluate(distmat, q_pids, g_pids, q_cams, g_cams)  # warm-up, and the reported mAP
    argsort_s = quick_s = evaluate_s = float("inf")
    for _ in range(args.repeats):  # interleaved so all see the same machine state
        argsort_s = min(argsort_s, _time(lambda: np.argsort(distmat, axis=1, kind="stable")))
        quick_s = min(quick_s, _time(lambda: np.argsort(distmat, axis=1)))
        evaluate_s = min(
            evaluate_s, _time(lambda: evaluate(distmat, q_pids, g_pids, q_cams, g_cams))
        )
    print(f"argsort stable {argsort_s:.3f}s  argsort default {quick_s:.3f}s  "
          f"evaluate {evaluate_s:.3f}s  mAP {metrics.mAP:.4f}")
    print(json.dumps({
        "q": args.q,
        "g": args.g,
        "dtype": args.dtype,
        "evaluate_s": round(evaluate_s, 4),
        "argsort_s": round(argsort_s, 4),
        "ratio": round(evaluate_s / argsort_s, 3),
        "argsort_quicksort_s": round(quick_s, 4),
        "ratio_vs_quicksort": round(evaluate_s / quick_s, 3),
        "map": round(metrics.mAP, 5),
    }))


if __name__ == "__main__":
    main()

"""k-reciprocal re-ranking: the project's sparse exact implementation vs the dense original.

Features: random clustered float32 (vehicle models > identities > images), L2-normalised like
re-ID features, with ~1% exact duplicate rows. Query = the first Q rows (default: the CityFlow
ratio 1052/19342 of N), gallery = the rest. Each measured part runs in its own subprocess, which
reports its own peak RSS in GB = 1e9 bytes (``getrusage(RUSAGE_SELF).ru_maxrss``: the kernel's
high-water mark, features and imports included); feature generation is not timed. Wall and CPU (user+sys) seconds
are both reported: the machine may be shared, and the ratios on CPU time are less noisy.

Parts:
- ``baseline``: the dense port of the original (benchmarks/dense_rerank_baseline.py: cdist
  distances as in the released ``re_ranking_feature``, N x N matrices, Python loops);
  run when N <= 5000 (``--baseline auto``), its timing split into distance / rest;
- ``ours_dense``: ``k_reciprocal_rerank(..., top_k=None)`` (same (Q, G) output as the baseline),
  run with the baseline;
- ``ours_topk``: ``k_reciprocal_rerank(..., top_k=K)``;
- ``knn``: one exact k-NN pass (``knn_graph(features, k1)``), run when N <= 50000.

Targets checked (printed as ``targets``): N=2000: max |diff| <= 1e-5 and identical top-K;
N=5000: baseline / ours >= 20; N=19342: ours_topk <= 3 x knn and peak <= 1.5 GB;
N=100000: peak <= 4 GB. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def generate_features(n: int, dim: int, seed: int = 0, dup_frac: float = 0.01) -> np.ndarray:
    """Clustered, L2-normalised float32 features, generated in chunks (no float64 N x d copy)."""
    rng = np.random.default_rng(seed)
    n_ids = max(2, n // 8)
    n_models = max(1, n_ids // 10)
    scale = 1.0 / np.sqrt(dim)
    models = rng.standard_normal((n_models, dim), dtype=np.float32) * scale
    ids = models[rng.integers(0, n_models, n_ids)]
    ids += rng.standard_normal((n_ids, dim), dtype=np.float32) * (0.8 * scale)
    labels = rng.integers(0, n_ids, n)
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 8192):
        e = min(n, s + 8192)
        x[s:e] = ids[labels[s:e]]
        x[s:e] += rng.standard_normal((e - s, dim), dtype=np.float32) * (0.6 * scale)
        x[s:e] /= np.linalg.norm(x[s:e], axis=1, keepdims=True)
    n_dup = int(round(dup_frac * n))
    if n_dup:
        dst = rng.choice(n, n_dup, replace=False)
        src = rng.integers(0, n, n_dup)
        x[dst] = x[src]
    return x


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB -> GB


def worker(args: argparse.Namespace) -> None:
    """Run one part in this process; save outputs to --out; print one JSON line."""
    sys.path.insert(0, ROOT)
    sys.path.insert(0, HERE)
    t0 = time.perf_counter()
    x = generate_features(args.n, args.dim, args.seed)
    gen_s = time.perf_counter() - t0
    q = args.queries
    import dense_rerank_baseline as dense  # imports are not timed

    from vreid.postprocess.knn import knn_graph
    from vreid.postprocess.rerank import k_reciprocal_rerank

    rss_before = _peak_rss_gb()
    cpu0 = _cpu_s()
    info: dict = {"part": args.worker, "gen_s": round(gen_s, 3)}
    if args.worker == "baseline":
        t0 = time.perf_counter()
        dist = dense.dense_distances(x[:q], x[q:])
        dist_s = time.perf_counter() - t0
        final = dense.dense_rerank(dist, q, args.k1, args.k2, args.lam)
        total = time.perf_counter() - t0
        np.save(os.path.join(args.out, "baseline.npy"), final)
        np.save(os.path.join(args.out, "baseline_dqg.npy"), dist[:q, q:])
        info.update(seconds=total, dist_s=dist_s)
    elif args.worker in ("ours_dense", "ours_topk"):
        top_k = args.top_k if args.worker == "ours_topk" else None
        t0 = time.perf_counter()
        res = k_reciprocal_rerank(
            x[:q], x[q:], args.k1, args.k2, args.lam, top_k=top_k, backend=args.backend
        )
        info.update(seconds=time.perf_counter() - t0)
        if top_k is None:
            np.save(os.path.join(args.out, "ours_dense.npy"), res)
        else:
            np.save(os.path.join(args.out, "ours_topk_idx.npy"), res[0])
            np.save(os.path.join(args.out, "ours_topk_val.npy"), res[1])
    elif args.worker == "knn":
        t0 = time.perf_counter()
        knn_graph(x, args.k1, backend=args.backend)
        info.update(seconds=time.perf_counter() - t0)
    else:
        raise SystemExit(f"unknown part {args.worker}")
    info.update(cpu_s=_cpu_s() - cpu0, peak_rss_gb=_peak_rss_gb(), rss_before_gb=rss_before)
    print(json.dumps(info))


def run_part(part: str, args: argparse.Namespace, out: str) -> dict:
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", part, "--out", out,
        "--n", str(args.n), "--queries", str(args.queries), "--dim", str(args.dim),
        "--k1", str(args.k1), "--k2", str(args.k2), "--lam", str(args.lam),
        "--top-k", str(args.top_k), "--seed", str(args.seed), "--backend", args.backend,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"part {part} failed with exit code {proc.returncode}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {part:11s} {info['seconds']:9.2f} s wall {info['cpu_s']:9.2f} s CPU   peak RSS {info['peak_rss_gb']:.3f} GB "
          f"(before the part: {info['rss_before_gb']:.3f})", flush=True)
    return info


def _topk_compare(idx: np.ndarray, ref_final: np.ndarray, ref_idx: np.ndarray) -> tuple[int, int]:
    """(#positions whose index differs, #of those where the reference values differ: not a tie)."""
    diff = idx != ref_idx
    rows = np.nonzero(diff)[0]
    a = ref_final[rows, idx[diff]]
    b = ref_final[rows, ref_idx[diff]]
    return int(diff.sum()), int((a != b).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="query + gallery")
    ap.add_argument("--queries", type=int, default=None, help="default: round(n * 1052 / 19342)")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--k1", type=int, default=20)
    ap.add_argument("--k2", type=int, default=6)
    ap.add_argument("--lam", type=float, default=0.3)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--baseline", choices=["auto", "yes", "no"], default="auto")
    ap.add_argument("--knn", choices=["auto", "yes", "no"], default="auto")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.queries is None:
        args.queries = max(1, int(round(args.n * 1052 / 19342)))
    if args.worker:
        worker(args)
        return

    do_base = args.baseline == "yes" or (args.baseline == "auto" and args.n <= 5000)
    do_knn = args.knn == "yes" or (args.knn == "auto" and args.n <= 50000)
    print(f"n={args.n} queries={args.queries} gallery={args.n - args.queries} dim={args.dim} "
          f"k1={args.k1} k2={args.k2} lambda={args.lam} top_k={args.top_k} cores={os.cpu_count()} "
          f"loadavg={os.getloadavg()[0]:.2f}",
          flush=True)
    res: dict = {"n": args.n, "queries": args.queries, "dim": args.dim, "k1": args.k1,
                 "k2": args.k2, "lambda": args.lam, "top_k": args.top_k}
    targets: dict = {}
    with tempfile.TemporaryDirectory() as out:
        parts = {}
        if do_base:
            parts["baseline"] = run_part("baseline", args, out)
            parts["ours_dense"] = run_part("ours_dense", args, out)
        parts["ours_topk"] = run_part("ours_topk", args, out)
        if do_knn:
            parts["knn"] = run_part("knn", args, out)

        ti = np.load(os.path.join(out, "ours_topk_idx.npy"))
        res["ours_topk_s"] = round(parts["ours_topk"]["seconds"], 3)
        res["ours_topk_cpu_s"] = round(parts["ours_topk"]["cpu_s"], 3)
        res["peak_rss_gb"] = round(parts["ours_topk"]["peak_rss_gb"], 3)
        if do_base:
            base = np.load(os.path.join(out, "baseline.npy"))
            dqg = np.load(os.path.join(out, "baseline_dqg.npy"))
            ours = np.load(os.path.join(out, "ours_dense.npy"))
            sys.path.insert(0, HERE)
            import dense_rerank_baseline as dense

            ref_idx = dense.dense_topk(base, dqg, args.top_k)
            n_diff, n_non_tie = _topk_compare(ti, base, ref_idx)
            own_idx = dense.dense_topk(ours, dqg, args.top_k)
            res.update(
                ours_s=round(parts["ours_dense"]["seconds"], 3),
                baseline_s=round(parts["baseline"]["seconds"], 3),
                baseline_dist_s=round(parts["baseline"]["dist_s"], 3),
                ratio=round(parts["baseline"]["seconds"] / parts["ours_dense"]["seconds"], 2),
                ours_cpu_s=round(parts["ours_dense"]["cpu_s"], 3),
                baseline_cpu_s=round(parts["baseline"]["cpu_s"], 3),
                ratio_cpu=round(parts["baseline"]["cpu_s"] / parts["ours_dense"]["cpu_s"], 2),
                ratio_excl_baseline_dist=round(
                    (parts["baseline"]["seconds"] - parts["baseline"]["dist_s"])
                    / parts["ours_dense"]["seconds"], 2),
                ours_dense_peak_rss_gb=round(parts["ours_dense"]["peak_rss_gb"], 3),
                baseline_peak_rss_gb=round(parts["baseline"]["peak_rss_gb"], 3),
                max_abs_diff=float(np.abs(ours.astype(np.float64) - base).max()),
                top_k_positions_differing=n_diff,
                top_k_differing_not_exact_ties=n_non_tie,
                top_k_identical=n_diff == 0,
                topk_path_equals_dense_path=_topk_compare(ti, ours, own_idx)[1] == 0,
            )
            targets["max_abs_diff<=1e-5"] = res["max_abs_diff"] <= 1e-5
            targets["top_k_identical_up_to_exact_ties"] = n_non_tie == 0
            if args.n >= 5000:
                targets["ratio>=20"] = res["ratio"] >= 20
        if do_knn:
            res["knn_s"] = round(parts["knn"]["seconds"], 3)
            res["knn_cpu_s"] = round(parts["knn"]["cpu_s"], 3)
            res["knn_peak_rss_gb"] = round(parts["knn"]["peak_rss_gb"], 3)
            res["ours_topk_over_knn_cpu"] = round(parts["ours_topk"]["cpu_s"] / parts["knn"]["cpu_s"], 3)
            res["ours_topk_over_knn"] = round(parts["ours_topk"]["seconds"] / parts["knn"]["seconds"], 3)
            if args.n >= 19342:
                targets["ours_topk<=3x_knn"] = res["ours_topk_over_knn"] <= 3
                targets["peak_rss<=1.5GB"] = parts["ours_topk"]["peak_rss_gb"] <= 1.5
        if args.n >= 100000:
            targets["peak_rss<=4GB"] = parts["ours_topk"]["peak_rss_gb"] <= 4
    res["targets"] = targets
    res["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()

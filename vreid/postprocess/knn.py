"""Exact k-nearest-neighbour graphs on squared Euclidean distances, without an N x N matrix.

The k-reciprocal re-ranking of Zhong et al. 2017 ("Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR) only needs, for every point of query+gallery, its k1+1 nearest
neighbours (self included) and the maximum of its distance row (step 1 of METHODS.md). This
module computes exactly that in one pass of tiled matrix products: the numpy backend walks
symmetric ``tile x tile`` blocks (each product serves both its rows and, transposed, its
columns, so half the flops of a full pass); torch (CPU/CUDA) and faiss walk ``chunk x N`` row
blocks. Memory is one tile / row block plus O(N k).

Exactness. Candidates (k+1+slack per row) come from the float32 products; each candidate
distance is then recomputed in float64 (float32 products are exact in float64, |error| ~1e-15)
and the neighbours are chosen on the recomputed values. A rigorous bound ``err`` on the float32
error (Higham, |fl(x.y) - x.y| <= gamma_d |x||y|) proves that the candidates hold every true
neighbour; rows where it cannot are redone with every point within ``v + err``. Exact duplicate
rows (e.g. gallery images sharing their track's feature) are one point each: the graph of the
distinct values is expanded to their copies, so no row falls back because of them. The result therefore does not depend on the backend, the tile
size or BLAS. Ties are broken deterministically by the key ``(distance, j != i, j)``: self first
among equal distances, then lower index. Distances and every top-k selection go through
:mod:`vreid.postprocess.kernels`; the torch / faiss backends pick their float32 candidates on their
device (``torch.topk``, faiss search) and hand them to the same exact re-scoring and selection.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from vreid.postprocess.kernels import pair_squared_distances, sq_norms, squared_distances, topk

__all__ = [
    "KNNGraph",
    "knn_graph",
    "knn_graph_from_blocks",
    "resolve_backend",
    "auto_chunk_size",
    "BACKENDS",
]

BACKENDS = ("auto", "numpy", "torch", "faiss")

# Unit round-off of float32 (2**-24): used for the rigorous error bound of float32 candidates.
_U32 = float(np.finfo(np.float32).eps) / 2.0
# Default memory for one block of a distance matrix (bytes); chunk = budget / (bytes per row).
DEFAULT_BLOCK_BYTES = 256 * 2**20
# Tile side of the numpy backend's symmetric tiles (memory ~ 20 bytes x tile^2).
DEFAULT_TILE = 1024


@dataclass(frozen=True)
class KNNGraph:
    """The k+1 nearest neighbours of every point (self included) and each row's maximum.

    ``indices`` (N, k+1) int64 and ``distances`` (N, k+1) float32 are sorted by the key
    ``(distance, j != i, j)``; for feature distances the first column is the point itself.
    ``row_max`` (N,) float64 is the maximum squared distance of each full row (Zhong et al. 2017,
    step 1 normalises each row by it).
    """

    indices: np.ndarray
    distances: np.ndarray
    row_max: np.ndarray

    def __post_init__(self) -> None:
        if self.indices.ndim != 2 or self.indices.shape != self.distances.shape:
            raise ValueError(
                f"KNNGraph: indices {self.indices.shape} and distances {self.distances.shape} "
                "must both be (N, k+1)"
            )
        if self.row_max.shape != (self.indices.shape[0],):
            raise ValueError(
                f"KNNGraph: row_max has shape {self.row_max.shape}, expected ({self.indices.shape[0]},)"
            )

    @property
    def n(self) -> int:
        """Number of points N."""
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        """Number of neighbours besides self (the graph holds k+1 columns)."""
        return int(self.indices.shape[1]) - 1

    def truncate(self, k: int) -> "KNNGraph":
        """The same graph restricted to the k+1 nearest (identical to building it with k)."""
        if not 0 <= k <= self.k:
            raise ValueError(f"KNNGraph.truncate: k={k} must be in [0, {self.k}]")
        return KNNGraph(self.indices[:, : k + 1], self.distances[:, : k + 1], self.row_max)


# ----------------------------------------------------------------------------- helpers


def auto_chunk_size(n: int, bytes_per_elem: int = 16, budget: int = DEFAULT_BLOCK_BYTES) -> int:
    """Rows per block so that ``chunk x n x bytes_per_elem`` stays within ``budget`` bytes."""
    return int(max(1, min(4096, budget // max(1, n * bytes_per_elem))))


def _gpu_driver_present() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or "torch" in sys.modules


def _torch_cuda_available() -> bool:
    if not _gpu_driver_present():
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _faiss_num_gpus() -> int:
    if not os.path.exists("/proc/driver/nvidia/version"):
        return 0
    try:
        import faiss
    except ImportError:
        return 0
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def resolve_backend(backend: str = "auto", device: str | None = None) -> tuple[str, str]:
    """Resolve ``backend``/``device`` to a concrete pair.

    ``auto`` picks torch on CUDA when a GPU is visible, else faiss on GPU when faiss has GPUs,
    else numpy (BLAS) on CPU. torch/faiss are imported only when needed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"knn backend must be one of {BACKENDS}, got {backend!r}")
    if device is not None and device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"knn device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if backend == "auto":
        if device is not None and device != "cpu":
            return "torch", device
        if device is None and _torch_cuda_available():
            return "torch", "cuda"
        if device is None and _faiss_num_gpus() > 0:
            return "faiss", "cuda"
        return "numpy", "cpu"
    if backend == "numpy":
        if device not in (None, "cpu"):
            raise ValueError("knn backend 'numpy' runs on CPU only; use backend='torch' for CUDA")
        return "numpy", "cpu"
    if backend == "torch":
        device = device or "cpu"
        if device != "cpu" and not _torch_cuda_available():
            raise ValueError(f"knn device {device!r} requested but torch sees no CUDA device")
        return "torch", device
    # faiss
    if device is None:
        device = "cuda" if _faiss_num_gpus() > 0 else "cpu"
    if device != "cpu" and _faiss_num_gpus() == 0:
        raise ValueError("knn backend 'faiss' on CUDA needs a faiss build with GPUs (faiss-gpu)")
    return "faiss", device


def validate_features(x: np.ndarray, name: str = "features") -> np.ndarray:
    """Check a (N, d) float array: 2-D, non-empty, finite. Returns it as a C-contiguous array."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, d) array, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}); need at least one row and one dim")
    if not np.issubdtype(x.dtype, np.floating):
        if np.issubdtype(x.dtype, np.integer) or x.dtype == bool:
            x = x.astype(np.float32)
        else:
            raise ValueError(f"{name} must be a float array, got dtype {x.dtype}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    step = max(1, 2**24 // x.shape[1])  # check in row chunks: no N x d boolean temporary
    for s in range(0, x.shape[0], step):
        bad = ~np.isfinite(x[s : s + step])
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(f"{name} contains NaN/Inf values; first at row {s + r}, dim {c}")
    return np.ascontiguousarray(x)


def _select_exact_from_candidates(
    vals: np.ndarray, cols: np.ndarray, rows: np.ndarray, kk: int
) -> tuple[np.ndarray, np.ndarray]:
    """The kk best candidates of each row by the key (value, col != row, col)."""
    pos, v = topk(vals, kk, tiebreak=(cols != rows[:, None], cols))
    return np.take_along_axis(cols, pos, 1), v


# ----------------------------------------------------------------------------- candidates

# A candidate block: (rows, cand (b, kc) int, cval (b, kc) approximate distances, thr (b,),
# argmax (b,)) where every non-candidate j of row r has approximate distance >= thr[r].
_Block = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _combine(
    grows: np.ndarray, new_v: np.ndarray, new_i: np.ndarray,
    cand_i: np.ndarray, cand_v: np.ndarray, thr: np.ndarray,
) -> None:
    kc = cand_i.shape[1]
    pv = np.concatenate([cand_v[grows], new_v], axis=1)
    pi = np.concatenate([cand_i[grows], new_i], axis=1)
    sel, cand_v[grows] = topk(pv, kc)
    cand_i[grows] = np.take_along_axis(pi, sel, 1)
    thr[grows] = cand_v[grows].max(axis=1)


def _merge_candidates(
    t: np.ndarray, cs: int, rows: np.ndarray, cand_i: np.ndarray, cand_v: np.ndarray, thr: np.ndarray
) -> None:
    """Merge tile ``t`` (rows ``rows``, columns ``cs:cs+t.shape[1]``) into the running top-kc.

    A row's first tile is partitioned; afterwards only entries below the row's running kc-th
    value can enter, so a tile costs little more than one comparison pass.
    """
    kc = cand_i.shape[1]
    br, bc = t.shape
    tr = thr[rows]
    full = np.isinf(tr)
    nfull = int(full.sum())
    if nfull:
        fr = np.flatnonzero(full) if nfull < br else slice(None)
        tf = t[fr] if nfull < br else t
        m = min(kc, bc)
        part, pv = topk(tf, m)
        _combine(rows[fr], pv, cs + part, cand_i, cand_v, thr)
        if nfull == br:
            return
    rest = np.flatnonzero(~full)
    tn = t[rest] if nfull else t
    mask = tn < tr[rest][:, None]
    # 1-D flatnonzero in memory order is far faster than 2-D nonzero on sparse masks.
    if mask.flags.c_contiguous or not mask.T.flags.c_contiguous:
        li, lj = np.divmod(np.flatnonzero(mask), mask.shape[1])
    else:  # ``t`` is a transposed view: scan in memory order, then group by row
        lj, li = np.divmod(np.flatnonzero(mask.T), mask.shape[0])
        order = np.argsort(li, kind="stable")
        li, lj = li[order], lj[order]
    if len(li) == 0:
        return
    counts = np.bincount(li, minlength=len(rest))
    sub = np.flatnonzero(counts)
    slot = np.cumsum(counts) - counts  # first entry of each row in (li, lj), row-major
    remap = np.empty(len(rest), dtype=np.int64)
    remap[sub] = np.arange(len(sub))
    width = int(counts.max())
    nv = np.full((len(sub), width), np.inf, dtype=np.float32)
    ni = np.full((len(sub), width), -1, dtype=np.int64)
    pos = np.arange(len(li)) - slot[li]
    nv[remap[li], pos] = tn[li, lj]
    ni[remap[li], pos] = cs + lj
    _combine(rows[rest[sub]], nv, ni, cand_i, cand_v, thr)


def _numpy_candidate_blocks(x32: np.ndarray, sq: np.ndarray, kc: int, tile: int) -> Iterator[_Block]:
    """Symmetric tiles: each (I, J >= I) product serves rows I and, transposed, rows J."""
    n = x32.shape[0]
    sq32 = sq.astype(np.float32)
    cand_i = np.full((n, kc), -1, dtype=np.int64)
    cand_v = np.full((n, kc), np.inf, dtype=np.float32)
    thr = np.full(n, np.inf, dtype=np.float32)
    rmax = np.full(n, -np.inf, dtype=np.float32)
    ramax = np.zeros(n, dtype=np.int64)

    def row_max(t: np.ndarray, rows: np.ndarray, cs: int) -> None:
        am = t.argmax(axis=1)
        mv = t[np.arange(t.shape[0]), am]
        better = mv > rmax[rows]
        rmax[rows[better]] = mv[better]
        ramax[rows[better]] = cs + am[better]

    def col_max(t: np.ndarray, rows: np.ndarray, cs: int) -> None:
        # row max of t.T without transposing: reduce over axis 0, argmax only where it improves
        mv = t.max(axis=0)
        cols = np.flatnonzero(mv > rmax[rows])
        if len(cols):
            am = t[:, cols].argmax(axis=0)
            rmax[rows[cols]] = mv[cols]
            ramax[rows[cols]] = cs + am

    starts = list(range(0, n, tile))
    for bi, s0 in enumerate(starts):
        e0 = min(n, s0 + tile)
        rows0 = np.arange(s0, e0)
        for s1 in starts[bi:]:
            e1 = min(n, s1 + tile)
            t = squared_distances(x32[s0:e0], x32[s1:e1], a_sq=sq32[s0:e0], b_sq=sq32[s1:e1])  # symmetric
            row_max(t, rows0, s1)
            _merge_candidates(t, s1, rows0, cand_i, cand_v, thr)
            if s1 != s0:
                rows1 = np.arange(s1, e1)
                col_max(t, rows1, s0)
                _merge_candidates(t.T, s0, rows1, cand_i, cand_v, thr)
        yield rows0, cand_i[s0:e0], cand_v[s0:e0], thr[s0:e0].astype(np.float64), ramax[s0:e0]


def _torch_candidate_blocks(
    x32: np.ndarray, sq: np.ndarray, kc: int, chunk: int, device: str
) -> Iterator[_Block]:
    import torch

    n = x32.shape[0]
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32: the error bound assumes float32
    try:
        xt = torch.from_numpy(x32).to(device)
        sqt = torch.from_numpy(sq.astype(np.float32)).to(device)
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            rows = np.arange(s, e)
            g = (xt[s:e] * -2.0) @ xt.T  # a_ij = |x_j|^2 - 2 x_i.x_j = d_ij - |x_i|^2
            g.add_(sqt[None, :])
            amax = g.argmax(dim=1).cpu().numpy()
            v, c = torch.topk(g, min(kc, n), dim=1, largest=False, sorted=False)
            cval = v.double().cpu().numpy() + sq[s:e, None]
            thr = cval.max(axis=1)
            cand = c.cpu().numpy().astype(np.int64)
            del g, v, c
            yield rows, cand, cval, thr, amax
    finally:
        torch.set_float32_matmul_precision(prev)


def _faiss_candidate_blocks(
    x32: np.ndarray, sq: np.ndarray, kc: int, chunk: int, device: str
) -> Iterator[_Block]:
    import faiss

    n, d = x32.shape
    index = faiss.IndexFlatL2(d)
    # Farthest point = max inner product of [x_j, |x_j|^2] with [-2 x_i, 1] (+ |x_i|^2).
    far = faiss.IndexFlatIP(d + 1)
    if device != "cpu":
        res = faiss.StandardGpuResources()
        gpu_id = int(device.split(":")[1]) if ":" in device else 0
        index = faiss.index_cpu_to_gpu(res, gpu_id, index)
        far = faiss.index_cpu_to_gpu(res, gpu_id, far)
    index.add(x32)
    far.add(np.hstack([x32, sq.astype(np.float32)[:, None]]))
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        rows = np.arange(s, e)
        dist, cand = index.search(x32[s:e], kc)
        cval = dist.astype(np.float64)
        thr = cval.max(axis=1)
        cand = cand.astype(np.int64)
        q = np.hstack([-2.0 * x32[s:e], np.ones((e - s, 1), np.float32)])
        _, amax = far.search(q, 1)
        yield rows, cand, cval, thr, amax[:, 0].astype(np.int64)


# ----------------------------------------------------------------------------- public API


def knn_graph(
    features: np.ndarray,
    k: int,
    *,
    backend: str = "auto",
    device: str | None = None,
    chunk_size: int | None = None,
    slack: int = 8,
) -> KNNGraph:
    """Exact k-NN graph (k+1 columns, self included) of ``features`` on squared Euclidean distance.

    One pass of tiled matrix products finds candidates and each row's farthest point
    (``chunk_size``: the tile side for numpy, default 1024; rows per block for torch/faiss,
    default from a 256 MiB budget); candidates are re-scored in float64 (module docstring). ``backend`` is ``numpy`` (BLAS), ``torch`` (``device`` ``cpu`` or ``cuda``),
    ``faiss`` (IndexFlatL2, GPU when faiss has GPUs) or ``auto``. ``slack`` extra candidates per
    row make the exactness check pass without a fallback in all but degenerate rows.
    """
    x = validate_features(features, "features")
    n = x.shape[0]
    if not isinstance(k, (int, np.integer)) or k < 0 or k > n - 1:
        raise ValueError(f"knn_graph: k={k} must be an integer in [0, N-1] = [0, {n - 1}]")
    if slack < 0:
        raise ValueError(f"knn_graph: slack={slack} must be >= 0")
    rows = np.ascontiguousarray(x).view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    _, first, inv, counts = np.unique(rows, return_index=True, return_inverse=True, return_counts=True)
    if len(first) < n:  # exact duplicates (e.g. images sharing their track's feature): one point each
        unique = knn_graph(x[first], min(int(k), len(first) - 1), backend=backend, device=device,
                           chunk_size=chunk_size, slack=slack)
        return _with_duplicates(unique, inv.ravel(), counts, int(k) + 1)
    backend, device = resolve_backend(backend, device)
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"knn_graph: chunk_size={chunk_size} must be >= 1")
    if chunk_size:
        chunk = int(chunk_size)
    else:
        chunk = DEFAULT_TILE if backend == "numpy" else auto_chunk_size(n)
    kk = int(k) + 1
    kc = min(n, kk + int(slack))
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    sq = sq_norms(x)
    norms = np.sqrt(sq)
    nmax = float(norms.max())
    # Rigorous bound on |float32 distance - exact distance| (Higham: |fl(x.y) - x.y| <= g_d |x||y|)
    # plus the roundings of the additions and, for float64 input, of the cast to float32.
    dim = x.shape[1]
    gamma = dim * _U32 / (1.0 - dim * _U32)
    err = 2.0 * gamma * norms * nmax + 4.0 * _U32 * (sq + nmax**2 + 2.0 * norms * nmax)
    if x.dtype != np.float32:
        err += 4.0 * _U32 * (norms + nmax) ** 2
    err = 1.25 * err * (1.0 if backend == "numpy" else 2.0) + 1e-12 * (sq + nmax**2)

    if backend == "numpy":
        blocks = _numpy_candidate_blocks(x32, sq, kc, chunk)  # tiles of chunk x chunk
    elif backend == "torch":
        blocks = _torch_candidate_blocks(x32, sq, kc, chunk, device)
    else:
        blocks = _faiss_candidate_blocks(x32, sq, kc, chunk, device)

    cand = np.empty((n, kc), dtype=np.int64)
    cval = np.empty((n, kc), dtype=np.float64)
    thr = np.empty(n, dtype=np.float64)
    amax = np.empty(n, dtype=np.int64)
    for rows, c, cv, t, am in blocks:
        cand[rows], cval[rows], thr[rows], amax[rows] = c, cv, t, am
    if kc >= n:  # every point is a candidate: nothing can be missing
        thr[:] = np.inf
    # Only candidates whose approximate value is within 2 err of the kk-th can be among the kk
    # nearest (the others are provably farther): re-score those, each symmetric pair once.
    order, cval = topk(cval, kc)
    cand = np.take_along_axis(cand, order, 1)
    need = cval <= (cval[:, kk - 1] + 2.0 * err)[:, None]
    pi = np.repeat(np.arange(n, dtype=np.int64), np.count_nonzero(need, axis=1))
    pj = cand[need]
    keys, inv = np.unique(np.minimum(pi, pj) * n + np.maximum(pi, pj), return_inverse=True)
    vals = np.full((n, kc), np.inf)
    vals[need] = pair_squared_distances(x, keys // n, keys % n, sq)[inv]
    rows = np.arange(n)
    indices, distances = _select_exact_from_candidates(vals, cand, rows, kk)
    # Provably complete iff every non-candidate is farther than the kk-th exact value; else redo
    # the row with every point whose approximate distance is within v + err.
    sq32 = sq.astype(np.float32)
    for r in np.flatnonzero(~(distances[:, -1] + err < thr)):
        approx = squared_distances(x32[r: r + 1], x32, a_sq=sq32[r: r + 1], b_sq=sq32)[0]
        c = np.union1d(np.flatnonzero(approx <= distances[r, -1] + err[r]), cand[r][need[r]])
        v = pair_squared_distances(x, np.full(1, r), c[None, :], sq)
        i2, d2 = _select_exact_from_candidates(v, c[None, :], rows[r : r + 1], kk)
        indices[r], distances[r] = i2[0], d2[0]
    row_max = pair_squared_distances(x, rows, amax, sq)
    return KNNGraph(indices, distances.astype(np.float32), row_max)


def _with_duplicates(unique: KNNGraph, inv: np.ndarray, counts: np.ndarray, kk: int) -> KNNGraph:
    """The graph of N points from the graph of their U distinct values: each distinct neighbour
    stands for all its copies (distance 0 among copies), ordered by the key (distance, j != i, j).
    No row needs the exactness fallback, whatever the number of copies."""
    n = len(inv)
    members = np.argsort(inv, kind="stable")  # original indices grouped by distinct value, ascending
    starts = np.concatenate([[0], np.cumsum(counts)])
    nb, nd = unique.indices, unique.distances
    lens = counts[nb].ravel()
    flat_u = np.repeat(np.repeat(np.arange(unique.n), nb.shape[1]), lens)
    flat_d = np.repeat(nd.ravel(), lens)
    off = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    flat_j = members[np.repeat(starts[nb.ravel()], lens) + off]
    o = np.lexsort((flat_j, flat_d, flat_u))
    flat_u, flat_d, flat_j = flat_u[o], flat_d[o], flat_j[o]
    width = min(kk + 1, n)
    rank = np.arange(len(flat_u)) - np.searchsorted(flat_u, flat_u)
    keep = rank < width
    cand = np.full((unique.n, width), -1, np.int64)
    cval = np.full((unique.n, width), np.inf, np.float32)
    cand[flat_u[keep], rank[keep]] = flat_j[keep]
    cval[flat_u[keep], rank[keep]] = flat_d[keep]
    rows = np.arange(n)
    c, v = cand[inv], cval[inv]
    other = (c != rows[:, None]) & (c >= 0)
    pick = np.argsort(~other, axis=1, kind="stable")[:, : kk - 1]  # first kk-1 others, key order kept
    indices = np.hstack([rows[:, None], np.take_along_axis(c, pick, 1)])
    distances = np.hstack([np.zeros((n, 1), np.float32), np.take_along_axis(v, pick, 1)])
    return KNNGraph(indices, distances, unique.row_max[inv])


def knn_graph_from_blocks(
    distance_fn: Callable[[np.ndarray], np.ndarray],
    n: int,
    k: int,
    *,
    chunk_size: int | None = None,
) -> KNNGraph:
    """Exact k-NN graph from a caller's distance rows.

    ``distance_fn(rows)`` returns the (len(rows), n) distances from each point in ``rows`` to all
    n points (e.g. track-level or bias-fused distances). The neighbours are the k+1 smallest of
    each row by the key ``(distance, j != i, j)``; ``row_max`` is each row's maximum.
    """
    if n < 1:
        raise ValueError(f"knn_graph_from_blocks: n={n} must be >= 1")
    if not isinstance(k, (int, np.integer)) or k < 0 or k > n - 1:
        raise ValueError(f"knn_graph_from_blocks: k={k} must be an integer in [0, {n - 1}]")
    chunk = int(chunk_size) if chunk_size else auto_chunk_size(n)
    kk = int(k) + 1
    indices = np.empty((n, kk), dtype=np.int64)
    distances = np.empty((n, kk), dtype=np.float32)
    row_max = np.empty(n, dtype=np.float64)
    for s in range(0, n, chunk):
        rows = np.arange(s, min(n, s + chunk))
        block = check_distance_block(distance_fn(rows), (len(rows), n), "distance_fn(rows)")
        row_max[rows] = block.max(axis=1)
        sel_i, sel_d = select_smallest(block, rows, kk)
        indices[rows] = sel_i
        distances[rows] = sel_d
    return KNNGraph(indices, distances, row_max)


def check_distance_block(block: np.ndarray, shape: tuple[int, int], what: str) -> np.ndarray:
    """Validate a caller-supplied distance block: the expected shape, real and finite."""
    block = np.asarray(block)
    if block.shape != shape:
        raise ValueError(f"{what} returned shape {block.shape}, expected {shape}")
    if not np.issubdtype(block.dtype, np.floating):
        block = block.astype(np.float64)
    if not np.isfinite(block).all():
        raise ValueError(f"{what} returned NaN/Inf distances")
    return block


def select_smallest(block: np.ndarray, rows: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """The kk smallest of each row of ``block`` by the key (value, col != row, col), sorted."""
    cols = np.arange(block.shape[1])
    return topk(block, kk, tiebreak=(cols[None, :] != rows[:, None],))

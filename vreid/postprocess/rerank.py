"""Exact k-reciprocal re-ranking (Zhong et al. 2017) at city scale: sparse, no N x N matrix.

Zhong, Zheng, Cao, Li, "Re-ranking Person Re-identification with k-reciprocal Encoding",
CVPR 2017. The released code builds several dense (Q+G) x (Q+G) matrices; this module computes
the same result from the exact k-NN graph (k1+1 nearest of every point and each row's maximum,
:mod:`vreid.postprocess.knn`) with O(N k) sparse work, then streams query chunks against the
gallery. Steps as numbered in METHODS.md "Post-processing":

1. d(i, j) squared Euclidean over all Q+G points, each row divided by its maximum;
2. R(i, k) = j among the k+1 nearest of i whose own k+1 nearest contain i (self included);
3. E(i) = R(i, k1) united with R(c, round(k1/2)) for each c in R(i, k1) sharing more than 2/3 of
   R(c, round(k1/2)) with R(i, k1);
4. V[i, j] = exp(-d(i, j)) / sum over E(i), for j in E(i);
5. for k2 > 1, V[i] = mean of V over the k2 nearest of i (self included);
6. m(i, j) = sum_k min(V[i, k], V[j, k]) and J = 1 - m / (2 - m) (J = 1 where m = 0);
7. final = (1 - lambda) J + lambda d, for query rows x gallery columns.

Ties (exact duplicate features) are ordered by (distance, j != i, j): self first, then index.
In a top-K list, equal final values are ordered by d, then gallery index, so pairs with m = 0
keep the order of d even when lambda = 0.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse as sp

from vreid.postprocess.kernels import pair_squared_distances, sq_norms, squared_distances, topk
from vreid.postprocess.knn import (
    KNNGraph,
    auto_chunk_size,
    check_distance_block,
    knn_graph,
    knn_graph_from_blocks,
    validate_features,
)

__all__ = [
    "FeatureDistance",
    "k_reciprocal_encode",
    "k_reciprocal_rerank",
    "k_reciprocal_rerank_distances",
    "rerank_from_graph",
    "K1_DEFAULT",
    "K2_DEFAULT",
    "LAMBDA_DEFAULT",
]

# The paper's settings (Zhong et al. 2017: k1=20, k2=6, lambda=0.3). Callers (the config layer)
# pass their own values; these are only the argument defaults.
K1_DEFAULT = 20
K2_DEFAULT = 6
LAMBDA_DEFAULT = 0.3
# The "2/3" of the step-3 expansion rule (Zhong et al. 2017), in the released code's float form.
EXPANSION_OVERLAP = 2.0 / 3
# Upper bound on the (query, column, gallery) triples of one Jaccard chunk (memory ~ 48 B each).
JACCARD_TRIPLES_PER_CHUNK = 4_000_000
# Memory for the dense query-chunk x N blocks of steps 6-7 (~40 bytes per element).
RERANK_BLOCK_BYTES = 512 * 2**20

DistanceFn = Callable[[np.ndarray], np.ndarray]
PairFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------- distances


class FeatureDistance:
    """Squared Euclidean distances over stacked features (query rows first), on demand.

    ``fd(rows)`` -> (len(rows), N) rows; ``fd.block(rows, start, stop)`` -> columns
    ``start:stop`` only; ``fd.pairs(i, j)`` -> exact values for index pairs. Blocks are float64
    matrix products (|error| ~ 1e-13), computed ``col_chunk`` columns at a time; a float64 copy
    of the features is kept when it needs at most ``cache_bytes``, else columns are cast per call.
    """

    def __init__(self, features: np.ndarray, *, cache_bytes: int = 256 * 2**20, col_chunk: int = 8192):
        self.x = validate_features(features, "features")
        self.n = int(self.x.shape[0])
        self.sq = sq_norms(self.x)
        self._x64 = (
            self.x.astype(np.float64, copy=False) if self.n * self.x.shape[1] * 8 <= cache_bytes else None
        )
        self.col_chunk = int(col_chunk)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return self.block(rows, 0, self.n)

    def block(self, rows: np.ndarray, start: int, stop: int) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        xr = self.x[rows].astype(np.float64, copy=False)
        out = np.empty((len(rows), stop - start), dtype=np.float64)
        for c0 in range(start, stop, self.col_chunk):
            c1 = min(stop, c0 + self.col_chunk)
            xc = self._x64[c0:c1] if self._x64 is not None else self.x[c0:c1].astype(np.float64)
            squared_distances(xr, xc, len(rows), a_sq=self.sq[rows], b_sq=self.sq[c0:c1], dtype=np.float64,
                              out=out[:, c0 - start: c1 - start])
        inside = (rows >= start) & (rows < stop)
        out[np.flatnonzero(inside), rows[inside] - start] = 0.0
        return out

    def pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return pair_squared_distances(self.x, rows, cols, self.sq)


def _block_fn(distance_fn: DistanceFn, n: int) -> Callable[[np.ndarray, int, int], np.ndarray]:
    block = getattr(distance_fn, "block", None)
    if block is not None:
        return lambda rows, a, b: check_distance_block(
            block(rows, a, b), (len(rows), b - a), "distance_fn.block(rows, start, stop)"
        )
    return lambda rows, a, b: check_distance_block(
        distance_fn(rows), (len(rows), n), "distance_fn(rows)"
    )[:, a:b]


def _pairs_from_rows(distance_fn: DistanceFn, n: int, chunk: int) -> PairFn:
    """Pair distances read from full rows (for callers that can only give rows)."""

    def pairs(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows), dtype=np.float64)
        urows, inv = np.unique(rows, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        for s in range(0, len(urows), chunk):
            part = urows[s : s + chunk]
            lo, hi = np.searchsorted(inv[order], [s, s + len(part)])
            sel = order[lo:hi]
            block = check_distance_block(distance_fn(part), (len(part), n), "distance_fn(rows)")
            out[sel] = block[inv[sel] - s, cols[sel]]
        return out

    return pairs


# ----------------------------------------------------------------------------- validation


def _check_int(name: str, value: object, lo: int, hi: int, why: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name}={value} must be in [{lo}, {hi}] ({why})")
    return int(value)


def _check_params(
    n: int, num_query: int, k1: int, k2: int, lambda_value: float, top_k: int | None
) -> tuple[int, int, float, int | None]:
    if num_query < 1:
        raise ValueError("query is empty: re-ranking needs at least one query")
    if n - num_query < 1:
        raise ValueError("gallery is empty: re-ranking needs at least one gallery item")
    k1 = _check_int("k1", k1, 1, n - 1, f"N-1 with N = query + gallery = {n}")
    k2 = _check_int("k2", k2, 1, n - 1, f"N-1 with N = query + gallery = {n}")
    try:
        lam = float(lambda_value)
    except (TypeError, ValueError):
        raise ValueError(f"lambda_value must be a number in [0, 1], got {lambda_value!r}") from None
    if not (0.0 <= lam <= 1.0):
        raise ValueError(f"lambda_value={lambda_value} must be in [0, 1]")
    if top_k is not None:
        top_k = _check_int("top_k", top_k, 1, n - num_query, "the gallery size")
    return k1, k2, lam, top_k


# ----------------------------------------------------------------------------- steps 1-5


def _csr_from_lists(idx: np.ndarray, n: int, dtype=np.float64) -> sp.csr_matrix:
    """N x N CSR with a 1 at (i, idx[i, a]) for every a (idx rows hold distinct columns)."""
    kk = idx.shape[1]
    indptr = np.arange(0, idx.shape[0] * kk + 1, kk, dtype=np.int64)
    return sp.csr_matrix((np.ones(idx.size, dtype=dtype), idx.ravel(), indptr), shape=(n, n))


def _reciprocal(nn: np.ndarray, n: int) -> sp.csr_matrix:
    """Step 2: R(i, k) as a 0/1 CSR matrix, from the k+1 nearest lists ``nn`` (N, k+1)."""
    a = _csr_from_lists(nn, n)
    r = a.multiply(a.T).tocsr()
    r.eliminate_zeros()
    r.sort_indices()
    return r


def k_reciprocal_encode(
    graph: KNNGraph,
    k1: int = K1_DEFAULT,
    k2: int = K2_DEFAULT,
    pair_distance_fn: PairFn | None = None,
) -> sp.csr_matrix:
    """Steps 1-5 of Zhong et al. 2017: the (N, N) sparse k-reciprocal feature V (after QE).

    ``pair_distance_fn(rows, cols)`` gives raw distances for pairs of E(i) outside i's graph row
    (points added by the step-3 expansion); it is not called when none are needed.
    """
    n = graph.n
    if k1 > graph.k:
        raise ValueError(f"k1={k1} exceeds the graph's k={graph.k}: build the graph with k >= k1")
    if k2 > graph.k + 1:
        raise ValueError(f"k2={k2} exceeds the graph's k+1={graph.k + 1}: build it with k >= k2-1")
    nn = graph.indices
    half = int(np.around(k1 / 2.0))  # the original's rounding (half to even)
    # step 2
    b = _reciprocal(nn[:, : k1 + 1], n)
    h = _reciprocal(nn[:, : half + 1], n)
    # step 3: |R(c, k1/2) & R(i, k1)| for c in R(i, k1), then the 2/3 rule
    counts = b.multiply(b @ h.T).tocsr()
    counts.eliminate_zeros()
    hsize = np.diff(h.indptr)
    crow = np.repeat(np.arange(n), np.diff(counts.indptr))
    ok = counts.data > EXPANSION_OVERLAP * hsize[counts.indices]
    s = sp.csr_matrix(
        (np.ones(int(ok.sum())), (crow[ok], counts.indices[ok])), shape=(n, n)
    )
    e = (b + s @ h).tocsr()
    e.sum_duplicates()
    e.sort_indices()
    er = np.repeat(np.arange(n), np.diff(e.indptr))
    ec = e.indices.astype(np.int64)
    # step 1 + 4: normalised distances of E's pairs, from the graph where it has them
    d = np.empty(len(ec), dtype=np.float64)
    gkeys = (np.arange(n, dtype=np.int64)[:, None] * n + graph.indices).ravel()
    gorder = np.argsort(gkeys, kind="stable")
    gsorted = gkeys[gorder]
    keys = er.astype(np.int64) * n + ec
    pos = np.minimum(np.searchsorted(gsorted, keys), len(gsorted) - 1)
    found = gsorted[pos] == keys
    d[found] = graph.distances.ravel()[gorder[pos[found]]]
    miss = np.flatnonzero(~found)
    if len(miss):
        if pair_distance_fn is None:
            raise ValueError(
                f"{len(miss)} pairs of the expanded sets E(i) are outside the k-NN graph: "
                "pass distance_fn or pair_distance_fn to compute their distances"
            )
        extra = np.asarray(pair_distance_fn(er[miss], ec[miss]), dtype=np.float64)
        if extra.shape != (len(miss),) or not np.isfinite(extra).all():
            raise ValueError("pair_distance_fn returned a wrong shape or NaN/Inf distances")
        d[miss] = extra.astype(np.float32)  # same precision as the graph's distances
    denom = np.where(graph.row_max > 0, graph.row_max, 1.0)
    w = np.exp(-d / denom[er])
    w /= np.bincount(er, weights=w, minlength=n)[er]
    v = sp.csr_matrix((w, e.indices, e.indptr), shape=(n, n))
    # step 5: local query expansion, mean of V over the k2 nearest (self included)
    if k2 != 1:
        v = (_csr_from_lists(nn[:, :k2], n) @ v).tocsr()
        v.data /= k2
        v.sort_indices()
    return v


# ----------------------------------------------------------------------------- steps 6-7


def _jaccard_overlap(vq: sp.csr_matrix, vg_csc: sp.csc_matrix) -> np.ndarray:
    """Step 6 numerator for a query chunk: m[i, g] = sum_k min(Vq[i, k], Vg[g, k]), dense."""
    b = vq.shape[0]
    ng = vg_csc.shape[0]
    il = np.repeat(np.arange(b, dtype=np.int64), np.diff(vq.indptr))
    k = vq.indices
    cnt = np.diff(vg_csc.indptr)[k]
    total = int(cnt.sum())
    if total == 0:
        return np.zeros((b, ng))
    starts = vg_csc.indptr[k].astype(np.int64)
    offs = np.cumsum(cnt) - cnt
    pos = np.repeat(starts - offs, cnt) + np.arange(total, dtype=np.int64)
    mins = np.minimum(np.repeat(vq.data, cnt), vg_csc.data[pos])
    key = np.repeat(il * ng, cnt) + vg_csc.indices[pos]
    return np.bincount(key, weights=mins, minlength=b * ng).reshape(b, ng)


def rerank_from_graph(
    graph: KNNGraph,
    num_query: int,
    k1: int = K1_DEFAULT,
    k2: int = K2_DEFAULT,
    lambda_value: float = LAMBDA_DEFAULT,
    top_k: int | None = None,
    *,
    distance_fn: DistanceFn | None = None,
    pair_distance_fn: PairFn | None = None,
    query_gallery_dist: np.ndarray | None = None,
    chunk_size: int | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """k-reciprocal re-ranking (Zhong et al. 2017, steps 1-7) on a precomputed k-NN graph.

    Build ``graph`` once with k >= the largest k1 (and k2-1) to try, then call this for every
    (k1, k2, lambda): only O(N k) sparse work, the Jaccard chunks and the query x gallery
    distances are redone. ``distance_fn(rows)`` returns raw distance rows over all N points
    (query first), e.g. a :class:`FeatureDistance`; a ``.block(rows, start, stop)`` method and a
    ``.pairs(rows, cols)`` method are used when present. ``query_gallery_dist`` (Q, G), raw,
    replaces the distance_fn calls for the query x gallery part (cheap sweeps over lambda/k);
    with it and ``pair_distance_fn``, ``distance_fn`` may be None.

    Returns the (Q, G) float32 final distance, or with ``top_k=K`` ``(indices, distances)`` of
    shape (Q, K): the K smallest final distances per query (ties by d, then gallery index),
    computed chunk by chunk without a (Q, G) array.
    """
    n = graph.n
    k1, k2, lam, top_k = _check_params(n, num_query, k1, k2, lambda_value, top_k)
    q = int(num_query)
    ng = n - q
    chunk = int(chunk_size) if chunk_size else auto_chunk_size(n, 40, RERANK_BLOCK_BYTES)
    if query_gallery_dist is not None:
        query_gallery_dist = check_distance_block(query_gallery_dist, (q, ng), "query_gallery_dist")
    if distance_fn is None and query_gallery_dist is None:
        raise ValueError("rerank_from_graph needs distance_fn or query_gallery_dist")
    if pair_distance_fn is None and distance_fn is not None:
        pair_distance_fn = getattr(distance_fn, "pairs", None) or _pairs_from_rows(distance_fn, n, chunk)
    v = k_reciprocal_encode(graph, k1, k2, pair_distance_fn)
    block = _block_fn(distance_fn, n) if distance_fn is not None else None
    denom = np.where(graph.row_max > 0, graph.row_max, 1.0)

    vq_all = v[:q]
    vg_csc = v[q:].tocsc()
    vg_csc.sort_indices()
    # Chunk queries so that both the dense chunk x G blocks and the triples stay bounded.
    colnnz = np.diff(vg_csc.indptr)
    qrow = np.repeat(np.arange(q), np.diff(vq_all.indptr))
    triples = np.bincount(qrow, weights=colnnz[vq_all.indices], minlength=q)
    bounds = [0]
    acc = 0
    for i, t in enumerate(triples):
        if i > bounds[-1] and (i - bounds[-1] >= chunk or acc + t > JACCARD_TRIPLES_PER_CHUNK):
            bounds.append(i)
            acc = 0
        acc += int(t)
    bounds.append(q)

    if top_k is None:
        out = np.empty((q, ng), dtype=np.float32)
    else:
        out_i = np.empty((q, top_k), dtype=np.int64)
        out_d = np.empty((q, top_k), dtype=np.float32)
    for a, b in zip(bounds[:-1], bounds[1:]):
        rows = np.arange(a, b)
        m = _jaccard_overlap(vq_all[a:b], vg_csc)
        tmp = np.subtract(2.0, m)
        m /= tmp
        jac = np.subtract(1.0, m, out=m)  # step 6: J = 1 - m / (2 - m), in place
        if query_gallery_dist is not None:
            dq = query_gallery_dist[a:b] / denom[rows, None]
        else:
            dq = block(rows, q, n)
            dq /= denom[rows, None]  # step 1: normalised by the row maximum
        jac *= 1.0 - lam  # step 7
        final = np.add(jac, np.multiply(dq, lam, out=tmp), out=jac)
        del tmp
        if top_k is None:
            out[a:b] = final
        else:
            out_i[a:b], out_d[a:b] = topk(final, top_k, tiebreak=(dq,))  # ties: by d, then index
    return out if top_k is None else (out_i, out_d)


# ----------------------------------------------------------------------------- entry points


def k_reciprocal_rerank(
    query: np.ndarray,
    gallery: np.ndarray,
    k1: int = K1_DEFAULT,
    k2: int = K2_DEFAULT,
    lambda_value: float = LAMBDA_DEFAULT,
    top_k: int | None = None,
    *,
    backend: str = "auto",
    device: str | None = None,
    chunk_size: int | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """k-reciprocal re-ranking of Zhong et al. 2017 on features, exact and sparse.

    ``query`` (Q, d) and ``gallery`` (G, d) float features; distances are squared Euclidean as
    in the original. Equal to the original dense algorithm (steps 1-7 of METHODS.md) with ties
    ordered self first, then by index. With ``top_k=None`` returns the dense (Q, G) float32
    final distance; with ``top_k=K`` returns ``(indices, distances)``, each (Q, K), without
    holding any (Q, G) or (N, N) array. ``backend``/``device``/``chunk_size`` go to
    :func:`vreid.postprocess.knn.knn_graph`.
    """
    qf = validate_features(query, "query")
    gf = validate_features(gallery, "gallery")
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"query and gallery feature dims differ: query has {qf.shape[1]}, gallery {gf.shape[1]}"
        )
    n = len(qf) + len(gf)
    k1, k2, lambda_value, top_k = _check_params(n, len(qf), k1, k2, lambda_value, top_k)
    dtype = np.result_type(qf.dtype, gf.dtype)
    feats = np.concatenate([qf.astype(dtype, copy=False), gf.astype(dtype, copy=False)], axis=0)
    graph = knn_graph(feats, max(k1, k2 - 1), backend=backend, device=device, chunk_size=chunk_size)
    return rerank_from_graph(
        graph, len(qf), k1, k2, lambda_value, top_k, distance_fn=FeatureDistance(feats),
        chunk_size=chunk_size,
    )


def k_reciprocal_rerank_distances(
    distance_fn: DistanceFn,
    num_query: int,
    num_gallery: int,
    k1: int = K1_DEFAULT,
    k2: int = K2_DEFAULT,
    lambda_value: float = LAMBDA_DEFAULT,
    top_k: int | None = None,
    *,
    pair_distance_fn: PairFn | None = None,
    chunk_size: int | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """k-reciprocal re-ranking (Zhong et al. 2017) on precomputed distances.

    ``distance_fn(rows)`` returns the (len(rows), N) distances from the points ``rows`` to all
    N = num_query + num_gallery points (query first): e.g. track-level or bias-fused distances.
    The k-NN graph is built from these blocks (:func:`knn_graph_from_blocks`), then as
    :func:`rerank_from_graph`. ``pair_distance_fn(rows, cols)`` (optional) gives single pairs;
    without it the few rows that need pairs outside the graph are read again.
    """
    for name, val in (("num_query", num_query), ("num_gallery", num_gallery)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {val!r}")
    n = int(num_query) + int(num_gallery)
    k1, k2, lambda_value, top_k = _check_params(n, int(num_query), k1, k2, lambda_value, top_k)
    chunk = int(chunk_size) if chunk_size else auto_chunk_size(n)
    graph = knn_graph_from_blocks(distance_fn, n, max(k1, k2 - 1), chunk_size=chunk)
    return rerank_from_graph(
        graph, int(num_query), k1, k2, lambda_value, top_k, distance_fn=distance_fn,
        pair_distance_fn=pair_distance_fn, chunk_size=chunk_size,
    )


def dense_distance_fn(dist: np.ndarray) -> DistanceFn:
    """Wrap an in-memory (N, N) distance matrix as a ``distance_fn`` (tests, small problems)."""
    dist = np.asarray(dist)
    return lambda rows: dist[np.asarray(rows)]


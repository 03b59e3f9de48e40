"""The two numerical kernels every post-processing step uses (issue 18 item 8).

* :func:`squared_distances` — squared Euclidean distances ``|a|^2 + |b|^2 - 2 a.b`` of two row
  sets, one matrix product per chunk of rows (memory O(chunk x m) besides the output), clipped
  at 0; :func:`pair_squared_distances` is the same quantity for index pairs (the values the
  exact k-NN graph and the re-ranking's expanded sets re-score in float64).
* :func:`topk` — the k smallest entries of every row, sorted, with one deterministic tie rule:
  the key ``(value, *tiebreak, column)``. A partition finds each row's k-th value; only rows
  whose ties straddle the k-th place are sorted whole (vectorised, no per-row Python loop), so
  exact duplicates (e.g. images sharing their track's feature) cost nothing extra.

The numpy / BLAS backend of :mod:`vreid.postprocess.knn` uses both; its torch and faiss backends
pick their float32 candidates on their device (``torch.topk``, faiss search), then the exact
re-scoring and the final selection run through these kernels like every other step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["squared_distances", "pair_squared_distances", "sq_norms", "topk"]

# Rows per chunk are chosen so that one chunk holds about this many cells.
CHUNK_CELLS = 1 << 22


def sq_norms(x: np.ndarray) -> np.ndarray:
    """Squared row norms in float64 (products of float32 values are exact in float64)."""
    return np.einsum("ij,ij->i", x, x, dtype=np.float64)


def _chunk(chunk: int | None, width: int) -> int:
    if chunk is None:
        return max(1, CHUNK_CELLS // max(1, width))
    if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    return int(chunk)


def squared_distances(a: np.ndarray, b: np.ndarray, chunk: int | None = None, *,
                      a_sq: np.ndarray | None = None, b_sq: np.ndarray | None = None,
                      dtype=np.float32, out: np.ndarray | None = None) -> np.ndarray:
    """(n, m) squared Euclidean distances between the rows of ``a`` (n, d) and ``b`` (m, d).

    Computed in ``dtype`` (float32: the ranking blocks; float64: exact re-scoring), ``chunk``
    rows of ``a`` per matrix product (default about 4M cells); ``a_sq`` / ``b_sq`` are the rows'
    squared norms when the caller has them. Negative round-off is clipped to 0.
    """
    dtype = np.dtype(dtype).type
    a = np.asarray(a, dtype=dtype)
    b = np.asarray(b, dtype=dtype)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"squared_distances needs (n, d) and (m, d) arrays, got {a.shape} and {b.shape}")
    step = _chunk(chunk, b.shape[0])
    a_sq = (sq_norms(a) if a_sq is None else np.asarray(a_sq)).astype(dtype, copy=False)
    b_sq = (sq_norms(b) if b_sq is None else np.asarray(b_sq)).astype(dtype, copy=False)
    if out is None:
        out = np.empty((a.shape[0], b.shape[0]), dtype=dtype)
    for s in range(0, a.shape[0], step):
        block = out[s: s + step]
        np.matmul(a[s: s + step], b.T, out=block)
        block *= dtype(-2.0)
        block += a_sq[s: s + step, None]
        block += b_sq[None, :]
        np.maximum(block, dtype(0.0), out=block)
    return out


def pair_squared_distances(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, sq: np.ndarray | None = None,
                           max_elems: int = 2**18) -> np.ndarray:
    """Squared distances of index pairs of ``x``, ``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` in float64.

    ``rows`` (P,) and ``cols`` (P,) or (P, c); returns an array shaped like ``cols``. For float32
    features every product is exact in float64, so the value of a pair depends only on its two
    vectors (symmetric, reproducible ties); negative round-off is clipped, d(i, i) is exactly 0.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if sq is None:
        sq = sq_norms(x)
    flat = cols.ndim == 1
    c2 = cols[:, None] if flat else cols
    p, c = c2.shape
    d = x.shape[1]
    dots = np.empty((p, c), dtype=np.float64)
    if flat:  # small steps keep both gathered operands in cache
        step = max(1, max_elems // (8 * d))
        for s in range(0, p, step):
            e = min(p, s + step)
            np.einsum("pd,pd->p", x[rows[s:e]], x[cols[s:e]], dtype=np.float64, out=dots[s:e, 0])
    else:
        step = max(1, max_elems // max(1, c * d))
        for s in range(0, p, step):
            e = min(p, s + step)
            np.einsum("bcd,bd->bc", x[c2[s:e]], x[rows[s:e]], dtype=np.float64, out=dots[s:e])
    out = sq[rows, None] + sq[c2]
    out -= 2.0 * dots
    np.maximum(out, 0.0, out=out)
    out[c2 == rows[:, None]] = 0.0
    return out[:, 0] if flat else out


def _order(vals: np.ndarray, cols: np.ndarray, tbs: list[np.ndarray]) -> np.ndarray:
    """Row-wise order of the key (vals, *tbs, cols)."""
    return np.lexsort((cols, *reversed(tbs), vals), axis=-1)


def _topk_block(block: np.ndarray, k: int, tbs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    n, m = block.shape
    if k < m:
        part = np.argpartition(block, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(block, part, 1).max(axis=1)
        over = np.flatnonzero(np.count_nonzero(block <= kth[:, None], axis=1) > k)
        if over.size:  # ties straddle the k-th place: these rows are ordered whole by the key
            sub = block[over]
            cols = np.broadcast_to(np.arange(m), sub.shape)
            part[over] = _order(sub, cols, [t[over] for t in tbs])[:, :k]
    else:
        part = np.broadcast_to(np.arange(m), (n, m))
    vals = np.take_along_axis(block, part, 1)
    order = _order(vals, part, [np.take_along_axis(t, part, 1) for t in tbs])
    idx = np.take_along_axis(part, order, 1)
    return idx, np.take_along_axis(vals, order, 1)


def topk(d, k: int, *, tiebreak: Sequence[np.ndarray] = (), chunk: int | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` smallest entries of every row of ``d`` (n, m): ``(columns (n, k) int64, values)``.

    Sorted by the key ``(value, *tiebreak, column)``: ``tiebreak`` holds arrays shaped like
    ``d`` that order equal values (e.g. ``column != row`` puts a point before its duplicates,
    the raw distance orders equal re-ranked ones), then the lower column wins. Rows are processed
    ``chunk`` at a time (default about 4M cells). NaN is rejected, +-inf allowed.
    """
    d = np.asarray(d)
    if d.ndim != 2:
        raise ValueError(f"topk needs a 2-D (n, m) array, got shape {d.shape}")
    if not (np.issubdtype(d.dtype, np.floating) or np.issubdtype(d.dtype, np.integer)):
        raise ValueError(f"topk needs real numbers, got dtype {d.dtype}")
    n, m = d.shape
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= m:
        raise ValueError(f"k must be an integer in [1, number of columns = {m}], got {k!r}")
    tbs = [np.asarray(t) for t in tiebreak]
    for t in tbs:
        if t.shape != d.shape:
            raise ValueError(f"tiebreak arrays must have the shape of d {d.shape}, got {t.shape}")
    k = int(k)
    step = _chunk(chunk, m)
    indices = np.empty((n, k), dtype=np.int64)
    values = np.empty((n, k), dtype=d.dtype)
    for s in range(0, n, step):
        block = d[s: s + step]
        if np.issubdtype(block.dtype, np.floating):
            bad = np.flatnonzero(np.isnan(block).any(axis=1))
            if bad.size:
                raise ValueError(f"dist contains NaN in rows {(bad + s)[:10].tolist()}: expected numbers")
        indices[s: s + step], values[s: s + step] = _topk_block(block, k, [t[s: s + step] for t in tbs])
    return indices, values

"""Top-K ranking from a query × gallery distance block.

The K nearest gallery images of every query, ascending by distance, ties broken by the smaller
gallery index (the order a stable full argsort would give), without sorting whole rows: a
partition finds each row's K-th smallest value, the cells below it plus the first tied cells
(by gallery index) are kept, and only those K are sorted.
"""

from __future__ import annotations

import numpy as np

from vreid.postprocess.checks import as_distance_block

__all__ = ["topk_from_distances"]

# Query rows per chunk: about this many (query, gallery) cells per chunk.
_CHUNK_CELLS = 1 << 22


def _topk_block(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n, g = block.shape
    if k < g:
        kth = np.partition(block, k - 1, axis=1)[:, k - 1 : k]
        less = block < kth
        eq = block == kth
        need = k - less.sum(axis=1)
        sel = less | eq
        over = np.nonzero(eq.sum(axis=1) > need)[0]  # rows whose ties straddle the K-th place
        if over.size:
            first = np.cumsum(eq[over], axis=1) <= need[over, None]
            sel[over] = less[over] | (eq[over] & first)
        cols = np.nonzero(sel)[1].reshape(n, k)  # row-major: gallery indices ascend per row
    else:
        cols = np.broadcast_to(np.arange(g), (n, g))
    vals = np.take_along_axis(block, cols, axis=1)
    order = np.argsort(vals, axis=1, kind="stable")  # stable: ties keep ascending gallery index
    return np.take_along_axis(cols, order, axis=1), np.take_along_axis(vals, order, axis=1)


def topk_from_distances(dist, k: int, chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest gallery images per query: ``(indices (Q, k) int64, distances (Q, k))``.

    Ascending distance, ties by ascending gallery index; processed in chunks of ``chunk`` query
    rows (default: about 4M cells each). NaN distances are rejected, ±inf allowed.
    """
    d = as_distance_block(dist)
    num_q, num_g = d.shape
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= num_g:
        raise ValueError(f"k must be an integer in [1, number of gallery images = {num_g}], got {k!r}")
    k = int(k)
    if chunk is None:
        chunk = max(1, _CHUNK_CELLS // max(1, num_g))
    elif int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    chunk = int(chunk)
    indices = np.empty((num_q, k), dtype=np.int64)
    values = np.empty((num_q, k), dtype=d.dtype)
    for s in range(0, num_q, chunk):
        block = d[s : s + chunk]
        if np.issubdtype(block.dtype, np.floating):
            bad = np.nonzero(np.isnan(block).any(axis=1))[0]
            if bad.size:
                raise ValueError(
                    f"dist contains NaN in query rows {(bad + s)[:10].tolist()}: expected numbers"
                )
        indices[s : s + chunk], values[s : s + chunk] = _topk_block(block, k)
    return indices, values

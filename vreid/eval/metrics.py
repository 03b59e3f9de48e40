"""Re-identification metrics: mAP, CMC, mINP and the AI City top-100 mAP.

Definitions follow METHODS.md "Evaluation" (the Market-1501 protocol of Zheng et al. 2015 with
mINP from Ye et al. 2021, as in fast-reid): per query the gallery is ranked by ascending distance
(stable: ties keep gallery order), gallery images with the query's pid *and* camera are junk and
removed, queries with no remaining positive are skipped. AP is the mean over positives of the
precision at their rank, CMC@k is 1 when a positive is within the first k, mINP is
#positives / rank of the last positive. With ``top_k_ap=100`` AP is the AI City score: the sum
over the top 100 of the junk-removed ranking divided by min(#positives, 100).

Everything is vectorised over query chunks: memory is O(chunk × gallery), and after the sort the
work is O(#same-pid gallery images), never a Python loop over the gallery.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ReIDMetrics", "ReIDEvaluator", "evaluate", "evaluate_ranked", "evaluate_tracks"]

# Query rows per chunk are chosen so one chunk holds about this many (query, gallery) cells.
_CHUNK_CELLS = 1 << 22


@dataclass(frozen=True, eq=False)
class ReIDMetrics:
    """Mean metrics over the ``num_valid_queries`` queries that have a positive.

    ``cmc[k - 1]`` is CMC@k for k = 1..max_rank; ranks past the gallery size repeat CMC@G (= 1 for
    a full ranking, since every valid query has a positive somewhere in it).
    """

    mAP: float
    mINP: float
    cmc: np.ndarray
    num_valid_queries: int

    def as_dict(self) -> dict[str, float]:
        """mAP, mINP and rank-1/5/10 as plain floats (rank-k past ``max_rank`` is left out)."""
        out = {"mAP": float(self.mAP), "mINP": float(self.mINP)}
        for k in (1, 5, 10):
            if k <= len(self.cmc):
                out[f"rank-{k}"] = float(self.cmc[k - 1])
        return out


def _labels(name: str, values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integer labels, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_options(max_rank, top_k_ap) -> None:
    if int(max_rank) != max_rank or max_rank < 1:
        raise ValueError(f"max_rank must be an integer >= 1, got {max_rank!r}")
    if top_k_ap is not None and (int(top_k_ap) != top_k_ap or top_k_ap < 1):
        raise ValueError(f"top_k_ap must be None or an integer >= 1, got {top_k_ap!r}")


def _check_queries(q_pids, q_camids) -> tuple[np.ndarray, np.ndarray]:
    q_pids, q_camids = _labels("q_pids", q_pids), _labels("q_camids", q_camids)
    if len(q_camids) != len(q_pids):
        raise ValueError(
            f"q_camids has {len(q_camids)} entries, expected one per query ({len(q_pids)})"
        )
    if len(q_pids) == 0:
        raise ValueError("empty query set: expected at least one query")
    if (q_pids < 0).any():
        raise ValueError("q_pids must be known identities (>= 0); -1 marks an unknown pid")
    return q_pids, q_camids


def _check_distmat(distmat, num_q: int, num_g: int) -> np.ndarray:
    d = np.asarray(distmat)
    if d.shape != (num_q, num_g):
        raise ValueError(
            f"distmat has shape {d.shape}, expected (len(q_pids), len(g_pids)) = ({num_q}, {num_g})"
        )
    if not (np.issubdtype(d.dtype, np.floating) or np.issubdtype(d.dtype, np.integer)):
        raise ValueError(f"distmat must hold real numbers, got dtype {d.dtype}")
    return d


def _sort_keys(block: np.ndarray) -> np.ndarray | None:
    """(order-preserving bits of each float16/float32 distance << 32) | column: unique uint64
    keys whose plain sort is the stable row ranking; None for other dtypes."""
    if block.dtype not in (np.float16, np.float32) or block.shape[1] >= 1 << 32:
        return None
    bits = (block.astype(np.float32) + np.float32(0)).view(np.uint32)  # + 0: -0.0 -> +0.0
    bits ^= (bits >> 31) * np.uint32(0x7FFFFFFF) | np.uint32(0x80000000)  # negatives: all bits
    key = bits.astype(np.uint64)
    key <<= np.uint64(32)
    key |= np.arange(block.shape[1], dtype=np.uint64)
    return key


def _stable_positions(block: np.ndarray, rows: np.ndarray, cols: np.ndarray, first_row: int) -> np.ndarray | None:
    """Position of each cell ``(rows[i], cols[i])`` in its row's stable ranking of ``block``
    (``rows`` ascending), found in the sorted keys instead of inverting the whole (n, m)
    permutation; None for dtypes without sort keys."""
    key = _sort_keys(block)
    if key is None:
        return None
    bad = np.flatnonzero(np.isnan(block).any(axis=1))
    if bad.size:
        raise ValueError(f"distmat contains NaN in query rows {(bad + first_row)[:10].tolist()}: "
                         "expected numbers (+inf is allowed)")
    want = key[rows, cols]
    key.sort(axis=1)
    pos = np.empty(len(rows), np.int64)
    bounds = np.searchsorted(rows, np.arange(len(block) + 1))
    for r in np.flatnonzero(np.diff(bounds)):
        pos[bounds[r]:bounds[r + 1]] = np.searchsorted(key[r], want[bounds[r]:bounds[r + 1]])
    return pos


def _stable_argsort(block: np.ndarray) -> np.ndarray:
    """Row-wise ``np.argsort(block, axis=1, kind="stable")``, computed faster.

    float16/float32 rows are ranked by sorting one uint64 per cell, (order-preserving bits of the
    distance << 32) | gallery index: unique keys, so a plain (SIMD) sort gives the stable order.
    Other dtypes use numpy's default argsort and redo only the rows holding ties stably.
    """
    key = _sort_keys(block)
    if key is not None:
        key.sort(axis=1)
        key &= np.uint64(0xFFFFFFFF)
        return key.view(np.int64)
    order = np.argsort(block, axis=1)
    ranked = np.take_along_axis(block, order, axis=1)
    tied = np.nonzero((ranked[:, 1:] == ranked[:, :-1]).any(axis=1))[0]
    if tied.size:
        order[tied] = np.argsort(block[tied], axis=1, kind="stable")
    return order


def _argsort_checked(block: np.ndarray, first_row: int) -> np.ndarray:
    """Stable row ranking; a NaN sorts to either end of its row, so two looks per row find it."""
    order = _stable_argsort(block)
    if np.issubdtype(block.dtype, np.floating):
        ends = np.take_along_axis(block, order[:, [0, -1]], axis=1)
        bad = np.nonzero(np.isnan(ends).any(axis=1))[0]
        if bad.size:
            raise ValueError(
                f"distmat contains NaN in query rows {(bad + first_row)[:10].tolist()}: "
                "expected numbers (+inf is allowed)"
            )
    return order


def _check_ranked(ranked, num_q: int, num_g: int) -> np.ndarray:
    r = np.asarray(ranked)
    if r.ndim != 2 or r.shape[0] != num_q:
        raise ValueError(f"ranked indices have shape {r.shape}, expected (len(q_pids)={num_q}, K)")
    if r.shape[1] == 0 or r.shape[1] > num_g:
        raise ValueError(
            f"ranked lists have length K={r.shape[1]}, expected 1 <= K <= gallery size {num_g}"
        )
    if not np.issubdtype(r.dtype, np.integer):
        raise ValueError(f"ranked indices must be integers, got dtype {r.dtype}")
    if r.min() < 0 or r.max() >= num_g:
        raise ValueError(
            f"ranked indices must lie in [0, {num_g}), got range [{r.min()}, {r.max()}]"
        )
    s = np.sort(r, axis=1)
    dup = np.nonzero((s[:, 1:] == s[:, :-1]).any(axis=1))[0]
    if dup.size:
        raise ValueError(f"ranked lists repeat a gallery index (query rows {dup[:10].tolist()})")
    return r


def _code(table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position of each value in the sorted ``table``, -1 where absent."""
    idx = np.minimum(np.searchsorted(table, values), len(table) - 1)
    return np.where(table[idx] == values, idx, -1)


class _GalleryLabels:
    """Gallery pids as dense codes plus (pid) and (pid, camera) counts.

    #positives of a query (same pid, other camera) = count(pid) - count(pid, camera): no query ×
    gallery array, so it also serves truncated top-K lists. The compact codes make the per-cell
    pid gather of the ranking cheap.
    """

    def __init__(self, g_pids: np.ndarray, g_camids: np.ndarray):
        self.pid_table, pid_code = np.unique(g_pids, return_inverse=True)
        self.cam_table, cam_code = np.unique(g_camids, return_inverse=True)
        pid_code, cam_code = pid_code.ravel(), cam_code.ravel()
        self.pid_code = pid_code.astype(np.int16 if len(self.pid_table) < 1 << 15 else np.int32)
        self.camids = g_camids
        self._pid_counts = np.bincount(pid_code, minlength=len(self.pid_table))
        self._pair_keys, self._pair_counts = np.unique(
            pid_code * len(self.cam_table) + cam_code, return_counts=True
        )

    def query_codes(self, q_pids: np.ndarray) -> np.ndarray:
        """Dense pid codes of queries, -1 for a pid absent from the gallery."""
        return _code(self.pid_table, q_pids).astype(self.pid_code.dtype)

    def num_positives(self, q_codes: np.ndarray, q_camids: np.ndarray) -> np.ndarray:
        p = q_codes.astype(np.int64)
        c = _code(self.cam_table, q_camids)
        same_pid = np.where(p >= 0, self._pid_counts[p], 0)
        k = _code(self._pair_keys, p * len(self.cam_table) + c)
        same_cam = np.where((p >= 0) & (c >= 0) & (k >= 0), self._pair_counts[k], 0)
        return same_pid - same_cam


def _ranked_stats(order, q_codes, q_camids, g_codes, g_camids, npos, top_k_ap):
    """Per-query AP, INP and first-positive rank from ranked gallery indices ``order`` (n, K).

    Only the same-pid cells of the ranking are visited after one gather + compare.
    """
    rows, cols = np.nonzero(g_codes[order] == q_codes[:, None])  # row-major: cols ascend per row
    junk = g_camids[order[rows, cols]] == q_camids[rows]
    return _cell_stats(len(q_codes), rows, cols, junk, npos, top_k_ap)


def _cell_stats(n, rows, cols, junk, npos, top_k_ap):
    """Per-query AP, INP and first-positive rank from the same-pid cells of n rankings: ``rows``
    (query), ``cols`` (0-based position in the query's full ranking), row-major with ``cols``
    ascending per row, ``junk`` (same camera). A cell's rank in the junk-removed list is its
    position minus the junk cells before it in the row."""
    junk_seen = np.cumsum(junk) - junk  # junk cells before each cell, counted over all rows
    per_row = np.bincount(rows, minlength=n)
    row_start = np.cumsum(per_row) - per_row
    pos = ~junk
    r = rows[pos]
    rank = cols[pos] - (junk_seen - junk_seen[row_start[rows]])[pos] + 1  # 1-based, junk removed
    pos_per_row = np.bincount(r, minlength=n)
    hit = np.arange(len(r)) - (np.cumsum(pos_per_row) - pos_per_row)[r] + 1  # k-th positive in row
    precision = hit / rank
    denom = npos if top_k_ap is None else np.minimum(npos, top_k_ap)
    keep = slice(None) if top_k_ap is None else rank <= top_k_ap
    ap = np.bincount(r[keep], weights=precision[keep], minlength=n) / np.maximum(denom, 1)
    first_rank = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    first = hit == 1
    first_rank[r[first]] = rank[first]
    inp = np.zeros(n)
    last = hit == npos[r]  # the last positive is listed only when the list covers them all
    inp[r[last]] = hit[last] / rank[last]
    return ap, inp, first_rank


def _summarise(parts: list[tuple[np.ndarray, ...]], max_rank: int) -> "ReIDMetrics":
    """Mean AP / INP and CMC over the queries with a positive, from per-query parts."""
    ap, inp, first_rank, npos = (np.concatenate(a) for a in zip(*parts))
    valid = npos > 0
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError(
            "no query has a positive in the gallery (same pid, other camera): "
            "nothing to evaluate"
        )
    hist = np.bincount(np.minimum(first_rank[valid], max_rank + 1), minlength=max_rank + 2)
    cmc = np.cumsum(hist[1:max_rank + 1]) / n_valid
    cmc.setflags(write=False)
    return ReIDMetrics(float(ap[valid].mean()), float(inp[valid].mean()), cmc, n_valid)


class ReIDEvaluator:
    """fast-reid style accumulator: ``reset()``, ``process(...)`` per query block, ``evaluate()``.

    Each block is either a query × gallery distance block (ranked here by a stable argsort) or
    ranked top-K gallery indices (positions in ``g_pids``). Positive counts always come from the
    full gallery labels, so top-K lists give exact metrics when they hold every positive, exactly
    the AI City score (``top_k_ap=100``) when they reach rank 100 after junk removal (K >= 100 +
    the junk listed), and lower bounds otherwise (a missing positive adds 0 to AP; a query whose
    last positive is missing adds 0 to mINP, one whose first is missing is a CMC miss).
    Blocks are processed ``chunk_rows`` queries at a time (default: about 4M cells per chunk).
    """

    def __init__(self, g_pids, g_camids, max_rank: int = 50, top_k_ap: int | None = None,
                 chunk_rows: int | None = None):
        _check_options(max_rank, top_k_ap)
        g_pids, g_camids = _labels("g_pids", g_pids), _labels("g_camids", g_camids)
        if len(g_camids) != len(g_pids):
            raise ValueError(
                f"g_camids has {len(g_camids)} entries, "
                f"expected one per gallery image ({len(g_pids)})"
            )
        if len(g_pids) == 0:
            raise ValueError("empty gallery: expected at least one gallery image")
        if chunk_rows is not None and chunk_rows < 1:
            raise ValueError(f"chunk_rows must be None or >= 1, got {chunk_rows!r}")
        self.max_rank, self.top_k_ap, self.chunk_rows = int(max_rank), top_k_ap, chunk_rows
        self._gallery = _GalleryLabels(g_pids, g_camids)
        self.reset()

    @property
    def num_gallery(self) -> int:
        return len(self._gallery.camids)

    def reset(self) -> None:
        """Forget every processed query."""
        self._parts: list[tuple[np.ndarray, ...]] = []

    def process(self, q_pids, q_camids, *, distmat=None, ranked=None) -> None:
        """Add a block of queries with either ``distmat`` (n, G) or ``ranked`` indices (n, K)."""
        if (distmat is None) == (ranked is None):
            raise ValueError("process() takes exactly one of distmat= or ranked=")
        q_pids, q_camids = _check_queries(q_pids, q_camids)
        if distmat is not None:
            block = _check_distmat(distmat, len(q_pids), self.num_gallery)
        else:
            block = _check_ranked(ranked, len(q_pids), self.num_gallery)
        q_codes = self._gallery.query_codes(q_pids)
        npos = self._gallery.num_positives(q_codes, q_camids)
        step = self.chunk_rows or max(1, _CHUNK_CELLS // block.shape[1])
        parts = []  # kept aside until the whole block passed its checks
        for s in range(0, len(q_pids), step):
            part = block[s:s + step]
            order = _argsort_checked(part, s) if distmat is not None else part
            stats = _ranked_stats(order, q_codes[s:s + step], q_camids[s:s + step],
                                  self._gallery.pid_code, self._gallery.camids, npos[s:s + step],
                                  self.top_k_ap)
            parts.append((*stats, npos[s:s + step]))
        self._parts.extend(parts)

    def evaluate(self) -> ReIDMetrics:
        """Metrics over every query processed since the last ``reset()``."""
        if not self._parts:
            raise ValueError("no queries processed: call process() before evaluate()")
        return _summarise(self._parts, self.max_rank)


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
             top_k_ap: int | None = None) -> ReIDMetrics:
    """Metrics of a query × gallery distance matrix (METHODS.md "Evaluation").

    ``top_k_ap=100`` gives the AI City top-100 mAP. ``cmc`` always has ``max_rank`` entries;
    past the gallery size it repeats CMC@G. Labels are compared as given (camid -1 is a camera).
    """
    ev = ReIDEvaluator(g_pids, g_camids, max_rank=max_rank, top_k_ap=top_k_ap)
    ev.process(q_pids, q_camids, distmat=distmat)
    return ev.evaluate()


def evaluate_ranked(ranked, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                    top_k_ap: int | None = None) -> ReIDMetrics:
    """Metrics from ranked top-K gallery indices (Q, K) without the full distance matrix.

    Positives are counted over the whole gallery, so the result equals :func:`evaluate` when
    K = G (or the lists hold every positive); see :class:`ReIDEvaluator` for K < G.
    """
    ev = ReIDEvaluator(g_pids, g_camids, max_rank=max_rank, top_k_ap=top_k_ap)
    ev.process(q_pids, q_camids, ranked=ranked)
    return ev.evaluate()


def evaluate_tracks(track_dist, item_of_image, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                    top_k_ap: int | None = None, chunk_rows: int | None = None, *,
                    also_top_k_ap: int | None = None) -> ReIDMetrics | tuple[ReIDMetrics, ReIDMetrics]:
    """Metrics of the image ranking that tiles ranked gallery items, from (Q, T) item distances.

    Every image of item t takes ``track_dist[:, t]`` (001 §3.4 "tile tracks images"): per query the
    items are ranked by ascending distance (stable: ties by item index) and each item's images
    follow in a row, in gallery order. The result equals :func:`evaluate_ranked` of that (Q, G)
    ranking (and :func:`evaluate` of the tiled (Q, G) distances when no two items tie), with the
    same junk rule (same pid and camera; camid -1 is a camera), but no (Q, G) array is built:
    per query only the (Q, T) item ranking and the query's same-pid gallery images are visited.
    ``also_top_k_ap=100`` also returns the AI City score from the same ranking: ``(metrics, top)``.
    """
    _check_options(max_rank, top_k_ap)
    _check_options(max_rank, also_top_k_ap)
    q_pids, q_camids = _check_queries(q_pids, q_camids)
    g_pids, g_camids = _labels("g_pids", g_pids), _labels("g_camids", g_camids)
    item = _labels("item_of_image", item_of_image)
    if not len(g_camids) == len(g_pids) == len(item) or len(g_pids) == 0:
        raise ValueError(f"g_pids ({len(g_pids)}), g_camids ({len(g_camids)}) and item_of_image ({len(item)}) "
                         "must have one entry per gallery image (at least one)")
    d = np.asarray(track_dist)
    if d.ndim != 2 or d.shape[0] != len(q_pids):
        raise ValueError(f"track_dist has shape {d.shape}, expected (len(q_pids)={len(q_pids)}, T)")
    n_items = d.shape[1]
    if item.min() < 0 or item.max() >= n_items:
        raise ValueError(f"item_of_image must lie in [0, T={n_items}), got [{item.min()}, {item.max()}]")
    sizes = np.bincount(item, minlength=n_items)
    unit_items = bool((sizes == 1).all())
    members = np.argsort(item, kind="stable")
    offset = np.empty(len(item), np.int64)  # position of an image inside its item (gallery order)
    offset[members] = np.arange(len(item)) - (np.cumsum(sizes) - sizes)[item[members]]
    labels = _GalleryLabels(g_pids, g_camids)
    q_codes = labels.query_codes(q_pids)
    npos = labels.num_positives(q_codes, q_camids)
    by_pid = np.argsort(labels.pid_code, kind="stable")  # gallery images grouped by pid code
    pid_len = np.bincount(labels.pid_code, minlength=len(labels.pid_table))
    pid_start = np.cumsum(pid_len) - pid_len
    step = chunk_rows or max(1, _CHUNK_CELLS // max(1, n_items))
    parts, top_parts = [], []
    for s in range(0, len(q_pids), step):
        block = d[s:s + step]
        n = len(block)
        codes = q_codes[s:s + step].astype(np.int64)
        lens = np.where(codes >= 0, pid_len[np.maximum(codes, 0)], 0)
        rows = np.repeat(np.arange(n), lens)
        within = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        imgs = by_pid[np.repeat(pid_start[np.maximum(codes, 0)], lens) + within]
        # one-image items (image level): an image's position is its item's place in the ranking
        cols = _stable_positions(block, rows, item[imgs], s) if unit_items else None
        if cols is None:
            order = _argsort_checked(block, s)  # (n, T) items ranked
            ranked_sizes = sizes[order]
            item_start = np.empty_like(order)  # first position of each item in the tiled ranking
            np.put_along_axis(item_start, order, np.cumsum(ranked_sizes, axis=1) - ranked_sizes, axis=1)
            cols = item_start[rows, item[imgs]] + offset[imgs]
        o = np.lexsort((cols, rows))
        rows, cols, imgs = rows[o], cols[o], imgs[o]
        junk = g_camids[imgs] == q_camids[s:s + step][rows]
        parts.append((*_cell_stats(n, rows, cols, junk, npos[s:s + step], top_k_ap), npos[s:s + step]))
        if also_top_k_ap is not None:
            top_parts.append((*_cell_stats(n, rows, cols, junk, npos[s:s + step], also_top_k_ap), npos[s:s + step]))
    if also_top_k_ap is None:
        return _summarise(parts, int(max_rank))
    return _summarise(parts, int(max_rank)), _summarise(top_parts, int(max_rank))

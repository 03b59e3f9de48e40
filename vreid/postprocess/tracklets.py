"""Tracklet features and image-to-track ranking (seed 001 §3.4 eqs. 3–5, seed 003 §3.2–3.3).

All frames of a gallery tracklet show the same vehicle, so the query can be matched against
one feature per track instead of single frames:

* AF, average feature (seed 001 eq. 3): f_T = mean of the track's frame features.
* WF, weighted feature (seed 001 eqs. 4–5, He et al. 2019; seed 003 "Weighted Tracklet
  Features"): frames that look like the queries matching the track weigh more; see
  :func:`weighted_tracklet_features`.
* Image-to-track ranking: every image of a track gets the query's distance to the track
  (:func:`image_to_track_distances`).
* Fusion (seed 003 eq. 3): f̂ = β f + (1 − β) t, t the feature of the image's track.

Track features are built per track from sparse track × image indicators: nothing is G × G.
Every image needs a track id (>= 0); −1 (no track) is rejected with a ValueError.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from vreid.postprocess.checks import as_features, as_ids, as_per_image, check_real
from vreid.postprocess.ensemble import l2_normalize
from vreid.postprocess.kernels import sq_norms, squared_distances

__all__ = [
    "average_tracklet_features",
    "weighted_tracklet_features",
    "fuse_with_tracklet",
    "image_to_track_distances",
]

# Query rows per chunk in weighted_tracklet_features: about this many (query, gallery) cells.
_CHUNK_CELLS = 1 << 22


_NO_TRACK = (
    "{name} has {count} images without a track id (-1): tracklet steps "
    "need a track id >= 0 for every image"
)


def _trackids(name: str, trackids, n: int, of: str) -> np.ndarray:
    return as_per_image(name, trackids, n, f"row of {of}", what="track id", negative=_NO_TRACK)


def _track_table(name: str, track_ids) -> np.ndarray:
    arr = as_ids(name, track_ids, what="track id")
    if len(np.unique(arr)) != len(arr):
        raise ValueError(f"{name} must hold each track id once")
    return arr


def _positions(table: np.ndarray, ids: np.ndarray, name: str, table_name: str) -> np.ndarray:
    """Index into ``table`` (unique, any order) of every id; ValueError for ids not in it."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int64)
    if len(table) == 0:
        raise ValueError(f"{table_name} is empty but {name} refers to tracks")
    order = np.argsort(table, kind="stable")
    sorted_table = table[order]
    pos = np.minimum(np.searchsorted(sorted_table, ids), len(table) - 1)
    missing = sorted_table[pos] != ids
    if missing.any():
        raise ValueError(
            f"{name} holds track ids {np.unique(ids[missing])[:10].tolist()} that are not in "
            f"{table_name}"
        )
    return order[pos]


def _indicator(codes: np.ndarray, n_tracks: int, weights=None) -> scipy.sparse.csr_matrix:
    """Sparse (n_tracks, n_images) matrix with ``weights`` (default 1) at (code_j, j)."""
    n = len(codes)
    data = np.ones(n, dtype=np.float64) if weights is None else weights
    return scipy.sparse.csr_matrix((data, (codes, np.arange(n))), shape=(n_tracks, n))


def average_tracklet_features(
    features, trackids, normalize: bool = False  # seed 001 eq. 3: plain mean, no re-normalising
) -> tuple[np.ndarray, np.ndarray]:
    """AF, seed 001 eq. 3: f_T = (1/|T|) Σ_j f_{T,j} for every track T.

    Returns ``(track_ids, track_features)``: the sorted unique track ids (T,) and float32 (T, dim)
    features, L2-normalised only when ``normalize``.
    """
    x = as_features("features", features)
    tid = _trackids("trackids", trackids, x.shape[0], "features")
    track_ids, codes = np.unique(tid, return_inverse=True)
    codes = codes.ravel()
    counts = np.bincount(codes, minlength=len(track_ids)).astype(np.float64)
    tf = np.asarray(_indicator(codes, len(track_ids)) @ x.astype(np.float64)) / counts[:, None]
    tf = tf.astype(np.float32).reshape(len(track_ids), x.shape[1])
    return track_ids, (l2_normalize(tf) if normalize and len(tf) else tf)


def weighted_tracklet_features(
    query,
    gallery,
    g_trackids,
    threshold: float = 0.6,  # seed 003 released code (track_ranking, squared dist); seed 001 paper: 0.2
    eps: float = 0.01,  # seed 001 eq. 4: W = 1 / (A + 0.01)
    *,
    normalize: bool = False,  # seeds 001/003 (paper and code) use f_T unnormalised
    chunk: int | None = None,
    dist: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """WF, seed 001 eqs. 4–5 / seed 003: query-weighted tracklet features.

    For every gallery track T (D = query × T squared distances):
    1. the queries whose minimum distance to T's images is ``< threshold``; if none, the
       queries at the minimum of those minima (the nearest query, ties kept, as in the code);
    2. A_j = mean over those queries of D[q, j], for each image j of T;
    3. W_j = 1 / (A_j + eps), normalised to sum 1 within T;
    4. f_T = Σ_j W_j f_j (L2-normalised only when ``normalize``).

    Pass 1 computes query × gallery distances in chunks of ``chunk`` query rows (memory O(chunk × G)),
    or reads them from ``dist`` (Q, G) when the caller already has them; pass 2 only the selected
    queries × each track's images.
    Returns ``(track_ids, track_features)`` with sorted unique track ids, float32 features.
    """
    q = as_features("query", query)
    g = as_features("gallery", gallery, dim=q.shape[1])
    tid = _trackids("g_trackids", g_trackids, g.shape[0], "gallery")
    if not (np.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if q.shape[0] == 0:
        raise ValueError("query is empty: weighted tracklet features need at least one query")
    if chunk is None:
        chunk = max(1, _CHUNK_CELLS // max(1, g.shape[0]))
    elif int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    chunk = int(chunk)
    if dist is not None and np.shape(dist) != (q.shape[0], g.shape[0]):
        raise ValueError(f"dist must have shape (Q, G) = {(q.shape[0], g.shape[0])}, got {np.shape(dist)}")
    track_ids, codes = np.unique(tid, return_inverse=True)
    codes = codes.ravel()
    n_tracks = len(track_ids)
    if n_tracks == 0:
        return track_ids, np.zeros((0, g.shape[1]), dtype=np.float32)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(n_tracks))
    q_sq, g_sq = sq_norms(q), sq_norms(g)

    # Pass 1: min distance of every query to every track, (Q, T).
    track_min = np.empty((q.shape[0], n_tracks), dtype=np.float32)
    for s in range(0, q.shape[0], chunk):
        d = dist[s : s + chunk] if dist is not None else \
            squared_distances(q[s : s + chunk], g, a_sq=q_sq[s : s + chunk], b_sq=g_sq)
        track_min[s : s + chunk] = np.minimum.reduceat(d[:, order], starts, axis=1)
    selected = track_min < threshold
    none = ~selected.any(axis=0)
    if none.any():
        sub = track_min[:, none]
        selected[:, none] = sub == sub.min(axis=0, keepdims=True)
    n_sel = selected.sum(axis=0).astype(np.float64)

    # Pass 2: A_j = mean distance of image j to its track's selected queries, per track: only the
    # selected (query, track) pairs are computed again (a few queries per track), not Q x G.
    acc = np.zeros(g.shape[0], dtype=np.float64)
    for t in range(n_tracks):
        imgs = order[starts[t] : starts[t + 1] if t + 1 < n_tracks else len(order)]
        qs = np.flatnonzero(selected[:, t])
        d = squared_distances(q[qs], g[imgs], a_sq=q_sq[qs], b_sq=g_sq[imgs])
        acc[imgs] = d.sum(axis=0, dtype=np.float64)
    a = acc / n_sel[codes]
    w = 1.0 / (a + eps)
    w /= np.bincount(codes, weights=w, minlength=n_tracks)[codes]
    tf = np.asarray(_indicator(codes, n_tracks, w) @ g.astype(np.float64)).astype(np.float32)
    return track_ids, (l2_normalize(tf) if normalize else tf)


def fuse_with_tracklet(
    features,
    trackids,
    track_ids,
    track_features,
    beta: float = 0.0005,  # seed 003 §3.2 (UDA pseudo-labels); tune for post-processing
    normalize: bool = True,
) -> np.ndarray:
    """Seed 003 eq. 3: f̂ = β f + (1 − β) t, t = the feature of the image's track.

    ``track_ids`` (T,) / ``track_features`` (T, dim) come from :func:`average_tracklet_features`
    or :func:`weighted_tracklet_features`. The result (float32, (N, dim)) is L2-normalised
    unless ``normalize=False``.
    """
    x = as_features("features", features)
    tid = _trackids("trackids", trackids, x.shape[0], "features")
    table = _track_table("track_ids", track_ids)
    tf = as_features("track_features", track_features, dim=x.shape[1])
    if tf.shape[0] != len(table):
        raise ValueError(
            f"track_features has {tf.shape[0]} rows, expected one per track id ({len(table)})"
        )
    if not (np.isfinite(beta) and 0.0 <= beta <= 1.0):
        raise ValueError(f"beta must be a number in [0, 1], got {beta!r}")
    pos = _positions(table, tid, "trackids", "track_ids")
    out = (beta * x.astype(np.float64) + (1.0 - beta) * tf[pos].astype(np.float64)).astype(np.float32)
    return l2_normalize(out) if normalize else out


def image_to_track_distances(dist_q_track, g_trackids, track_ids) -> np.ndarray:
    """Image-to-track ranking (seed 001 §3.4): every gallery image gets its track's distance.

    ``dist_q_track`` (Q, T) holds query-to-track distances with columns in ``track_ids`` order;
    returns the (Q, G) block ``dist_q_track[:, track of g]`` (same dtype).
    """
    d = np.asarray(dist_q_track)
    table = _track_table("track_ids", track_ids)
    if d.ndim != 2 or d.shape[1] != len(table):
        raise ValueError(
            f"dist_q_track must have shape (Q, len(track_ids)={len(table)}), got {d.shape}"
        )
    check_real("dist_q_track", d)
    gt = np.asarray(g_trackids)
    if gt.ndim != 1:
        raise ValueError(f"g_trackids must be a 1-D array of track ids, got shape {gt.shape}")
    tid = _trackids("g_trackids", gt, len(gt), "the gallery")
    pos = _positions(table, tid, "g_trackids", "track_ids")
    return d[:, pos]

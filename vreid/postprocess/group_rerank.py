"""Group re-ranking (seed 000 §3.3 "Group Re-ranking").

Paper: queries closer than θ are grouped and represented by their group mean c_i
(:func:`vreid.postprocess.query_expansion.group_queries`), galleries are clustered by tracklet;
"we regard g_j as the similar identity of q_i if the Euclidean distance between q_i and g_j is
lower than θ, and then galleries with the same tracklet of g_j are inserted after g_j in the
match sequence of q_i".

Procedure implemented, per query, on its ranked list r_1..r_K (from the group-mean features):
1. an *anchor* is a listed image g_j with dist[q, g_j] < θ (``dist`` is the block the list
   was ranked from, so θ is on the same scale: squared Euclidean by default);
2. walking the list in order, at the first anchor of each tracklet T every image of T not
   already placed earlier in the list is inserted right after the anchor, ordered by ascending
   distance to the query (ties: gallery index) — images of T further down the original list
   move up to this spot, images of T beyond the list are pulled in;
3. a later anchor of an already expanded tracklet adds nothing (no duplicates);
4. the result is truncated to the original length K.
The paper does not say how the inserted images are ordered; ascending distance is used.
"""

from __future__ import annotations

import numpy as np

from vreid.postprocess.checks import as_distance_block, as_per_image

__all__ = ["group_rerank"]


def group_rerank(ranked_indices, dist, g_trackids, theta: float) -> np.ndarray:
    """Seed 000 group re-ranking: insert each close gallery image's tracklet right after it.

    ``ranked_indices`` (Q, K) gallery indices per query (best first, no repeats), ``dist``
    (Q, G) the distances they were ranked by, ``g_trackids`` (G,) track id of every gallery
    image (>= 0), ``theta`` the closeness threshold on ``dist`` (tuned, no paper value).
    Returns the new (Q, K) int64 ranked indices.
    """
    d = as_distance_block(dist)
    num_q, num_g = d.shape
    r = np.asarray(ranked_indices)
    if r.ndim != 2 or r.shape[0] != num_q:
        raise ValueError(f"ranked_indices must have shape (Q={num_q}, K), got {r.shape}")
    if r.size and not np.issubdtype(r.dtype, np.integer):
        raise ValueError(f"ranked_indices must hold integer gallery indices, got dtype {r.dtype}")
    r = r.astype(np.int64, copy=False)
    k = r.shape[1]
    if k > num_g:
        raise ValueError(f"ranked_indices has K={k} columns, more than the gallery size {num_g}")
    if r.size and (r.min() < 0 or r.max() >= num_g):
        raise ValueError(f"ranked_indices must lie in [0, {num_g}), got [{r.min()}, {r.max()}]")
    if r.size:
        s = np.sort(r, axis=1)
        dup = np.nonzero((s[:, 1:] == s[:, :-1]).any(axis=1))[0]
        if dup.size:
            raise ValueError(f"ranked_indices repeats a gallery index in query rows {dup[:10].tolist()}")
    t = as_per_image(
        "g_trackids", g_trackids, num_g, "gallery image", what="track id",
        negative="{name} has {count} gallery images without a track id (-1): "
        "group re-ranking needs a track id >= 0 for every gallery image",
    )
    if not np.isfinite(theta):
        raise ValueError(f"theta must be a finite number, got {theta!r}")
    if np.issubdtype(d.dtype, np.floating) and np.isnan(d).any():
        raise ValueError("dist contains NaN: expected numbers")

    out = r.copy()
    if r.size == 0:
        return out
    _, codes = np.unique(t, return_inverse=True)
    codes = codes.ravel()
    members_by_track = np.argsort(codes, kind="stable")  # gallery indices grouped by track
    bounds = np.searchsorted(codes[members_by_track], np.arange(codes.max() + 2))
    pos_in_row = np.full(num_g, -1, dtype=np.int64)
    ks = np.arange(k)
    for i in range(num_q):  # loop over queries; each list is handled with array operations
        row = r[i]
        drow = d[i]
        anchor = drow[row] < theta
        if not anchor.any():
            continue
        row_track = codes[row]
        anchor_pos = np.nonzero(anchor)[0]
        tracks, first = np.unique(row_track[anchor_pos], return_index=True)
        track_anchor = anchor_pos[first]  # position of the first anchor of each expanded track
        # Members of the expanded tracks, each tagged with its track's anchor position.
        lengths = bounds[tracks + 1] - bounds[tracks]
        offs = np.cumsum(lengths) - lengths
        flat = np.arange(lengths.sum()) - np.repeat(offs - bounds[tracks], lengths)
        members = members_by_track[flat]
        member_anchor = np.repeat(track_anchor, lengths)
        pos_in_row[row] = ks
        p = pos_in_row[members]
        pos_in_row[row] = -1
        placed = (p >= 0) & (p <= member_anchor)  # already at or before the anchor: stays put
        inserted = members[~placed]
        # In-list images of an expanded track found after its anchor move up to the anchor.
        anchor_of_row = np.full(k, k, dtype=np.int64)
        slot = np.searchsorted(tracks, row_track)
        slot = np.minimum(slot, len(tracks) - 1)
        in_expanded = tracks[slot] == row_track
        anchor_of_row[in_expanded] = track_anchor[slot[in_expanded]]
        keep = ks <= anchor_of_row
        # Sort keys: (position, 0 own / 1 inserted, distance, gallery index).
        primary = np.concatenate([ks[keep], member_anchor[~placed]])
        flag = np.concatenate([np.zeros(int(keep.sum()), np.int8), np.ones(len(inserted), np.int8)])
        idx = np.concatenate([row[keep], inserted])
        dval = np.concatenate([np.zeros(int(keep.sum()), d.dtype), drow[inserted]])
        order = np.lexsort((idx, dval, flag, primary))
        out[i] = idx[order[:k]]
    return out

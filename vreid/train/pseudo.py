"""Pseudo-labels for unsupervised domain adaptation (seeds 001 §3.3 and 003 §3.2), on arrays.

* DBSCAN (seed 003): features after camera-bias removal and tracklet fusion
  (:func:`clustering_features`), distance 0.9·Jaccard + 0.1·cosine on the k-NN graph
  on every pair whose encodings overlap (:func:`jaccard_cosine_graph`), eps 0.55, min_samples 10 (:func:`dbscan_labels`); noise dropped,
  classifier initialised from the cluster centroids (:func:`centroids`).
* Identity Mining (seed 001): from a random query, the query farthest from the chosen set (among
  those farther than d_n from every chosen one) becomes the next identity; test images closer
  than d_p to their nearest chosen query take its label (:func:`identity_mining`); k-means with
  the known number of identities is the baseline (:func:`kmeans_labels`).

Labels are int64 with -1 = noise / unlabelled. Nothing here builds an N x N array.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from vreid.config import DBSCANSetting, UDAConfig
from vreid.postprocess.camera_bias import remove_camera_mean
from vreid.postprocess.checks import as_features, as_per_image
from vreid.postprocess.ensemble import l2_normalize
from vreid.postprocess.knn import knn_graph
from vreid.postprocess.rerank import (
    K1_DEFAULT,
    K2_DEFAULT,
    FeatureDistance,
    k_reciprocal_encode,
)
from vreid.postprocess.tracklets import average_tracklet_features, fuse_with_tracklet

__all__ = [
    "PseudoLabelError",
    "centroids",
    "check_labels",
    "clustering_features",
    "dbscan_labels",
    "identity_mining",
    "jaccard_cosine_graph",
    "kmeans_labels",
    "pseudo_label_quality",
]

# the config's defaults (vreid.config.UDAConfig / DBSCANSetting, with their sources), one source
JACCARD_WEIGHT = UDAConfig.model_fields["jaccard_weight"].default  # 003 code: 0.9 Jaccard + 0.1 cosine
DBSCAN_EPS = DBSCANSetting.model_fields["eps"].default  # 003 code: 0.55
DBSCAN_MIN_SAMPLES = DBSCANSetting.model_fields["min_samples"].default  # 003 code: 10
IM_D_N = UDAConfig.model_fields["d_n"].default  # 001 §4.2: 0.49 (squared Euclidean)
IM_D_P = UDAConfig.model_fields["d_p"].default  # 001 §4.2: 0.23
MINIBATCH_ABOVE = 50_000  # k-means switches to MiniBatchKMeans above this many points
_MIN_DISTANCE = 1e-12  # stored graph entries are >= this: an explicit 0 would be "no edge"
_CELLS = 1 << 22  # elements of one dense block (IM distances) / one sparse chunk (Jaccard)


class PseudoLabelError(ValueError):
    """Pseudo-labels that cannot train a classifier (all noise, or a single cluster)."""


def _int_in(name: str, value, lo: int, hi: int, why: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}] ({why}), got {value!r}")
    return int(value)


def _labels(name: str, labels, n: int | None = None) -> np.ndarray:
    arr = np.asarray(labels)
    return as_per_image(name, arr, len(arr) if n is None else n, "image", what="label")


def clustering_features(
    features,
    camids,
    trackids,
    *,
    camera_alpha: float | None = UDAConfig.model_fields["camera_alpha"].default,  # 003 eq. 2; None = skip
    tracklet_beta: float | None = UDAConfig.model_fields["tracklet_beta"].default,  # 003 §3.2; None = skip
) -> np.ndarray:
    """Seed 003 §3.2: the features DBSCAN clusters, as L2-normalised float32 (N, dim).

    Rows are L2-normalised first. Camera-bias removal f ← f − α·mean_camera(f) (``camids`` read only when ``camera_alpha`` is
    set), then tracklet fusion f ← β f + (1 − β) mean_track(f) for images with trackid >= 0;
    images with trackid -1 keep their feature (``trackids`` read only when ``tracklet_beta`` is
    set).
    """
    x = l2_normalize(as_features("features", features))
    if camera_alpha is not None:
        x = remove_camera_mean(x, camids, camera_alpha)
    if tracklet_beta is not None:
        tid = as_per_image("trackids", np.asarray(trackids), len(x), "row of features", what="track id")
        tracked = np.flatnonzero(tid >= 0)
        if len(tracked) == 0:
            raise ValueError(
                "tracklet fusion (tracklet_beta) needs track ids but no image has one (all "
                "trackids < 0): pass track ids or set `tracklet_beta: null` to turn it off"
            )
        track_ids, track_feats = average_tracklet_features(x[tracked], tid[tracked])
        x = x.copy()
        x[tracked] = fuse_with_tracklet(x[tracked], tid[tracked], track_ids, track_feats, tracklet_beta)
    return x


def jaccard_cosine_graph(
    features,
    *,
    k1: int = K1_DEFAULT,  # Zhong et al. 2017 k-reciprocal encoding, as in seed 003's code
    k2: int = K2_DEFAULT,
    jaccard_weight: float = JACCARD_WEIGHT,
    backend: str = "auto",
) -> sp.csr_matrix:
    """Seed 003 §3.2 DBSCAN distance d = w·Jaccard + (1 − w)·cosine on every pair DBSCAN can link.

    V is the k-reciprocal encoding (Zhong et al. 2017, steps 1-5) of the L2-normalised features;
    J = 1 − m / (2 − m) with m = Σ_k min(V[i,k], V[j,k]) and cosine = 1 − f_i·f_j. The graph
    holds every pair i ≠ j whose encodings overlap (m > 0, the pattern of V Vᵀ, found in row
    chunks); every other pair has J = 1, so d >= w: the graph is exact for DBSCAN with eps < w.
    Returns a symmetric (N, N) float64 csr, each stored entry >= 1e-12 (never an explicit 0); a
    pair not stored is "not neighbours". ``backend`` goes to :func:`knn_graph`.
    """
    x = l2_normalize(as_features("features", features))
    n = len(x)
    k1 = _int_in("k1", k1, 1, n - 1, f"k1 < N = {n} points")
    k2 = _int_in("k2", k2, 1, n, f"N = {n} points")
    w = float(jaccard_weight)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"jaccard_weight must be a number in [0, 1], got {jaccard_weight!r}")
    graph = knn_graph(x, max(k1, k2 - 1), backend=backend)
    v = k_reciprocal_encode(graph, k1, k2, FeatureDistance(x).pairs).tocsr()
    pattern = v.copy()
    pattern.data = np.ones_like(pattern.data, dtype=np.float32)
    width = max(1, int(np.diff(v.indptr).max()))
    rows_per_chunk = max(1, _CELLS // (width * width))
    keys = []
    for s in range(0, n, rows_per_chunk):
        overlap = (pattern[s : s + rows_per_chunk] @ pattern.T).tocoo()  # m > 0 <=> shared support
        i, j = overlap.row.astype(np.int64) + s, overlap.col.astype(np.int64)
        upper = i < j
        keys.append(i[upper] * n + j[upper])
    lo, hi = np.divmod(np.unique(np.concatenate(keys)), n)
    d = np.empty(len(lo), dtype=np.float64)
    step = max(1, _CELLS // max(width, x.shape[1]))
    for s in range(0, len(lo), step):
        a, b = lo[s : s + step], hi[s : s + step]
        m = np.asarray(v[a].minimum(v[b]).sum(axis=1)).ravel()
        jac = 1.0 - m / (2.0 - m)
        cos = 1.0 - np.einsum("ij,ij->i", x[a], x[b], dtype=np.float64)
        d[s : s + step] = w * jac + (1.0 - w) * cos
    np.maximum(d, _MIN_DISTANCE, out=d)
    both = (np.concatenate([d, d]), (np.concatenate([lo, hi]), np.concatenate([hi, lo])))
    return sp.csr_matrix(both, shape=(n, n))


def _first_appearance(labels: np.ndarray) -> np.ndarray:
    """Cluster ids renumbered 0..C-1 in order of first appearance; negatives become -1."""
    out = np.full(len(labels), -1, dtype=np.int64)
    pos = np.flatnonzero(labels >= 0)
    uniq, first, inv = np.unique(labels[pos], return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(uniq))
    out[pos] = rank[inv.ravel()]
    return out


def dbscan_labels(graph, eps: float = DBSCAN_EPS, min_samples: int = DBSCAN_MIN_SAMPLES) -> np.ndarray:
    """Seed 003 §3.2: DBSCAN on a precomputed (sparse) distance graph, e.g. :func:`jaccard_cosine_graph`.

    Returns int64 labels, -1 = noise, clusters numbered 0..C-1 in order of first appearance.
    """
    from sklearn.cluster import DBSCAN
    from sklearn.neighbors import sort_graph_by_row_values

    if len(graph.shape) != 2 or graph.shape[0] != graph.shape[1]:
        raise ValueError(f"graph must be a square (N, N) distance matrix, got shape {graph.shape}")
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    min_samples = _int_in("min_samples", min_samples, 1, 2**31, "points, self included, per core")
    if sp.issparse(graph):
        graph = sort_graph_by_row_values(sp.csr_matrix(graph), copy=True, warn_when_not_sorted=False)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(graph)
    return _first_appearance(labels)


def _sq_to(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances of unit rows ``x`` to one unit vector ``y``: 2 − 2 x·y."""
    return np.maximum(2.0 - 2.0 * (x @ y).astype(np.float64), 0.0)


def identity_mining(
    query_features,
    test_features,
    *,
    d_n: float = IM_D_N,
    d_p: float = IM_D_P,
    seed: int = 0,
) -> np.ndarray:
    """Identity Mining, seed 001 §3.3, on squared Euclidean distances of L2-normalised features.

    First stage: L starts from a random query ("we randomly sample a probe image l1", drawn with
    ``seed``); then, among the candidates q with min Dist(q, L) > ``d_n``, the most dissimilar to
    the whole set L (largest Σ_{l ∈ L} Dist(q, l)) joins L as a new identity, until no candidate
    is left. Second stage: each row of ``test_features`` (callers pass query + gallery) closer
    than ``d_p`` to its nearest member of L takes that member's label (0..C-1 in the order L was
    built), else -1. Keeps per-query min / sum over L (O(Q) memory, O(Q·|L|) distances).
    """
    q = l2_normalize(as_features("query_features", query_features))
    t = l2_normalize(as_features("test_features", test_features, dim=q.shape[1]))
    if not (np.isfinite(d_n) and np.isfinite(d_p) and d_n >= 0 and d_p >= 0):
        raise ValueError(f"d_n and d_p must be finite numbers >= 0, got d_n={d_n!r}, d_p={d_p!r}")
    first = int(np.random.default_rng(seed).integers(len(q)))
    picked = [first]
    d = _sq_to(q, q[first])
    nearest, total = d.copy(), d.copy()
    while True:
        candidates = np.flatnonzero(nearest > d_n)
        if len(candidates) == 0:
            break
        new = int(candidates[np.argmax(total[candidates])])
        picked.append(new)
        d = _sq_to(q, q[new])
        np.minimum(nearest, d, out=nearest)
        total += d
    best = np.full(len(t), np.inf)
    label = np.full(len(t), -1, dtype=np.int64)
    step = max(1, _CELLS // max(1, len(t)))
    for c in range(0, len(picked), step):  # nearest member of L, blocks of members
        d = np.maximum(2.0 - 2.0 * (t @ q[picked[c : c + step]].T).astype(np.float64), 0.0)
        j = d.argmin(axis=1)
        dj = d[np.arange(len(t)), j]
        closer = dj < best
        best[closer], label[closer] = dj[closer], c + j[closer]
    return np.where(best < d_p, label, -1).astype(np.int64)


def kmeans_labels(features, num_ids: int, *, seed: int = 0) -> np.ndarray:
    """Seed 001 §3.3 baseline: k-means with the known number of identities, on L2-normalised features.

    KMeans (one k-means++ init) up to MINIBATCH_ABOVE points, MiniBatchKMeans above. int64 labels.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    x = l2_normalize(as_features("features", features))
    num_ids = _int_in("num_ids", num_ids, 1, len(x), f"the number of points N = {len(x)}")
    algo = MiniBatchKMeans if len(x) > MINIBATCH_ABOVE else KMeans
    return algo(n_clusters=num_ids, n_init=1, random_state=seed).fit_predict(x).astype(np.int64)


def _pairs(counts: np.ndarray) -> int:
    counts = np.asarray(counts, dtype=np.int64)
    return int((counts * (counts - 1) // 2).sum())


def pseudo_label_quality(labels, true_pids) -> dict:
    """Pair precision / recall of pseudo-labels against ground-truth pids (every pid is an identity).

    ``pair_precision``: of the pairs of labelled images sharing a pseudo label, the fraction
    with the same pid (NaN without such pairs); ``pair_recall``: those pairs over all same-pid
    pairs among all images, labelled or not. From a sparse contingency table, no pair list.
    """
    from sklearn.metrics.cluster import contingency_matrix

    lab = _labels("labels", labels)
    pid = as_per_image("true_pids", np.asarray(true_pids), len(lab), "image", what="pid")
    known = lab >= 0
    true_pairs = _pairs(np.unique(pid, return_counts=True)[1])
    if known.any():
        table = contingency_matrix(lab[known], pid[known], sparse=True)
        tp, predicted = _pairs(table.data), _pairs(np.asarray(table.sum(axis=1)).ravel())
    else:
        tp, predicted = 0, 0
    return {
        "pair_precision": tp / predicted if predicted else float("nan"),
        "pair_recall": tp / true_pairs if true_pairs else float("nan"),
        "labelled_fraction": float(known.mean()) if len(lab) else float("nan"),
        "num_clusters": len(np.unique(lab[known])),
        "num_true_ids": len(np.unique(pid)),
        "num_images": len(lab),
    }


def check_labels(labels, what: str) -> None:
    """PseudoLabelError when ``labels`` cannot train a classifier: all noise, or one cluster."""
    lab = _labels("labels", labels)
    clusters = np.unique(lab[lab >= 0])
    if len(clusters) == 0:
        raise PseudoLabelError(
            f"{what}: all {len(lab)} points are noise (-1), no pseudo-labels to train on: "
            "skip stage 2 or loosen eps/min_samples"
        )
    if len(clusters) == 1:
        raise PseudoLabelError(
            f"{what}: one cluster ({int((lab >= 0).sum())} labelled points share label "
            f"{int(clusters[0])}): a classifier needs at least 2; lower eps"
        )


def centroids(features, labels) -> np.ndarray:
    """Seed 003: (C, dim) float32 L2-normalised mean feature of each cluster 0..C-1 (noise ignored),
    to initialise the classifier."""
    x = as_features("features", features)
    lab = _labels("labels", labels, len(x))
    keep = np.flatnonzero(lab >= 0)
    c = int(lab.max()) + 1 if len(keep) else 0
    counts = np.bincount(lab[keep], minlength=c)
    if (counts == 0).any():
        raise ValueError(
            f"labels must use every cluster id 0..{c - 1}; ids {np.flatnonzero(counts == 0)[:10].tolist()} "
            "have no points (renumber them)"
        )
    ind = sp.csr_matrix((np.ones(len(keep)), (lab[keep], keep)), shape=(c, len(x)))
    return l2_normalize(np.asarray(ind @ x.astype(np.float64)))

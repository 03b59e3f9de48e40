"""Query grouping (seed 000) and DBSCAN query expansion (seed 002).

* Seed 000 §3.3 "Group Re-ranking": queries whose Euclidean distance is lower than θ are
  grouped and the mean feature of the group is their representation. Grouping is transitive
  here: groups are the connected components of the sparse radius graph "distance < θ".
* Seed 002 §IV "Query Expansion": DBSCAN on the query features; a query in a cluster is
  replaced by the mean feature of its cluster, noise queries are left as they are.
* Average query expansion (fast-reid ``aqe``, after Chum et al. 2007): every query *and*
  gallery item replaced by the mean of its qe_k nearest items (itself included), each weighted
  by its cosine similarity to the power alpha; neighbours from the shared k-NN graph.

Thresholds follow the package convention: ``theta`` and ``eps`` are on *squared* Euclidean
distance between (L2-normalised) query features, the same scale as every distance block in
``vreid.postprocess`` (a Euclidean radius r corresponds to r²). Only query × query
neighbourhoods within the radius are built, as sparse graphs.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import DBSCAN
from sklearn.neighbors import radius_neighbors_graph

from vreid.postprocess.checks import as_features
from vreid.postprocess.ensemble import l2_normalize

__all__ = ["group_queries", "dbscan_query_expansion", "average_query_expansion"]

# The sklearn radius search is widened by this relative margin, then the exact squared
# distance decides, so that pairs right at the threshold are not lost to rounding.
_RADIUS_MARGIN = 1e-5


def _cluster_means(x: np.ndarray, labels: np.ndarray, normalize: bool) -> np.ndarray:
    """Rows with label >= 0 replaced by the mean of their label's rows; others unchanged."""
    out = x.copy()
    member = labels >= 0
    if not member.any():
        return out
    codes = labels[member]
    n_clusters = int(codes.max()) + 1
    ind = scipy.sparse.csr_matrix(
        (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n_clusters, len(codes))
    )
    counts = np.bincount(codes, minlength=n_clusters).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.asarray(ind @ x[member].astype(np.float64)) / counts[:, None]
    out[member] = means[codes].astype(np.float32)
    return l2_normalize(out) if normalize else out


def _radius_graph(x: np.ndarray, threshold: float, strict: bool) -> scipy.sparse.csr_matrix:
    """Sparse 0/1 graph of query pairs with squared distance < threshold (<= if not strict)."""
    radius = float(np.sqrt(threshold)) * (1.0 + _RADIUS_MARGIN) + 1e-12
    g = radius_neighbors_graph(x, radius, mode="distance", include_self=True).tocoo()
    sq = g.data.astype(np.float64) ** 2
    keep = sq < threshold if strict else sq <= threshold
    keep |= g.row == g.col  # every point is its own neighbour (0 < threshold or not)
    return scipy.sparse.csr_matrix(
        (np.ones(int(keep.sum())), (g.row[keep], g.col[keep])), shape=g.shape
    )


def group_queries(
    query, theta: float, normalize: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Seed 000 query grouping: connected components of "squared distance < ``theta``".

    Returns ``(labels, expanded)``: the group label (0..n_groups−1, numbered by first member)
    of every query (Q,), and float32 (Q, dim) features where each query is replaced by its
    group mean (L2-normalised when ``normalize``; a singleton group keeps its own feature).
    θ is tuned (the paper gives no value), on the squared-distance scale.
    """
    x = as_features("query", query)
    if not (np.isfinite(theta) and theta >= 0):
        raise ValueError(f"theta must be a finite number >= 0 (squared distance), got {theta!r}")
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), x.copy()
    graph = _radius_graph(x, theta, strict=True)
    _, comp = connected_components(graph, directed=False)
    # Renumber groups by their first query so that labels are deterministic.
    _, first = np.unique(comp, return_index=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    labels = rank[comp]
    return labels, _cluster_means(x, labels, normalize)


def dbscan_query_expansion(
    query,
    eps: float,
    min_samples: int = 2,  # not given in seed 002; 2 = any query pair within eps forms a cluster
    normalize: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Seed 002 query expansion: DBSCAN on the queries, clustered queries → their cluster mean.

    DBSCAN (sklearn, on a precomputed sparse radius graph) with neighbourhood "squared distance
    <= ``eps``" and ``min_samples`` counting the query itself. Returns ``(labels, expanded)``:
    DBSCAN labels (−1 noise) and float32 (Q, dim) features where clustered queries are replaced
    by their cluster mean (L2-normalised when ``normalize``) and noise queries are unchanged.
    """
    x = as_features("query", query)
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0 (squared distance), got {eps!r}")
    if int(min_samples) != min_samples or min_samples < 1:
        raise ValueError(f"min_samples must be an integer >= 1, got {min_samples!r}")
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), x.copy()
    radius = float(np.sqrt(eps)) * (1.0 + _RADIUS_MARGIN) + 1e-12
    g = radius_neighbors_graph(x, radius, mode="distance", include_self=False).tocoo()
    sq = g.data.astype(np.float64) ** 2
    keep = sq <= eps
    # DBSCAN reads the stored entries as neighbours; store squared distances (tiny floor so an
    # exact duplicate is not an implicit zero) and give it eps on the same scale.
    graph = scipy.sparse.csr_matrix(
        (np.maximum(sq[keep], 1e-30), (g.row[keep], g.col[keep])), shape=g.shape
    )
    labels = DBSCAN(eps=eps, min_samples=int(min_samples), metric="precomputed").fit_predict(graph)
    labels = labels.astype(np.int64)
    return labels, _cluster_means(x, labels, normalize)


def average_query_expansion(features, neighbours, alpha: float = 3.0) -> np.ndarray:
    """One round of fast-reid's ``aqe``: f_i <- mean over j in N(i) of cos(f_i, f_j)^alpha f_j.

    ``neighbours`` (N, qe_k) holds the qe_k nearest items of every row, itself included (the
    first columns of a :class:`~vreid.postprocess.knn.KNNGraph`; on unit features these are
    fast-reid's cosine neighbours). fast-reid then compares the results by cosine: they are
    returned L2-normalised, float32 (N, dim).
    """
    x = as_features("features", features).astype(np.float64)
    nb = np.asarray(neighbours, dtype=np.int64)
    if nb.ndim != 2 or nb.shape[0] != x.shape[0] or nb.shape[1] < 1:
        raise ValueError(f"neighbours must be (N={x.shape[0]}, qe_k >= 1), got shape {nb.shape}")
    if not np.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    norms = np.maximum(np.linalg.norm(x, axis=1), 1e-12)
    out = np.zeros_like(x)
    for a in range(nb.shape[1]):  # one neighbour rank at a time: memory O(N dim)
        xj = x[nb[:, a]]
        cos = np.einsum("nd,nd->n", x, xj) / (norms * norms[nb[:, a]])
        out += np.power(cos, alpha)[:, None] * xj
    return l2_normalize(out / nb.shape[1])

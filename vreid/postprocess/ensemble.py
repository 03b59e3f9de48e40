"""Feature ensemble and query × gallery squared Euclidean distances.

Ensemble (METHODS.md "Test-time features"): every model's feature is L2-normalised, multiplied
by the model's weight and the results are concatenated (seed 000 §3.4, seed 002 "Model
Ensemble"; the VehicleNet released code also divides each normalised part by √n_models, so that
with unit weights the concatenation has unit norm again).

All distances in ``vreid.postprocess`` are squared Euclidean on L2-normalised features unless a
function says otherwise; :func:`vreid.postprocess.kernels.squared_distances` is the one place they
are computed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vreid.postprocess.checks import as_features

__all__ = ["l2_normalize", "ensemble_features"]



def l2_normalize(x, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` (n, dim) divided by their L2 norm, as a new float32 array.

    Rows whose norm is below ``eps`` (all-zero rows) are returned as zeros rather than NaN.
    """
    arr = as_features("x", x)
    if not (eps > 0 and np.isfinite(eps)):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    norms = np.sqrt(np.einsum("ij,ij->i", arr, arr, dtype=np.float64))
    return (arr / np.maximum(norms, eps)[:, None]).astype(np.float32, copy=False)


def ensemble_features(
    features: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    divide_by_sqrt_n: bool = False,  # seed 002 released code: each part / sqrt(n_models)
) -> np.ndarray:
    """Concatenate per-model features: ``[w_1 f^1/|f^1|, ..., w_n f^n/|f^n|]`` (seed 002 §IV).

    ``features`` holds one (N, d_m) array per model, rows aligned (same images, same order);
    ``weights`` one non-negative weight per model (None: all 1, as in seed 002; seed 000 weights
    the models). With ``divide_by_sqrt_n`` every part is further divided by √n_models, as in the
    VehicleNet code. The result (float32, (N, Σ d_m)) is not re-normalised: its row norm is
    sqrt(Σ w_m²) (divided by √n); call :func:`l2_normalize` for unit rows.
    """
    if isinstance(features, np.ndarray) or not isinstance(features, Sequence):
        raise ValueError("features must be a list of (N, dim) arrays, one per model")
    if len(features) == 0:
        raise ValueError("features is empty: expected at least one model's features")
    parts = [as_features(f"features[{i}]", f, dtype=None) for i, f in enumerate(features)]
    n_rows = parts[0].shape[0]
    for i, p in enumerate(parts):
        if p.shape[0] != n_rows:
            raise ValueError(
                f"features[{i}] has {p.shape[0]} rows, expected {n_rows} (same images as features[0])"
            )
    if weights is None:
        w = np.ones(len(parts), dtype=np.float64)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(parts),):
            raise ValueError(
                f"weights must hold one number per model ({len(parts)}), got shape {w.shape}"
            )
        if not np.isfinite(w).all() or (w < 0).any() or not (w > 0).any():
            raise ValueError(
                f"weights must be finite, >= 0 and not all 0, got {w.tolist()}"
            )
    if divide_by_sqrt_n:
        w = w / np.sqrt(len(parts))
    out = np.empty((n_rows, sum(p.shape[1] for p in parts)), dtype=np.float32)
    start = 0
    for p, wi in zip(parts, w):
        out[:, start : start + p.shape[1]] = l2_normalize(p) * np.float32(wi)
        start += p.shape[1]
    return out

"""Camera verification (seed 002 §IV, seed 003 §3.3).

Assumption: the query and its true matches are taken by different cameras. Seed 002 removes
the gallery images of the query's camera (there: the cluster of a camera model's features),
seed 003's released code adds 10 to the distance of every same-camera pair
(``distmat + 10.0*cam_matches``), which keeps the ranking total: that form is implemented.
Camera ids may be labels or predictions (:func:`predict_camids`, argmax of a camera
classifier's probabilities; or cluster labels of camera features as in seed 002).

The released code also adds the same penalty to pairs whose cameras lie in different scenes
(AI City 2021: test cameras ``>= 40`` vs ``< 40``); pass ``q_scenes`` / ``g_scenes`` to apply
that camera-connection rule.
"""

from __future__ import annotations

import numpy as np

__all__ = ["camera_verification", "predict_camids"]


def _ids(name: str, x, n: int, side: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{name} must be a 1-D array with one id per {side} ({n}), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def predict_camids(camera_prob) -> np.ndarray:
    """Predicted camera id per image: argmax over the (N, n_cameras) probabilities (int64)."""
    p = np.asarray(camera_prob)
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError(f"camera_prob must be a 2-D (N, n_cameras) array, got shape {p.shape}")
    if not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)):
        raise ValueError(f"camera_prob must hold real numbers, got dtype {p.dtype}")
    if p.size and not np.isfinite(p).all():
        raise ValueError("camera_prob contains NaN or Inf: expected finite probabilities")
    return np.argmax(p, axis=1).astype(np.int64)


def camera_verification(
    dist,
    q_camids,
    g_camids,
    penalty: float = 10.0,  # seed 003 released code: distmat + 10.0 * same-camera
    *,
    q_scenes=None,
    g_scenes=None,
) -> np.ndarray:
    """Add ``penalty`` to every same-camera (query, gallery) pair (seeds 002/003).

    A camera id < 0 (unknown) never matches. With ``q_scenes`` / ``g_scenes`` (integer scene
    of each image, < 0 unknown) pairs in different known scenes get ``penalty`` too (released
    code of seed 003). Returns a new (Q, G) array.
    """
    d = np.asarray(dist)
    if d.ndim != 2:
        raise ValueError(f"dist must be a 2-D (Q, G) distance block, got shape {d.shape}")
    if not (np.issubdtype(d.dtype, np.floating) or np.issubdtype(d.dtype, np.integer)):
        raise ValueError(f"dist must hold real numbers, got dtype {d.dtype}")
    num_q, num_g = d.shape
    qc = _ids("q_camids", q_camids, num_q, "query")
    gc = _ids("g_camids", g_camids, num_g, "gallery image")
    if not (np.isfinite(penalty) and penalty >= 0):
        raise ValueError(f"penalty must be a finite number >= 0, got {penalty!r}")
    if (q_scenes is None) != (g_scenes is None):
        raise ValueError("q_scenes and g_scenes must be given together (or both None)")
    out = d.astype(np.result_type(d.dtype, np.float32), copy=True)
    pen = out.dtype.type(penalty)
    same = (qc[:, None] == gc[None, :]) & (qc >= 0)[:, None]
    out[same] += pen
    if q_scenes is not None:
        qs = _ids("q_scenes", q_scenes, num_q, "query")
        gs = _ids("g_scenes", g_scenes, num_g, "gallery image")
        other = (qs[:, None] != gs[None, :]) & (qs >= 0)[:, None] & (gs >= 0)[None, :]
        out[other] += pen
    return out

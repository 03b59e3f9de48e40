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

from vreid.postprocess.checks import as_distance_block, as_per_image, check_finite, check_real

__all__ = ["camera_verification", "predict_camids"]


def predict_camids(camera_prob) -> np.ndarray:
    """Predicted camera id per image: argmax over the (N, n_cameras) probabilities (int64)."""
    p = np.asarray(camera_prob)
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError(f"camera_prob must be a 2-D (N, n_cameras) array, got shape {p.shape}")
    check_real("camera_prob", p)
    check_finite("camera_prob", p, "probabilities")
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
    d = as_distance_block(dist)
    num_q, num_g = d.shape
    qc = as_per_image("q_camids", q_camids, num_q, "query")
    gc = as_per_image("g_camids", g_camids, num_g, "gallery image")
    if not (np.isfinite(penalty) and penalty >= 0):
        raise ValueError(f"penalty must be a finite number >= 0, got {penalty!r}")
    if (q_scenes is None) != (g_scenes is None):
        raise ValueError("q_scenes and g_scenes must be given together (or both None)")
    out = d.astype(np.result_type(d.dtype, np.float32), copy=True)
    pen = out.dtype.type(penalty)
    same = (qc[:, None] == gc[None, :]) & (qc >= 0)[:, None]
    out[same] += pen
    if q_scenes is not None:
        qs = as_per_image("q_scenes", q_scenes, num_q, "query")
        gs = as_per_image("g_scenes", g_scenes, num_g, "gallery image")
        other = (qs[:, None] != gs[None, :]) & (qs >= 0)[:, None] & (gs >= 0)[None, :]
        out[other] += pen
    return out

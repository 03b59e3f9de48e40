"""Camera and orientation bias (seed 003 §3.3, eq. 4).

D = D_r − λ1 D_c − λ2 D_o. D_r is the re-id distance; D_c and D_o are distances between the
embeddings of a camera classifier and of an orientation classifier (36 bins of 10°, trained on
VehicleX). A pair that looks far apart to the camera / orientation model is a pair whose re-id
distance is inflated by camera / viewpoint change, so that share is subtracted. The printed
paper swaps the names of D_c and D_o in its sentence; the released code
(``track_dist = origin_track_dist - 0.1*cam_dist - 0.05*view_dist``) pairs λ1 = 0.1 with the
camera and λ2 = 0.05 with the orientation distance, as here.

The caller computes D_c / D_o as (Q, G) blocks with
:func:`vreid.postprocess.kernels.squared_distances` (or at track level, like D_r).
"""

from __future__ import annotations

import numpy as np

from vreid.postprocess.checks import as_distance_block, check_finite

__all__ = ["bias_fusion"]


def _bias_block(name: str, x, shape: tuple[int, int]) -> np.ndarray:
    """A finite distance block of the same (Q, G) shape as ``dist_reid``."""
    d = as_distance_block(x, name)
    if d.shape != shape:
        raise ValueError(f"{name} has shape {d.shape}, expected the shape of dist_reid {shape}")
    check_finite(name, d, "distances")
    return d


def bias_fusion(
    dist_reid,
    dist_camera=None,
    dist_orientation=None,
    lambda_camera: float = 0.1,  # seed 003 eq. 4 λ1 (paper and released code)
    lambda_orientation: float = 0.05,  # seed 003 eq. 4 λ2 (paper and released code)
) -> np.ndarray:
    """Seed 003 eq. 4: D = D_r − λ1 D_c − λ2 D_o; a None term is left out (not both).

    All blocks have the same (Q, G) shape. Returns a new float array.
    """
    dr = as_distance_block(dist_reid, "dist_reid")
    if dist_camera is None and dist_orientation is None:
        raise ValueError("bias_fusion needs dist_camera or dist_orientation (got None for both)")
    for name, v in (("lambda_camera", lambda_camera), ("lambda_orientation", lambda_orientation)):
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    out = dr.astype(np.result_type(dr.dtype, np.float32), copy=True)
    for name, block, lam in (
        ("dist_camera", dist_camera, lambda_camera),
        ("dist_orientation", dist_orientation, lambda_orientation),
    ):
        if block is None:
            continue
        b = _bias_block(name, block, dr.shape)
        out -= out.dtype.type(lam) * b.astype(out.dtype, copy=False)
    return out

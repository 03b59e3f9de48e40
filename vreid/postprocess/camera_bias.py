"""Camera-bias removal / inter-camera fusion (seed 003, DMT 2021, §3.2 eq. 2 and §3.3).

Paper (eq. 2): f_I = g_I − α·ḡ_C, where ḡ_C is the mean feature of every image taken by the
camera C of image I; averaging over all identities of a camera leaves the camera's own bias.
:func:`remove_camera_mean` implements it (then L2-normalises).

Released code (``utils/ficfac_torch.py``, ``run_fic``, called with ``la=0.18``): per camera c of
the *gallery*, m_c = mean of the camera's gallery features and
P_c = (X_cᵀ X_c + n_c·la·I)⁻¹ with X_c the camera's raw (L2-normalised) gallery features; every
query and gallery feature becomes f ← P_c (f − m_c), then L2-normalised (each image uses its own
camera's P_c and m_c). :func:`camera_whitening` implements exactly that form; pass the gallery
as ``ref_features`` / ``ref_camids`` when transforming queries to match the code. The code then
averages the distance matrices computed from the raw and from the fused features: that
averaging is the caller's job (two :func:`~vreid.postprocess.kernels.squared_distances`
blocks, mean of the two).

Camera ids must be known (>= 0): an image with camid −1 has no camera mean. Use
:func:`vreid.postprocess.camera_verification.predict_camids` to get predicted ones.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse

from vreid.postprocess.checks import as_features, as_per_image
from vreid.postprocess.ensemble import l2_normalize

__all__ = ["remove_camera_mean", "camera_whitening"]


_UNKNOWN_CAMERA = (
    "{name} contains unknown cameras (-1): camera-bias removal needs a camera id >= 0 "
    "for every image (use predicted camera ids where labels are missing)"
)


def _camids(name: str, camids, n: int, of: str) -> np.ndarray:
    return as_per_image(name, camids, n, f"row of {of}", what="camera id", negative=_UNKNOWN_CAMERA)


def _reference(features, camids, ref_features, ref_camids):
    """Validated (features, camids, ref_features, ref_camids, cams, camera index of each row)."""
    x = as_features("features", features)
    cam = _camids("camids", camids, x.shape[0], "features")
    if (ref_features is None) != (ref_camids is None):
        raise ValueError("ref_features and ref_camids must be given together (or both None)")
    if ref_features is None:
        rx, rcam = x, cam
    else:
        rx = as_features("ref_features", ref_features, dim=x.shape[1])
        rcam = _camids("ref_camids", ref_camids, rx.shape[0], "ref_features")
    cams, ref_code = np.unique(rcam, return_inverse=True)
    ref_code = ref_code.ravel()
    if len(cam) == 0:
        return x, rx, cams, ref_code, np.zeros(0, dtype=np.int64)
    if len(cams) == 0:
        raise ValueError("ref_features is empty: no camera statistics to remove")
    pos = np.minimum(np.searchsorted(cams, cam), len(cams) - 1)
    missing = np.unique(cam[cams[pos] != cam])
    if missing.size:
        raise ValueError(
            f"camids {missing[:10].tolist()} have no images in the reference set "
            "(ref_features/ref_camids): no camera statistics for them"
        )
    return x, rx, cams, ref_code, pos


def _camera_means(rx: np.ndarray, ref_code: np.ndarray, n_cams: int) -> np.ndarray:
    """(n_cams, dim) mean reference feature per camera, via one sparse indicator product."""
    n = rx.shape[0]
    ind = scipy.sparse.csr_matrix(
        (np.ones(n, dtype=np.float64), (ref_code, np.arange(n))), shape=(n_cams, n)
    )
    counts = np.bincount(ref_code, minlength=n_cams).astype(np.float64)
    return np.asarray(ind @ rx.astype(np.float64)) / counts[:, None]


def remove_camera_mean(
    features,
    camids,
    alpha: float = 1.0,  # seed 003 eq. 2 balance weight; released code subtracts the full mean
    *,
    ref_features=None,
    ref_camids=None,
) -> np.ndarray:
    """Seed 003 eq. 2: f ← f − α·mean_c(f) over images of the same camera, then L2-normalised.

    Camera means come from ``ref_features`` / ``ref_camids`` when given (e.g. the gallery, as in
    the released code), else from ``features`` themselves. Returns a new float32 (N, dim) array.
    """
    if not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    x, rx, cams, ref_code, pos = _reference(features, camids, ref_features, ref_camids)
    if x.shape[0] == 0:
        return np.zeros(x.shape, dtype=np.float32)
    means = (alpha * _camera_means(rx, ref_code, len(cams))).astype(np.float32)
    return l2_normalize(x - means[pos])  # float32: the features' own precision, no (N, dim) float64 copy


def camera_whitening(
    features,
    camids,
    la: float = 0.18,  # seed 003 released code (R1_mAP_eval.compute, la=0.18); paper §3.3 "0.18"
    *,
    subtract_mean: bool = True,  # released code (meanfeat_sub) subtracts m_c before P_c
    ref_features=None,
    ref_camids=None,
) -> np.ndarray:
    """Released-code inter-camera fusion of seed 003: f ← P_c (f − m_c), then L2-normalised.

    P_c = (X_cᵀ X_c + n_c·la·I)⁻¹ and m_c = mean(X_c) are computed per camera c from the
    reference set (``ref_features`` / ``ref_camids``, default ``features`` itself; the code uses
    the gallery for both queries and gallery). P_c is applied by a Cholesky solve, never
    inverted explicitly. ``subtract_mean=False`` applies P_c to f alone. Returns a new float32
    (N, dim) array.
    """
    if not (np.isfinite(la) and la > 0):
        raise ValueError(f"la must be a finite number > 0 (ridge of the per-camera whitening), got {la!r}")
    x, rx, cams, ref_code, pos = _reference(features, camids, ref_features, ref_camids)
    out = np.zeros(x.shape, dtype=np.float64)
    if x.shape[0] == 0:
        return out.astype(np.float32)
    means = _camera_means(rx, ref_code, len(cams))
    dim = x.shape[1]
    for c in np.unique(pos):  # loop over cameras; each camera's rows are transformed at once
        xc = rx[ref_code == c].astype(np.float64)
        gram = xc.T @ xc
        gram[np.diag_indices(dim)] += xc.shape[0] * la
        rows = np.nonzero(pos == c)[0]
        rhs = x[rows].astype(np.float64)
        if subtract_mean:
            rhs -= means[c]
        factor = scipy.linalg.cho_factor(gram, lower=True, check_finite=False)
        out[rows] = scipy.linalg.cho_solve(factor, rhs.T, check_finite=False).T
    return l2_normalize(out)

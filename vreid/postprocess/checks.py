"""Input checks shared by the post-processing steps.

Every step validates its arrays the same way and raises ``ValueError`` with the same wording;
these helpers are the one place that wording lives. Each returns the validated array
(``np.asarray`` of the input, cast where stated) or raises.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "check_real",
    "check_finite",
    "as_features",
    "as_distance_block",
    "as_per_image",
    "as_ids",
]


def _is_real(dtype: np.dtype) -> bool:
    return bool(np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer))


def check_real(name: str, arr: np.ndarray) -> None:
    """ValueError unless ``arr`` has a float or integer dtype (bool and object are rejected)."""
    if not _is_real(arr.dtype):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")


def check_finite(name: str, arr: np.ndarray, what: str) -> None:
    """ValueError if a non-empty ``arr`` holds NaN or ±Inf; ``what`` names the values."""
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf: expected finite {what}")


def as_features(name: str, x, dim: int | None = None, *, dtype=np.float32) -> np.ndarray:
    """A 2-D (n, dim) real, finite feature array; ``dim`` checks the width when given.

    Cast to ``dtype`` (no copy when it already is); ``dtype=None`` keeps the input's dtype.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, dim) of features, got shape {arr.shape}")
    check_real(name, arr)
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} has feature dim {arr.shape[1]}, expected {dim}")
    check_finite(name, arr, "features")
    return arr if dtype is None else arr.astype(dtype, copy=False)


def as_distance_block(dist, name: str = "dist") -> np.ndarray:
    """A 2-D (Q, G) real distance block, returned as given (NaN / Inf are left to the caller)."""
    d = np.asarray(dist)
    if d.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (Q, G) distance block, got shape {d.shape}")
    check_real(name, d)
    return d


def as_per_image(
    name: str,
    values,
    n: int,
    per: str,
    *,
    what: str = "id",
    kind: Literal["int", "float"] = "int",
    negative: str | None = None,
) -> np.ndarray:
    """A 1-D array with one ``what`` per ``per`` (``n`` of them), e.g. camera ids per query.

    ``kind="int"``: integer values, returned as int64. Negative ids (-1 = unknown) are allowed
    unless ``negative`` is given: then they raise ``ValueError(negative.format(name=name,
    count=number of negative ids))``. ``kind="float"``: real numbers where NaN means unknown,
    returned as float64; ±Inf is rejected. An empty array of any dtype is accepted.
    """
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(
            f"{name} must be a 1-D array with one {what} per {per} ({n}), got shape {arr.shape}"
        )
    if kind == "int":
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must hold integer {what}s, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        if negative is not None and (arr < 0).any():
            raise ValueError(negative.format(name=name, count=int((arr < 0).sum())))
        return arr
    if kind != "float":
        raise ValueError(f"kind must be 'int' or 'float', got {kind!r}")
    if negative is not None:
        raise ValueError("negative applies to kind='int' only")
    if arr.size and not _is_real(arr.dtype):
        raise ValueError(f"{name} must hold numbers (NaN = unknown), got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains +-Inf: expected finite {what}s or NaN for unknown")
    return arr


def as_ids(name: str, values, what: str = "id") -> np.ndarray:
    """A 1-D array of integer ``what``s of any length, returned as int64."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of {what}s, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer {what}s, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)

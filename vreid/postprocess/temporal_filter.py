"""Temporal filter (seed 002 §IV "Temporal Annotation").

Vehicles that re-appear after a long interval are assumed to be different: for a query taken
at time t only gallery images with timestamps in [t − τ, t + τ] are kept. Instead of dropping
the others (which would make rankings of different lengths) they are pushed behind every kept
image by a penalty, keeping their relative order, so every ranking stays total. τ is not given
in the paper (it depends on the dataset's clock): no default.
"""

from __future__ import annotations

import numpy as np

__all__ = ["temporal_filter"]


def _times(name: str, x, n: int, side: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(
            f"{name} must be a 1-D array with one timestamp per {side} ({n}), got shape {arr.shape}"
        )
    if arr.size and not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must hold numbers (NaN = unknown), got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains +-Inf: expected finite timestamps or NaN for unknown")
    return arr


def temporal_filter(
    dist,
    q_timestamps,
    g_timestamps,
    tau: float,  # seed 002: interval τ, dataset dependent, no paper value
    penalty: float | None = None,
) -> np.ndarray:
    """Seed 002: push gallery images with |t_q − t_g| > τ behind all others.

    ``penalty`` is added to those pairs; None (default) uses (max − min of the finite
    distances) + 1, just enough to rank them after every kept image while keeping their
    order (a huge constant would lose float32 precision); ``np.inf`` drops them outright
    (ties then fall back to gallery order). NaN timestamps are unknown: never filtered.
    Returns a new (Q, G) array.
    """
    d = np.asarray(dist)
    if d.ndim != 2:
        raise ValueError(f"dist must be a 2-D (Q, G) distance block, got shape {d.shape}")
    if not (np.issubdtype(d.dtype, np.floating) or np.issubdtype(d.dtype, np.integer)):
        raise ValueError(f"dist must hold real numbers, got dtype {d.dtype}")
    num_q, num_g = d.shape
    tq = _times("q_timestamps", q_timestamps, num_q, "query")
    tg = _times("g_timestamps", g_timestamps, num_g, "gallery image")
    if np.isnan(tau) or tau < 0:
        raise ValueError(f"tau must be a number >= 0 (np.inf disables the filter), got {tau!r}")
    if penalty is not None and (np.isnan(penalty) or penalty < 0):
        raise ValueError(f"penalty must be None or a number >= 0, got {penalty!r}")
    out = d.astype(np.result_type(d.dtype, np.float32), copy=True)
    if out.size == 0:
        return out
    if penalty is None:
        finite = out[np.isfinite(out)]
        penalty = float(finite.max() - finite.min()) + 1.0 if finite.size else 1.0
    # NaN timestamps give a NaN gap, and NaN > tau is False: unknown times are never filtered.
    with np.errstate(invalid="ignore"):
        far = np.abs(tq[:, None] - tg[None, :]) > tau
    out[far] += out.dtype.type(penalty)
    return out

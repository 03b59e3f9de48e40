"""Temporal filter (seed 002 §IV "Temporal Annotation").

Vehicles that re-appear after a long interval are assumed to be different: for a query taken
at time t only gallery images with timestamps in [t − τ, t + τ] are kept. Instead of dropping
the others (which would make rankings of different lengths) they are pushed behind every kept
image by a penalty, keeping their relative order, so every ranking stays total. τ is not given
in the paper (it depends on the dataset's clock): no default.
"""

from __future__ import annotations

import numpy as np

from vreid.postprocess.checks import as_distance_block, as_per_image

__all__ = ["temporal_filter"]


def temporal_filter(
    dist,
    q_timestamps,
    g_timestamps,
    tau: float,  # seed 002: interval τ, dataset dependent, no paper value
    penalty: float | None = None,
    *,
    g_end=None,
) -> np.ndarray:
    """Seed 002: push gallery images with |t_q − t_g| > τ behind all others.

    With ``g_end`` each gallery item spans [g_timestamps, g_end] (a track's first and last
    frame): it is pushed back when the query's time lies more than τ outside that span.

    ``penalty`` is added to those pairs; None (default) uses (max − min of the finite
    distances) + 1, just enough to rank them after every kept image while keeping their
    order (a huge constant would lose float32 precision); ``np.inf`` drops them outright
    (ties then fall back to gallery order). NaN timestamps are unknown: never filtered.
    Returns a new (Q, G) array.
    """
    d = as_distance_block(dist)
    num_q, num_g = d.shape
    tq = as_per_image("q_timestamps", q_timestamps, num_q, "query", what="timestamp", kind="float")
    tg = as_per_image(
        "g_timestamps", g_timestamps, num_g, "gallery image", what="timestamp", kind="float"
    )
    te = tg if g_end is None else as_per_image("g_end", g_end, num_g, "gallery item", what="timestamp",
                                                kind="float")
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
        far = np.maximum(tg[None, :] - tq[:, None], tq[:, None] - te[None, :]) > tau
    out[far] += out.dtype.type(penalty)
    return out

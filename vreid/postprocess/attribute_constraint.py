"""Attribute constraint (seed 000 §3.3, eq. 6).

d(i, j) = d_old(i, j) + δ_t·[T_i ≠ T_j] + δ_c·[C_i ≠ C_j]: a query–gallery pair whose predicted
vehicle types differ is pushed back by δ_t, whose predicted colours differ by δ_c, by both when
both differ (the printed eq. 6 has "T_i = T_j and C_i = C_j" on its third case, a typo for ≠/≠:
its text calls δ_t, δ_c punish-values for differing attributes). δ_t and δ_c are tuned (the
paper gives no values), so they have no default here.
"""

from __future__ import annotations

import numpy as np

from vreid.postprocess.checks import as_distance_block, check_finite, check_real

__all__ = ["attribute_constraint"]


def _labels(name: str, x, n: int, side: str) -> np.ndarray:
    """Predicted class per row: argmax of (n, C) probabilities, or (n,) integer labels as given."""
    arr = np.asarray(x)
    if arr.ndim == 1 and (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        if len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} labels, expected one per {side} ({n})")
        return arr.astype(np.int64, copy=False)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be (n, n_classes) probabilities or (n,) integer labels, got shape {arr.shape}"
        )
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} rows, expected one per {side} ({n})")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has 0 classes: expected (n, n_classes) probabilities")
    check_real(name, arr)
    check_finite(name, arr, "probabilities")
    return np.argmax(arr, axis=1).astype(np.int64)


def _attribute(attr: str, q, g, num_q: int, num_g: int):
    if q is None and g is None:
        return None
    if q is None or g is None:
        raise ValueError(
            f"q_{attr}_prob and g_{attr}_prob must be given together (or both None)"
        )
    qa = _labels(f"q_{attr}_prob", q, num_q, "query")
    ga = _labels(f"g_{attr}_prob", g, num_g, "gallery image")
    qp, gp = np.asarray(q), np.asarray(g)
    if qp.ndim == 2 and gp.ndim == 2 and qp.shape[1] != gp.shape[1]:
        raise ValueError(
            f"q_{attr}_prob has {qp.shape[1]} classes but g_{attr}_prob has {gp.shape[1]}"
        )
    return qa, ga


def attribute_constraint(
    dist,
    q_type_prob,
    g_type_prob,
    q_color_prob,
    g_color_prob,
    delta_type: float,  # seed 000 eq. 6 δ_t: tuned, no paper value
    delta_color: float,  # seed 000 eq. 6 δ_c: tuned, no paper value
) -> np.ndarray:
    """Seed 000 eq. 6: add δ_t where predicted types differ and δ_c where colours differ.

    ``*_prob`` are (n, n_classes) class probabilities (predicted class = argmax) or (n,)
    integer labels; pass None for both sides of an attribute to skip it. A label < 0
    (unknown, as in the manifest) never adds a penalty. Returns a new (Q, G) array.
    """
    d = as_distance_block(dist)
    num_q, num_g = d.shape
    for name, v in (("delta_type", delta_type), ("delta_color", delta_color)):
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    attrs = [
        (_attribute("type", q_type_prob, g_type_prob, num_q, num_g), delta_type),
        (_attribute("color", q_color_prob, g_color_prob, num_q, num_g), delta_color),
    ]
    if all(a is None for a, _ in attrs):
        raise ValueError(
            "attribute_constraint needs at least one attribute: got None for both type and color"
        )
    out = d.astype(np.result_type(d.dtype, np.float32), copy=True)
    for a, delta in attrs:
        if a is None or delta == 0:
            continue
        qa, ga = a
        differ = qa[:, None] != ga[None, :]
        differ &= (qa >= 0)[:, None] & (ga >= 0)[None, :]
        out[differ] += out.dtype.type(delta)
    return out

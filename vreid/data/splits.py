"""Validation split from training identities (METHODS.md, Evaluation; 001/003)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vreid.data.manifest import ManifestError, validate_manifest


def validation_split(manifest: pa.Table, num_ids: int, queries_per_id: int = 3, seed: int = 0) -> pa.Table:
    """Hold out ``num_ids`` training identities: per identity ``queries_per_id`` images (from
    different cameras where possible) become queries, the rest of its images the gallery. The
    other training images stay ``train``; the original query / gallery rows are dropped.

    Returns a manifest of the same schema (``order`` numbers the new query / gallery lists).
    """
    train = manifest.filter(pc.equal(manifest.column("split"), "train"))
    pids = train.column("pid").to_numpy()
    real = np.asarray(train.column("domain").to_pylist()) == "real"
    # the validation identities come from the target (real) domain when there is one
    ids = np.unique(pids[(pids >= 0) & (real if real.any() else True)])
    if num_ids < 1 or num_ids >= ids.size:
        raise ManifestError(f"validation split: num_ids={num_ids} must be in [1, {ids.size - 1}] "
                            f"(the training split has {ids.size} labelled identities)")
    rng = np.random.default_rng(seed)
    held = set(rng.choice(ids, size=num_ids, replace=False).tolist())
    cams = train.column("camid").to_numpy()
    split = np.array(["train"] * train.num_rows, dtype=object)
    for pid in sorted(held):
        idx = np.flatnonzero(pids == pid)
        idx = idx[rng.permutation(idx.size)]
        if idx.size < 2:
            raise ManifestError(f"validation split: identity {pid} has {idx.size} image; need >= 2")
        # one query per camera first, so queries spread over cameras; keep >= 1 gallery image
        want = min(queries_per_id, idx.size - 1)
        chosen: list[int] = []
        seen: set[int] = set()
        for j in idx:
            if cams[j] not in seen and len(chosen) < want:
                chosen.append(int(j))
                seen.add(int(cams[j]))
        chosen += [int(j) for j in idx if int(j) not in chosen][: want - len(chosen)]
        split[idx] = "gallery"
        split[chosen] = "query"
    out = train.set_column(train.schema.get_field_index("split"), "split", pa.array(split.tolist(), pa.string()))
    order = np.full(out.num_rows, -1, dtype=np.int32)
    for name in ("query", "gallery"):
        sel = np.flatnonzero(split == name)
        order[sel] = np.arange(sel.size, dtype=np.int32)
    out = out.set_column(out.schema.get_field_index("order"), "order", pa.array(order, pa.int32()))
    return validate_manifest(out, "validation split")

"""AI City Challenge track 2 submission file ``track2.txt`` (DESIGN.md "Post-process output").

One line per query in the official query order (``name_query.txt``); each line holds the first
100 gallery images of that query's ranking as their ``order`` + 1 (1-based position in
``name_test.txt``), separated by spaces. Galleries smaller than 100 list every image.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["TOP_K", "write_submission", "read_submission"]

TOP_K = 100  # images per query scored by the AI City server (top-100 mAP)


def _expected_len(num_gallery: int | None) -> int:
    return TOP_K if num_gallery is None else min(TOP_K, num_gallery)


def write_submission(ranked_gallery_orders, path, num_gallery: int | None = None) -> Path:
    """Write ``track2.txt`` atomically (temporary file beside it, then ``os.replace``).

    ``ranked_gallery_orders`` is (Q, K) 0-based gallery ``order`` values, row i for the query
    with ``order`` i, best first; the first 100 of each row are written. Raises ValueError
    unless K >= min(100, num_gallery), every index lies in [0, num_gallery) and no row repeats
    an index. Returns the written path.
    """
    ranked = np.asarray(ranked_gallery_orders)
    if ranked.ndim != 2 or ranked.shape[0] == 0:
        raise ValueError(
            f"ranked_gallery_orders has shape {ranked.shape}, expected (num_queries >= 1, K)"
        )
    if ranked.size and not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(
            f"ranked_gallery_orders must hold integer gallery orders, got dtype {ranked.dtype}"
        )
    if num_gallery is not None and num_gallery < 1:
        raise ValueError(f"num_gallery must be >= 1, got {num_gallery}")
    need = _expected_len(num_gallery)
    if ranked.shape[1] < need:
        hint = "" if num_gallery is not None else " (pass num_gallery for a smaller gallery)"
        raise ValueError(
            f"ranked lists have {ranked.shape[1]} entries per query, expected at least {need}{hint}"
        )
    top = ranked[:, :need].astype(np.int64)
    high = num_gallery if num_gallery is not None else np.iinfo(np.int64).max
    bad = np.nonzero(((top < 0) | (top >= high)).any(axis=1))[0]
    if bad.size:
        rng = f"[0, {num_gallery})" if num_gallery is not None else ">= 0"
        raise ValueError(f"gallery orders must be {rng}; query rows {bad[:10].tolist()} are not")
    s = np.sort(top, axis=1)
    dup = np.nonzero((s[:, 1:] == s[:, :-1]).any(axis=1))[0]
    if dup.size:
        raise ValueError(f"a query's list repeats a gallery image: query rows {dup[:10].tolist()}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(" ".join(map(str, row)) + "\n" for row in (top + 1).tolist())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_submission(
    path, num_gallery: int | None = None, num_queries: int | None = None
) -> np.ndarray:
    """Parse and validate ``track2.txt``; returns (Q, min(100, num_gallery)) 0-based gallery orders.

    Each line must hold exactly min(100, num_gallery) distinct integers in [1, num_gallery]
    (100 when ``num_gallery`` is None); errors name the file and the 1-based line.
    """
    path = Path(path)
    need = _expected_len(num_gallery)
    rows = []
    with open(path, encoding="ascii", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            tokens = line.split()
            if len(tokens) != need:
                raise ValueError(f"{where}: {len(tokens)} gallery indices, expected {need}")
            try:
                row = [int(t) for t in tokens]
            except ValueError:
                raise ValueError(
                    f"{where}: expected space-separated integers, got {line.strip()[:80]!r}"
                ) from None
            low, high = min(row), max(row)
            if low < 1 or (num_gallery is not None and high > num_gallery):
                rng = f"[1, {num_gallery}]" if num_gallery is not None else ">= 1"
                raise ValueError(
                    f"{where}: gallery indices must be {rng} (1-based), got range [{low}, {high}]"
                )
            if len(set(row)) != len(row):
                raise ValueError(f"{where}: a gallery index is repeated")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: empty submission, expected one line per query")
    if num_queries is not None and len(rows) != num_queries:
        raise ValueError(f"{path}: {len(rows)} lines, expected one per query ({num_queries})")
    return np.asarray(rows, dtype=np.int64) - 1

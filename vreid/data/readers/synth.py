"""Reader of the synthetic city: the AI City layout plus ``gt/`` ground truth and masks."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from vreid.data.manifest import ManifestError
from vreid.data.readers.aic import aic_rows
from vreid.data.readers.common import ImageChecker, parse_float, parse_int, read_lines
from vreid.data.synth.generate import GT_FIELDS

_FLOAT_FIELDS = ("timestamp", "orientation")
_GT = {"train": "train_gt.csv", "query": "query_gt.csv", "gallery": "test_gt.csv"}


def _gt(path: Path) -> dict[str, dict[str, Any]]:
    """``gt/*_gt.csv``: a header naming every column of ``GT_FIELDS``, then one row per image."""
    reader = csv.DictReader(read_lines(path))
    missing = [c for c in GT_FIELDS if c not in (reader.fieldnames or [])]
    if missing:
        raise ManifestError(f"{path}:1: no column '{missing[0]}' in the header {reader.fieldnames}; "
                            f"expected the columns {list(GT_FIELDS)}")
    out = {}
    for rec in reader:
        where = f"{path}:{reader.line_num}"
        out[rec["name"]] = {c: (parse_float if c in _FLOAT_FIELDS else parse_int)(rec[c], where, c)
                            for c in GT_FIELDS if c != "name"}
    return out


def synth_rows(root: Path, checker: ImageChecker, domain: str = "real") -> list[dict[str, Any]]:
    """Rows of a generated city; ``gt/`` is merged when present (hidden labels of query/test)."""
    rows = aic_rows(root, checker, domain=domain)
    gts = {split: _gt(root / "gt" / f) for split, f in _GT.items() if (root / "gt" / f).is_file()}
    for row in rows:
        gt = gts.get(row["split"])
        if gt is not None:
            if row["name"] not in gt:
                raise ManifestError(f"{root / 'gt' / _GT[row['split']]}: no ground truth for '{row['name']}'")
            fields = dict(gt[row["name"]])
            if row["split"] == "query":  # as in AI City, queries belong to no public track
                fields.pop("trackid")
            row.update(fields)
        mask = f"masks/{row['image_id'].rsplit('.', 1)[0]}.png"
        if (root / mask).is_file():
            row["mask_path"] = mask
    return rows

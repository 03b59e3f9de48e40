"""Reader of the synthetic city: the AI City layout plus ``gt/`` ground truth and masks."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from vreid.data.manifest import ManifestError
from vreid.data.readers.aic import aic_rows
from vreid.data.readers.common import ImageChecker, parse_float, parse_int

_GT = {"train": "train_gt.csv", "query": "query_gt.csv", "gallery": "test_gt.csv"}


def _gt(path: Path) -> dict[str, dict[str, Any]]:
    out = {}
    with open(path, newline="") as fh:
        for lineno, rec in enumerate(csv.DictReader(fh), 2):
            where = f"{path}:{lineno}"
            out[rec["name"]] = {
                "pid": parse_int(rec["pid"], where, "pid"), "camid": parse_int(rec["camid"], where, "camid"),
                "trackid": parse_int(rec["trackid"], where, "trackid"),
                "timestamp": parse_float(rec["timestamp"], where, "timestamp"),
                "color": parse_int(rec["color"], where, "color"), "vtype": parse_int(rec["vtype"], where, "vtype"),
                "orientation": parse_float(rec["orientation"], where, "orientation"),
            }
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

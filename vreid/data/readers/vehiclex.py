"""VehicleX (synthetic) reader: ``train_label.xml`` with identity, camera, colour, type, orientation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vreid.data.readers.aic import read_label_items
from vreid.data.readers.common import ImageChecker, require_dir


def vehiclex_rows(root: Path, checker: ImageChecker) -> list[dict[str, Any]]:
    folder = "image_train"
    require_dir(root / folder)
    rows = []
    for name, fields in read_label_items(root / "train_label.xml", attributes=True).items():
        image_id = f"{folder}/{name}"
        if checker.ok(image_id, "train_label.xml"):
            rows.append({"image_id": image_id, "name": name, "split": "train",
                         "domain": "synthetic", **fields})
    return rows

"""VehicleID reader: split lists, attributes, seeded one-image-per-identity gallery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vreid.data.manifest import ManifestError
from vreid.data.readers.common import ImageChecker, parse_int, read_lines, require_dir

# VehicleID has no camera ids; the usual protocol treats query and gallery as different cameras
# so that the same-camera junk rule does not remove every positive.
QUERY_CAMID, GALLERY_CAMID = 0, 1


def _two_columns(path: Path, expected: str) -> list[tuple[str, str, str]]:
    """(``file:line``, first, second) of every non-blank line of a two-column text file."""
    out = []
    for lineno, line in enumerate(read_lines(path), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ManifestError(f"{path}:{lineno}: expected '{expected}', got '{line.strip()}'")
        out.append((f"{path}:{lineno}", parts[0], parts[1]))
    return out


def _pairs(path: Path) -> list[tuple[str, int]]:
    """``train_test_split/*.txt``: one 'image_name vehicle_id' per line."""
    if not path.is_file():
        raise ManifestError(f"{path}: list file not found")
    out = [(name, parse_int(pid, where, "vehicle_id"))
           for where, name, pid in _two_columns(path, "image_name vehicle_id")]
    if not out:
        raise ManifestError(f"{path}: the list is empty")
    return out


def _attr(path: Path) -> dict[int, int]:
    """``attribute/{color,model}_attr.txt``: one 'vehicle_id attribute_id' per line."""
    if not path.is_file():
        return {}
    return {parse_int(pid, where, "vehicle_id"): parse_int(value, where, "attribute_id")
            for where, pid, value in _two_columns(path, "vehicle_id attribute_id")}


def vehicleid_rows(root: Path, checker: ImageChecker, test_size: int = 800,
                   seed: int = 0) -> list[dict[str, Any]]:
    """Train list plus ``test_list_{test_size}``: one random image per identity is the gallery."""
    require_dir(root / "image")
    split_dir = root / "train_test_split"
    colors = _attr(root / "attribute" / "color_attr.txt")
    models = _attr(root / "attribute" / "model_attr.txt")
    rows: list[dict[str, Any]] = []

    def add(name: str, pid: int, split: str, order: int, camid: int, where: str) -> None:
        image_id = f"image/{name}.jpg"
        if checker.ok(image_id, where):
            rows.append({"image_id": image_id, "name": f"{name}.jpg", "split": split, "order": order,
                         "pid": pid, "camid": camid, "color": colors.get(pid, -1),
                         "vtype": models.get(pid, -1)})

    seen: set[str] = set()
    for name, pid in _pairs(split_dir / "train_list.txt"):
        if name in seen:
            raise ManifestError(f"{split_dir / 'train_list.txt'}: duplicate image name '{name}'")
        seen.add(name)
        add(name, pid, "train", -1, -1, "train_list.txt")
    test = _pairs(split_dir / f"test_list_{test_size}.txt")
    rng = np.random.default_rng(seed)
    by_pid: dict[int, list[str]] = {}
    for name, pid in test:
        by_pid.setdefault(pid, []).append(name)
    n_q = n_g = 0
    for pid in sorted(by_pid):
        names = by_pid[pid]
        pick = int(rng.integers(len(names)))
        add(names[pick], pid, "gallery", n_g, GALLERY_CAMID, f"test_list_{test_size}.txt")
        n_g += 1
        for j, name in enumerate(names):
            if j != pick:
                add(name, pid, "query", n_q, QUERY_CAMID, f"test_list_{test_size}.txt")
                n_q += 1
    return rows

"""VeRi-776 reader: names ``VVVV_cCCC_TTTTTTTT_N.jpg`` carry vehicle, camera and timestamp."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vreid.data.manifest import ManifestError
from vreid.data.readers.common import (
    ImageChecker,
    parse_camera,
    parse_int,
    parse_label_xml,
    read_name_list,
    read_tracks,
    require_dir,
)

_NAME = re.compile(r"^(\d+)_(c\d+)_(\d+)_\d+\.(jpg|jpeg|png)$", re.I)


def _attributes(path: Path) -> dict[str, dict[str, int]]:
    if not path.is_file():
        return {}
    out: dict[str, dict[str, int]] = {}
    for i, item in enumerate(parse_label_xml(path), 1):
        where = f"{path} (Item #{i})"
        row = {}
        if "colorID" in item:
            row["color"] = parse_int(item["colorID"], where, "colorID")
        if "typeID" in item:
            row["vtype"] = parse_int(item["typeID"], where, "typeID")
        out[item["imageName"]] = row
    return out


def veri776_rows(root: Path, checker: ImageChecker) -> list[dict[str, Any]]:
    attrs = {**_attributes(root / "train_label.xml"), **_attributes(root / "test_label.xml")}
    rows: list[dict[str, Any]] = []
    for split, folder, list_file in (("train", "image_train", "name_train.txt"),
                                     ("query", "image_query", "name_query.txt"),
                                     ("gallery", "image_test", "name_test.txt")):
        require_dir(root / folder)
        lp = root / list_file
        names = read_name_list(lp) if lp.is_file() or split != "train" else sorted(
            p.name for p in (root / folder).iterdir() if _NAME.match(p.name))
        track_path = root / f"{'test' if split == 'gallery' else split}_track.txt"
        tracks = read_tracks(track_path, names) if split == "gallery" and track_path.is_file() else {}
        for order, name in enumerate(names):
            m = _NAME.match(name)
            if not m:
                raise ManifestError(
                    f"{lp}: line {order + 1}: '{name}' is not a VeRi name VVVV_cCCC_TTTTTTTT_N.jpg")
            image_id = f"{folder}/{name}"
            if not checker.ok(image_id, list_file):
                continue
            rows.append({
                "image_id": image_id, "name": name, "split": split, "order": order,
                "pid": int(m.group(1)), "camid": parse_camera(m.group(2), f"{lp}:{order + 1}"),
                "timestamp": float(int(m.group(3))), "trackid": tracks.get(name, -1),
                **attrs.get(name, {}),
            })
    return rows

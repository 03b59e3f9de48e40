"""AI City Challenge track 2 (CityFlow-V2) reader: the 2020 and 2021 layouts (METHODS.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vreid.data.manifest import ManifestError
from vreid.data.readers.common import (
    ImageChecker,
    parse_camera,
    parse_float,
    parse_int,
    parse_label_xml,
    read_name_list,
    read_tracks,
    require_dir,
)

# split name in the manifest -> (image folder, list file, label file, track file stem)
_SPLITS = {
    "train": ("image_train", None, "train_label.xml", "train"),
    "query": ("image_query", "name_query.txt", "query_label.xml", None),
    "gallery": ("image_test", "name_test.txt", "test_label.xml", "test"),
}


def read_label_items(path: Path, attributes: bool) -> dict[str, dict[str, Any]]:
    """imageName -> parsed fields of a label XML."""
    out: dict[str, dict[str, Any]] = {}
    for i, item in enumerate(parse_label_xml(path), 1):
        where = f"{path} (Item #{i}, imageName={item['imageName']})"
        name = item["imageName"]
        if name in out:
            raise ManifestError(f"{path}: duplicate imageName '{name}' (Item #{i})")
        row: dict[str, Any] = {}
        if "vehicleID" in item:
            row["pid"] = parse_int(item["vehicleID"], where, "vehicleID")
        if "cameraID" in item:
            row["camid"] = parse_camera(item["cameraID"], where)
        if attributes:
            if "colorID" in item:
                row["color"] = parse_int(item["colorID"], where, "colorID")
            if "typeID" in item:
                row["vtype"] = parse_int(item["typeID"], where, "typeID")
            if "orientation" in item:
                row["orientation"] = parse_float(item["orientation"], where, "orientation")
        out[name] = row
    return out


def _track_map(root: Path, stem: str, names: list[str]) -> dict[str, int]:
    t2021, t2020 = root / f"{stem}_track.txt", root / f"{stem}_track_id.txt"
    if t2021.is_file():
        return read_tracks(t2021, known=set(names))
    if t2020.is_file():
        by_number = {str(int(Path(n).stem)): n for n in names if Path(n).stem.isdigit()}
        return read_tracks(t2020, name_of=by_number)
    return {}


def aic_rows(root: Path, checker: ImageChecker, domain: str = "real") -> list[dict[str, Any]]:
    """Rows of every split of an AI City layout; labels and tracks merged where present."""
    rows: list[dict[str, Any]] = []
    for split, (folder, list_file, label_file, track_stem) in _SPLITS.items():
        require_dir(root / folder)
        label_path = root / label_file
        labels = read_label_items(label_path, attributes=True) if label_path.is_file() else {}
        if list_file is not None:
            names = read_name_list(root / list_file)
        elif labels:
            names = list(labels)
        else:
            names = read_name_list(root / "name_train.txt")
        tracks = _track_map(root, track_stem, names) if track_stem else {}
        for order, name in enumerate(names):
            image_id = f"{folder}/{name}"
            if not checker.ok(image_id, list_file or label_file):
                continue
            row = {"image_id": image_id, "name": name, "split": split, "order": order,
                   "trackid": tracks.get(name, -1), "domain": domain}
            row.update(labels.get(name, {}))
            rows.append(row)
    if not any(r["split"] == "query" for r in rows):
        raise ManifestError(f"{root}: the query set is empty")
    return rows

"""VERI-Wild reader (Lou et al., CVPR 2019): ``images/<vid>/<image>.jpg``, the lists of
``train_test_split/`` (``train_list.txt``; per test set ``test_<N>.txt`` = gallery and
``test_<N>_query.txt`` = query, one ``vid/image`` per line) and
``train_test_split/vehicle_info.txt`` (a header, then ``vid/image;camera;time;model;type;color``).

Colour and type names are coded as their index in the sorted names of the file; the model name
has no manifest column and is only checked to be present. Times are ``YYYY-MM-DD HH:MM:SS`` (or
seconds) and become seconds since the epoch (UTC).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vreid.data.manifest import ManifestError
from vreid.data.readers.common import ImageChecker, parse_camera, parse_float, parse_int, require_dir

# the three test sets of the paper (Lou et al. 2019, Table 2): identities in the test list
TEST_SETS = {"small": 3000, "medium": 5000, "large": 10000}
INFO_FIELDS = ("vid/image", "camera", "time", "model", "type", "color")


def _key(token: str, where: str) -> tuple[str, str]:
    vid, sep, image = token.strip().partition("/")
    if not sep or not vid or not image or "/" in image:
        raise ManifestError(f"{where}: expected 'vehicle_id/image_id', got '{token.strip()}'")
    return vid, image


def _time(value: str, where: str) -> float:
    value = value.strip()
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return parse_float(value, where, "time")


def read_vehicle_info(path: Path) -> dict[str, dict[str, Any]]:
    """``vid/image`` -> {camid, timestamp, model, type, color} (names); the header line is skipped."""
    if not path.is_file():
        raise ManifestError(f"{path}: vehicle info file not found")
    info: dict[str, dict[str, Any]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or (lineno == 1 and not line.split("/")[0].strip().isdigit()):
            continue
        where = f"{path}:{lineno}"
        parts = line.split(";")
        if len(parts) != len(INFO_FIELDS):
            raise ManifestError(f"{where}: expected {len(INFO_FIELDS)} fields {';'.join(INFO_FIELDS)}, "
                                f"got {len(parts)}: '{line.strip()}'")
        vid, image = _key(parts[0], where)
        parse_int(vid, where, "vehicle id")
        if not parts[3].strip():
            raise ManifestError(f"{where}: field model is empty")
        info[f"{vid}/{image}"] = {"camid": parse_camera(parts[1], where), "timestamp": _time(parts[2], where),
                                  "type": parts[4].strip(), "color": parts[5].strip()}
    if not info:
        raise ManifestError(f"{path}: no vehicle rows")
    return info


def veriwild_rows(root: Path, checker: ImageChecker, test_set: str = "small") -> list[dict[str, Any]]:
    if test_set not in TEST_SETS:
        raise ManifestError(f"unknown VERI-Wild test set '{test_set}'; expected one of {sorted(TEST_SETS)}")
    require_dir(root / "images")
    split_dir = require_dir(root / "train_test_split")
    info = read_vehicle_info(split_dir / "vehicle_info.txt")
    codes = {attr: {name: i for i, name in enumerate(sorted({v[attr] for v in info.values()} - {""}))}
             for attr in ("color", "type")}
    n = TEST_SETS[test_set]
    rows: list[dict[str, Any]] = []
    for split, list_name in (("train", "train_list.txt"), ("query", f"test_{n}_query.txt"),
                             ("gallery", f"test_{n}.txt")):
        path = split_dir / list_name
        if not path.is_file():
            raise ManifestError(f"{path}: list file not found (test set '{test_set}' = test_{n})")
        order = 0
        seen: dict[str, int] = {}
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            vid, image = _key(line.split()[0], where)
            key = f"{vid}/{image}"
            if key in seen:
                raise ManifestError(f"{where}: duplicate image '{key}' (first on line {seen[key]})")
            seen[key] = lineno
            if key not in info:
                raise ManifestError(f"{where}: image '{key}' is not in {split_dir / 'vehicle_info.txt'}")
            meta = info[key]
            image_id = f"images/{vid}/{image}.jpg"
            if checker.ok(image_id, f"{list_name} line {lineno}"):
                rows.append({"image_id": image_id, "name": f"{image}.jpg", "split": split,
                             "order": order if split != "train" else -1, "pid": parse_int(vid, where, "vehicle id"),
                             "camid": meta["camid"], "timestamp": meta["timestamp"],
                             "color": codes["color"].get(meta["color"], -1),
                             "vtype": codes["type"].get(meta["type"], -1)})
            order += 1
    return rows

"""Helpers shared by the dataset readers: label XML, list files, camera ids, image checks."""

from __future__ import annotations

import codecs
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from vreid.data.manifest import ManifestError

_DECLARATION = re.compile(rb"^\s*<\?xml[^>]*?\?>", re.S)
_ENCODING = re.compile(rb"encoding\s*=\s*[\"']([A-Za-z0-9_.-]+)[\"']")
_CAMERA = re.compile(r"^[cC]?0*(\d+)$")


def parse_label_xml(path: Path) -> list[dict[str, str]]:
    """Parse an AI City / VeRi / VehicleX label XML into the attribute dicts of its ``<Item>``s.

    The files ship with ``encoding="gb2312"``, which expat cannot decode itself: the bytes are
    decoded with the declared codec here and the declaration is dropped before parsing.
    """
    if not path.is_file():
        raise ManifestError(f"{path}: label file not found")
    raw = path.read_bytes()
    encoding = "utf-8"
    decl = _DECLARATION.match(raw)
    if decl:
        found = _ENCODING.search(decl.group(0))
        if found:
            encoding = found.group(1).decode("ascii")
        # keep line numbers: replace the declaration by as many newlines as it spanned
        raw = b"\n" * decl.group(0).count(b"\n") + raw[decl.end():]
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ManifestError(f"{path}: unknown XML encoding '{encoding}'") from None
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ManifestError(f"{path}:{line}: bytes are not valid {encoding}") from None
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        line, col = exc.position
        raise ManifestError(f"{path}:{line}:{col}: XML does not parse ({exc})") from None
    items = [dict(item.attrib) for item in root.iter("Item")]
    if not items:
        raise ManifestError(f"{path}: no <Item> elements found; expected <Items><Item imageName=... /></Items>")
    for i, item in enumerate(items):
        if "imageName" not in item:
            raise ManifestError(f"{path}: <Item> #{i + 1} lacks the imageName attribute")
    return items


def read_name_list(path: Path) -> list[str]:
    """One image name per line (``name_query.txt`` / ``name_test.txt``); duplicates are errors."""
    if not path.is_file():
        raise ManifestError(f"{path}: list file not found")
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="strict").splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            raise ManifestError(f"{path}:{lineno}: duplicate image name '{name}' (first on line {seen[name]})")
        seen[name] = lineno
        names.append(name)
    if not names:
        raise ManifestError(f"{path}: the list is empty")
    return names


def parse_camera(value: str, where: str) -> int:
    """``c001`` / ``C12`` / ``7`` → integer camera id."""
    m = _CAMERA.match(value.strip())
    if not m:
        raise ManifestError(f"{where}: unknown camera string '{value}'; expected like 'c001'")
    return int(m.group(1))


def parse_int(value: str, where: str, field: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: field {field}='{value}' is not an integer") from None


def parse_float(value: str, where: str, field: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: field {field}='{value}' is not a number") from None


def require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise ManifestError(f"{path}: folder not found")
    return path


def read_tracks(path: Path, name_of: dict[str, str] | None = None, known: set[str] | None = None) -> dict[str, int]:
    """Track files → {image name: track index (line number, 0-based)}.

    2021 layout (``*_track.txt``): image names separated by spaces. 2020 layout
    (``*_track_id.txt``): integer image numbers, mapped through ``name_of`` (number → name).
    With ``known`` (the split's image names) a track listing any other image is an error.
    """
    if not path.is_file():
        raise ManifestError(f"{path}: track file not found")
    tracks: dict[str, int] = {}
    track = -1
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        track += 1
        for tok in tokens:
            name = tok
            if name_of is not None:
                if not tok.isdigit():
                    raise ManifestError(f"{path}:{lineno}: '{tok}' is not an image number")
                name = name_of.get(str(int(tok)), "")
                if not name:
                    raise ManifestError(f"{path}:{lineno}: image number {tok} is not in the image list")
            if known is not None and name not in known:
                raise ManifestError(f"{path}:{lineno}: track lists image '{name}', which is not in the split's "
                                    "image list")
            if name in tracks:
                raise ManifestError(f"{path}:{lineno}: image '{name}' is already in another track")
            tracks[name] = track
    return tracks


class ImageChecker:
    """Applies the bad-image policy: ``fail`` raises naming the file, ``skip`` records it."""

    def __init__(self, root: Path, policy: str = "fail", verify: bool = False):
        if policy not in ("fail", "skip"):
            raise ValueError(f"on_bad_image must be 'fail' or 'skip', got '{policy}'")
        self.root, self.policy, self.verify = root, policy, verify
        self.skipped: list[dict[str, str]] = []
        self._listing: dict[str, set[str]] = {}

    def _exists(self, rel: str) -> bool:
        folder, _, name = rel.rpartition("/")
        if folder not in self._listing:
            d = self.root / folder
            self._listing[folder] = set(os.listdir(d)) if d.is_dir() else set()
        return name in self._listing[folder]

    def ok(self, rel: str, where: str) -> bool:
        reason = None
        if not self._exists(rel):
            reason = f"listed in {where} but absent"
        elif self.verify:
            from vreid.data.images import ImageDecodeError, decode_image

            try:
                decode_image(self.root / rel)
            except ImageDecodeError as exc:
                reason = str(exc.reason)
        if reason is None:
            return True
        if self.policy == "fail":
            raise ManifestError(f"{self.root / rel}: {reason}")
        self.skipped.append({"image_id": rel, "reason": reason})
        return False

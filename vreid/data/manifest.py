"""The manifest: one Arrow table describing every image of a dataset (DESIGN.md, Contracts)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vreid.errors import InputError

SPLITS = ("train", "query", "gallery")
DOMAINS = ("real", "synthetic", "crop")  # crop: the re-cropped copy (vreid.recrop, 003 §3.1)

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("order", pa.int32(), nullable=False),
        pa.field("pid", pa.int32(), nullable=False),
        pa.field("camid", pa.int32(), nullable=False),
        pa.field("trackid", pa.int64(), nullable=False),
        pa.field("timestamp", pa.float64()),
        pa.field("color", pa.int16(), nullable=False),
        pa.field("vtype", pa.int16(), nullable=False),
        pa.field("orientation", pa.float32(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("mask_path", pa.string()),
    ]
)

_DEFAULTS: dict[str, Any] = {
    "order": -1,
    "pid": -1,
    "camid": -1,
    "trackid": -1,
    "timestamp": None,
    "color": -1,
    "vtype": -1,
    "orientation": math.nan,
    "domain": "real",
    "mask_path": None,
}


class ManifestError(InputError):
    """A dataset or manifest does not match what the reader expected."""


def build_manifest(rows: Iterable[Mapping[str, Any]], source: str = "<rows>") -> pa.Table:
    """Build a validated manifest table from row dicts; missing optional fields get defaults."""
    columns: dict[str, list[Any]] = {f.name: [] for f in MANIFEST_SCHEMA}
    for row in rows:
        for name, values in columns.items():
            if name in row:
                values.append(row[name])
            elif name in _DEFAULTS:
                values.append(_DEFAULTS[name])
            else:
                raise ManifestError(f"{source}: row {row!r} lacks required field '{name}'")
    arrays = [pa.array(columns[f.name], type=f.type) for f in MANIFEST_SCHEMA]
    table = pa.Table.from_arrays(arrays, schema=MANIFEST_SCHEMA)
    validate_manifest(table, source)
    return table


def validate_manifest(table: pa.Table, source: str = "<manifest>") -> pa.Table:
    """Check schema and invariants; return the table cast to the canonical schema."""
    missing = [f.name for f in MANIFEST_SCHEMA if f.name not in table.column_names]
    if missing:
        raise ManifestError(f"{source}: missing columns {missing}; expected {MANIFEST_SCHEMA.names}")
    table = table.select(MANIFEST_SCHEMA.names)
    try:
        table = table.cast(MANIFEST_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise ManifestError(f"{source}: columns do not cast to the manifest schema: {exc}") from exc
    if table.num_rows == 0:
        raise ManifestError(f"{source}: the manifest is empty")
    ids = table.column("image_id")
    if pc.count_distinct(ids).as_py() != table.num_rows:
        counts = pc.value_counts(ids)
        dup = [v["values"].as_py() for v in counts if v["counts"].as_py() > 1][:5]
        raise ManifestError(f"{source}: duplicate image_id values {dup}; image_id must be unique")
    bad_split = set(pc.unique(table.column("split")).to_pylist()) - set(SPLITS)
    if bad_split:
        raise ManifestError(f"{source}: unknown split values {sorted(bad_split)}; expected {SPLITS}")
    bad_domain = set(pc.unique(table.column("domain")).to_pylist()) - set(DOMAINS)
    if bad_domain:
        raise ManifestError(f"{source}: unknown domain values {sorted(bad_domain)}; expected {DOMAINS}")
    for split in ("query", "gallery"):
        orders = table.filter(pc.equal(table.column("split"), split)).column("order").to_numpy()
        if orders.size and (orders.min() < 0 or np.unique(orders).size != orders.size):
            raise ManifestError(
                f"{source}: '{split}' order must be unique and >= 0 (the official list position)"
            )
    return table


def split_table(table: pa.Table, split: str) -> pa.Table:
    """Rows of one split, sorted by official order (query / gallery) or image_id (train)."""
    if split not in SPLITS:
        raise ManifestError(f"unknown split '{split}'; expected one of {SPLITS}")
    part = table.filter(pc.equal(table.column("split"), split))
    key = "order" if split != "train" else "image_id"
    return part.sort_by(key)


def read_manifest_file(path: str | Path) -> pa.Table:
    """Read a manifest already in the schema from Parquet or CSV."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found")
    try:
        if path.suffix == ".parquet":
            table = pq.read_table(path)
        elif path.suffix == ".csv":
            types = {f.name: f.type for f in MANIFEST_SCHEMA}
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
        else:
            raise ManifestError(f"{path}: expected a .parquet or .csv manifest")
    except pa.ArrowInvalid as exc:
        raise ManifestError(f"{path}: cannot parse manifest: {exc}") from exc
    return validate_manifest(table, str(path))


def write_manifest(table: pa.Table, path: str | Path) -> Path:
    """Write a manifest to Parquet atomically (temporary name, then rename)."""
    import os

    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(validate_manifest(table, str(path)), tmp)
    os.replace(tmp, path)
    return path

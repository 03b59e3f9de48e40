"""Parquet feature stores (DESIGN.md, Feature store): layout, metadata, validated reads.

``<root>/features/<model>/`` (root: ``extract.store_root`` or the run directory, a path or a
URI) holds ``part-*.parquet`` (columns ``image_id``, ``split``, ``feature`` as
``fixed_size_list<float32|float16>[dim]``, and ``color_prob`` / ``type_prob`` where the model
has those heads) and ``_SUCCESS.json``, written last, which also lists the images skipped as
unreadable (``data.on_bad_image: skip``) with their reasons. A directory without
``_SUCCESS.json`` does not exist for readers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from vreid.errors import InputError

SCHEMA_VERSION = 1
SUCCESS = "_SUCCESS.json"
STORE_SETS = {"test": "features", "val": "val_features"}


class StoreError(InputError):
    """A feature store is missing, incomplete, or does not match what the caller expects."""


def store_uri(root: str, model: str, store_set: str = "test") -> str:
    """``<root>/<features|val_features>/<model>``; ``root`` is a path or a URI whose query
    (``?endpoint_override=...``) stays at the end."""
    if store_set not in STORE_SETS:
        raise ValueError(f"unknown store set '{store_set}'; expected one of {sorted(STORE_SETS)}")
    base, sep, query = str(root).partition("?")
    return f"{base.rstrip('/')}/{STORE_SETS[store_set]}/{model}{sep}{query}"


def redact(uri: str) -> str:
    """``uri`` for logs and errors: credentials in ``s3://key:secret@bucket`` replaced."""
    return re.sub(r"^([a-z0-9+.-]+://)[^/@]*@", r"\1***@", str(uri))


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI such as ``s3://bucket/run``."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def read_success(uri: str) -> dict[str, Any] | None:
    fs, path = filesystem(uri)
    info = fs.get_file_info(f"{path}/{SUCCESS}")
    if info.type != pafs.FileType.File:
        return None
    with fs.open_input_stream(f"{path}/{SUCCESS}") as fh:
        return json.loads(fh.read().decode())


def write_success(fs: pafs.FileSystem, path: str, meta: dict[str, Any]) -> None:
    with fs.open_output_stream(f"{path}/{SUCCESS}") as fh:
        fh.write(json.dumps(meta, indent=1).encode())


def to_fixed_list(x: np.ndarray, dtype: str = "float32") -> pa.FixedSizeListArray:
    """(N, D) array → ``fixed_size_list<dtype>[D]`` without a copy for contiguous float32."""
    arr = np.ascontiguousarray(x, dtype=np.float16 if dtype == "float16" else np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])


def fixed_list_to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """``fixed_size_list`` column → contiguous float32 (N, D); zero-copy for one float32 chunk."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    dim = col.type.list_size
    values = col.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, dim).astype(np.float32, copy=False)


def without_skipped(table: pa.Table, uris: list[str]) -> tuple[pa.Table, list[dict[str, str]]]:
    """``table`` without the images that any of the stores skipped at extraction
    (``data.on_bad_image: skip``), and those images with their reasons."""
    skipped = {}
    for uri in uris:
        meta = read_success(uri)
        for s in (meta or {}).get("skipped", []):
            skipped.setdefault(s["image_id"], s)
    if not skipped:
        return table, []
    ids = table.column("image_id")
    return table.filter(pc.invert(pc.is_in(ids, value_set=pa.array(list(skipped), pa.string())))), \
        list(skipped.values())


def load_features(uri: str, manifest: pa.Table, split: str, expect_sha256: str | None = None,
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """Features of one split aligned to the manifest order of that split (``split_table``).

    Returns (features float32 (N, D), extra columns such as ``color_prob`` as arrays, metadata).
    Validates: the store is complete, its schema version is known, the checkpoint digest is the
    expected one, every manifest row of the split has exactly one feature row, one dimension, no
    NaN / Inf.
    """
    from vreid.data import split_table

    name = redact(uri)
    meta = read_success(uri)
    if meta is None:
        raise StoreError(f"{name}: no complete feature store here (missing {SUCCESS})")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(f"{name}: schema version {meta.get('schema_version')} is not the known version "
                         f"{SCHEMA_VERSION}; re-extract the store")
    if expect_sha256 is not None and meta.get("checkpoint_sha256") != expect_sha256:
        raise StoreError(f"{name}: extracted from checkpoint {str(meta.get('checkpoint_sha256'))[:12]}..., "
                         f"expected {expect_sha256[:12]}...; the model changed, re-extract the store")
    rows = split_table(manifest, split)
    want = rows.column("image_id")
    skipped = {s["image_id"]: s["reason"] for s in meta.get("skipped", [])}
    hit = want.filter(pc.is_in(want, value_set=pa.array(list(skipped), pa.string())))
    if len(hit):
        raise StoreError(f"{name}: image '{hit[0].as_py()}' of split '{split}' was skipped at extraction "
                         f"({skipped[hit[0].as_py()]}); leave the skipped images out first (without_skipped)")
    fs, path = filesystem(uri)
    data = pads.dataset(path, filesystem=fs, format="parquet", exclude_invalid_files=True)
    table = data.to_table(filter=pc.field("split") == split)
    if table.num_rows != rows.num_rows:
        raise StoreError(f"{name}: {table.num_rows} rows for split '{split}', the manifest has {rows.num_rows}")
    ids = table.column("image_id")
    pos = pc.index_in(want, value_set=ids)
    if pos.null_count:
        missing = want.filter(pc.is_null(pos))[0].as_py()
        raise StoreError(f"{name}: no feature for image '{missing}' of split '{split}'")
    if pc.count_distinct(ids).as_py() != table.num_rows:
        raise StoreError(f"{name}: duplicate image_id rows in split '{split}'")
    table = table.take(pos)
    ftype = table.schema.field("feature").type
    if not pa.types.is_fixed_size_list(ftype):
        raise StoreError(f"{name}: column 'feature' is {ftype}, expected fixed_size_list<float>[dim]")
    if ftype.list_size != meta.get("dim"):
        raise StoreError(f"{name}: feature dim {ftype.list_size} differs from the recorded dim {meta.get('dim')}")
    feats = fixed_list_to_numpy(table.column("feature"))
    if not np.isfinite(feats).all():
        bad = int(np.flatnonzero(~np.isfinite(feats).all(1))[0])
        raise StoreError(f"{name}: feature of '{want[bad].as_py()}' has NaN or Inf")
    from vreid.features.tta import PROB_COLUMNS

    extra = {col: _prob_matrix(name, col, table.column(col), want) for col in PROB_COLUMNS if col in table.column_names}
    return feats, extra, meta


def _prob_matrix(store: str, name: str, col: pa.ChunkedArray, image_ids: pa.Array) -> np.ndarray:
    """A ``*_prob`` list column as an (N, classes) float32 matrix; every row must hold one value
    per class (rows aligned with ``image_ids``)."""
    col = col.combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type)):
        raise StoreError(f"{store}: column '{name}' is {col.type}, expected list<float> (one probability per class)")
    lengths = pc.fill_null(pc.list_value_length(col), -1).to_numpy(zero_copy_only=False)
    odd = np.flatnonzero((lengths != lengths[0]) | (lengths < 0)) if len(lengths) else []
    if len(odd):
        i = int(odd[0])
        found = f"image '{image_ids[i].as_py()}' has " + ("no value (null)" if lengths[i] < 0 else f"{lengths[i]} values")
        if i > 0:
            found += f", image '{image_ids[0].as_py()}' {lengths[0]}"
        raise StoreError(f"{store}: column '{name}' is ragged: {found}; expected one probability per class on "
                         "every row")
    values = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return values.reshape(len(col), int(lengths[0]) if len(lengths) else 0)

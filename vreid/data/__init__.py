"""Datasets: the manifest contract, one reader per format, splits, the synthetic city."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from vreid.data.manifest import (
    MANIFEST_SCHEMA,
    SPLITS,
    ManifestError,
    build_manifest,
    read_manifest_file,
    split_table,
    validate_manifest,
    write_manifest,
)
from vreid.data.readers.common import ImageChecker
from vreid.data.splits import validation_split

FORMATS = ("aic", "veri776", "vehicleid", "vehiclex", "veriwild", "synth", "manifest")
META_ROOT, META_SKIPPED = b"vreid.root", b"vreid.skipped"


def load_manifest(root: str | Path, format: str, on_bad_image: str = "fail", verify_images: bool = False,
                  vehicleid_test_size: int = 800, seed: int = 0, veriwild_test_set: str = "small") -> pa.Table:
    """Read a dataset into the manifest table (DESIGN.md, Contracts).

    ``format``: aic | veri776 | vehicleid | vehiclex | veriwild | synth | manifest. Listed images that are
    absent (or, with ``verify_images``, do not decode) fail naming the file, or with
    ``on_bad_image="skip"`` are left out and recorded (see ``skipped_images``). The dataset root
    is kept in the table's metadata so images can be opened from ``image_id`` later.
    """
    if format not in FORMATS:
        raise ManifestError(f"unknown dataset format '{format}'; expected one of {FORMATS}")
    root = Path(root)
    if format == "manifest":
        table = read_manifest_file(root)
        base = root.parent
        skipped: list[dict[str, str]] = []
    else:
        if not root.is_dir():
            raise ManifestError(f"{root}: dataset root not found")
        checker = ImageChecker(root, on_bad_image, verify_images)
        if format == "aic":
            from vreid.data.readers.aic import aic_rows as read
        elif format == "veri776":
            from vreid.data.readers.veri776 import veri776_rows as read
        elif format == "vehiclex":
            from vreid.data.readers.vehiclex import vehiclex_rows as read
        elif format == "synth":
            from vreid.data.readers.synth import synth_rows as read
        elif format == "veriwild":
            from vreid.data.readers.veriwild import veriwild_rows

            def read(r, c):
                return veriwild_rows(r, c, test_set=veriwild_test_set)
        else:
            from vreid.data.readers.vehicleid import vehicleid_rows

            def read(r, c):
                return vehicleid_rows(r, c, test_size=vehicleid_test_size, seed=seed)

        table = build_manifest(read(root, checker), source=str(root))
        base, skipped = root, checker.skipped
    meta = dict(table.schema.metadata or {})
    meta[META_ROOT] = str(base.resolve()).encode()
    meta[META_SKIPPED] = json.dumps(skipped).encode()
    return table.replace_schema_metadata(meta)


def dataset_root(table: pa.Table) -> Path:
    """The folder that ``image_id`` and ``mask_path`` are relative to."""
    meta = table.schema.metadata or {}
    if META_ROOT not in meta:
        raise ManifestError("manifest carries no dataset root; load it with vreid.data.load_manifest")
    return Path(meta[META_ROOT].decode())


def skipped_images(table: pa.Table) -> list[dict[str, str]]:
    """Images left out under ``on_bad_image="skip"``, each with its reason."""
    return json.loads((table.schema.metadata or {}).get(META_SKIPPED, b"[]"))


def require_test_splits(table: pa.Table, source: str) -> None:
    """The dataset a run evaluates on needs query and gallery images (extra training sets do not)."""
    skipped = skipped_images(table)
    for split in ("query", "gallery"):
        if split_table(table, split).num_rows == 0:
            hint = f" ({len(skipped)} listed images were left out as unreadable)" if skipped else ""
            raise ManifestError(f"{source}: the {split} split is empty{hint}; the run ranks the query images "
                                "against the gallery images")


def load_dataset(data_cfg) -> pa.Table:
    """Manifest for a ``DataConfig`` plus its ``extra_train`` sets; generates synthetic cities
    first when they are absent."""
    from vreid.data.domains import add_training_data
    from vreid.data.synth import generate

    if data_cfg.format == "synth" and data_cfg.synth_preset is not None:
        generate(data_cfg.root, data_cfg.synth_preset, seed=data_cfg.seed, **data_cfg.synth_options)
    table = load_manifest(data_cfg.root, data_cfg.format, on_bad_image=data_cfg.on_bad_image,
                          verify_images=data_cfg.verify_images,
                          vehicleid_test_size=data_cfg.vehicleid_test_size, seed=data_cfg.seed,
                          veriwild_test_set=data_cfg.veriwild_test_set)
    require_test_splits(table, data_cfg.root)
    for extra in data_cfg.extra_train:
        if extra.format == "synth" and extra.synth_preset is not None:
            generate(extra.root, extra.synth_preset, seed=extra.seed)
        other = load_manifest(extra.root, extra.format, on_bad_image=data_cfg.on_bad_image,
                              verify_images=data_cfg.verify_images, seed=extra.seed)
        table = add_training_data(table, other, str(dataset_root(other)), extra.domain)
    return table


__all__ = [
    "FORMATS", "MANIFEST_SCHEMA", "SPLITS", "ManifestError", "build_manifest", "dataset_root",
    "load_dataset", "load_manifest", "read_manifest_file", "require_test_splits", "skipped_images", "split_table",
    "validate_manifest", "validation_split", "write_manifest",
]

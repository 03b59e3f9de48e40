"""Training data from several datasets (multi-domain learning, 001; two-stage learning, 002)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from vreid.data.manifest import split_table, validate_manifest


def add_training_data(target: pa.Table, extra: pa.Table, extra_root: str, domain: str) -> pa.Table:
    """The target manifest plus ``extra``'s training rows, tagged with ``domain``.

    Identities and cameras of the extra set are shifted past the target's so they never collide;
    its image and mask paths become absolute (they live under another root).
    """
    rows = split_table(extra, "train")
    pid_shift = max(0, pc.max(target.column("pid")).as_py() + 1)
    cam_shift = max(0, pc.max(target.column("camid")).as_py() + 1)

    def shifted(name: str, shift: int) -> pa.Array:
        col = rows.column(name)
        return pc.if_else(pc.less(col, 0), col, pc.add(col, pa.scalar(shift, col.type)))

    def absolute(name: str) -> pa.Array:
        col = rows.column(name)
        return pc.if_else(pc.is_null(col), col, pc.binary_join_element_wise(f"{extra_root}/", col, ""))

    for name, arr in (("pid", shifted("pid", pid_shift)), ("camid", shifted("camid", cam_shift)),
                      ("image_id", absolute("image_id")), ("mask_path", absolute("mask_path")),
                      ("domain", pa.array([domain] * rows.num_rows, pa.string()))):
        rows = rows.set_column(rows.schema.get_field_index(name), name, arr)
    merged = pa.concat_tables([target, rows.cast(target.schema)], promote_options="none")
    return validate_manifest(merged, f"training data + {extra_root}").replace_schema_metadata(target.schema.metadata)


def add_crop_copy(training: pa.Table, crop: pa.Table, crop_root: str) -> pa.Table:
    """A training manifest plus the re-cropped copy (003 §3.1) of its ``train`` rows, domain
    ``crop``: the same identities and cameras (a crop shows the same vehicle), image and mask paths
    made absolute under ``crop_root``. Images held out for validation get no crop in training.

    ``crop`` is the recrop stage's manifest: the same ``image_id`` as its source image.
    """
    train_ids = split_table(training, "train").column("image_id")
    rows = crop.filter(pc.is_in(crop.column("image_id"), value_set=train_ids)).select(training.column_names)
    for name in ("image_id", "mask_path"):
        col = rows.column(name)
        rows = rows.set_column(rows.schema.get_field_index(name), name, pc.if_else(
            pc.is_null(col), col, pc.binary_join_element_wise(f"{crop_root}/", col, "")))
    rows = rows.set_column(rows.schema.get_field_index("domain"), "domain", pa.array(["crop"] * rows.num_rows))
    merged = pa.concat_tables([training, rows.cast(training.schema)], promote_options="none")
    return validate_manifest(merged, f"training data + crop copy {crop_root}").replace_schema_metadata(
        training.schema.metadata)

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

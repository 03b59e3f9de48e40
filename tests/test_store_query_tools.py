"""A feature store read with duckdb and polars exactly as notes/issue-17.md shows (features as
arrays, filtered by split), agreeing with the project's own validated reader."""

from __future__ import annotations

import numpy as np

from vreid.data import split_table
from vreid.features.store import load_features, store_uri


def test_duckdb_and_polars_read_a_store_as_the_notes_show(tiny_stores, tiny_manifest):
    import duckdb
    import polars as pl

    cfg, _ = tiny_stores
    store = store_uri(cfg.store_root, "attr")
    want, extra, _ = load_features(store, tiny_manifest, "query")
    ids = split_table(tiny_manifest, "query").column("image_id").to_pylist()

    # --- as in notes/issue-17.md ---
    parts = f"{store}/*.parquet"
    counts = duckdb.sql(f"SELECT split, count(*) AS n, max(len(feature)) AS dim FROM '{parts}' "
                        "GROUP BY split ORDER BY split").fetchall()
    q = duckdb.sql(f"SELECT image_id, feature, color_prob FROM '{parts}' WHERE split = 'query'").fetchnumpy()
    X_duck = np.stack(q["feature"])                                   # (N, dim) float32
    df = pl.scan_parquet(parts).filter(pl.col("split") == "query").collect()
    X_polars = df["feature"].to_numpy()                               # Array column -> (N, dim)
    # ---

    dim = want.shape[1]
    n = {s: split_table(tiny_manifest, s).num_rows for s in ("query", "gallery")}
    assert counts == [("gallery", n["gallery"], dim), ("query", n["query"], dim)]
    assert df.schema["feature"] == pl.Array(pl.Float32, dim)
    assert X_polars.shape == (n["query"], dim) and X_polars.dtype == np.float32
    for got_ids, got in ((list(q["image_id"]), X_duck), (df["image_id"].to_list(), X_polars)):
        order = [got_ids.index(i) for i in ids]
        np.testing.assert_array_equal(got[order], want)
    color = np.stack(q["color_prob"])[[list(q["image_id"]).index(i) for i in ids]]
    np.testing.assert_allclose(color, extra["color_prob"], rtol=0, atol=0)

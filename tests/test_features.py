"""Ray Data extraction into Parquet feature stores: equality with a plain loop, TTA, faults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from vreid.config import load_config
from vreid.data import split_table
from vreid.data.dataset import ReIDImageDataset
from vreid.data.transforms import build_test_transform
from vreid.features.extract import UnreadableImages, extract_features
from vreid.features.store import SUCCESS, StoreError, load_features, store_uri
from vreid.features.tta import make_view, tta_outputs
from vreid.models import build_model
from vreid.models.trained import read_trained_meta


@pytest.fixture(scope="module")
def run(tiny_stores):
    cfg, models = tiny_stores
    return cfg, store_uri(cfg.run_dir, "attr"), models["attr"]


def _plain_forward(model, manifest, split, views, rows_of=None):
    """Features of ``split`` of ``rows_of`` (default: the manifest) by a plain forward pass."""
    from vreid.data import dataset_root

    rows = split_table(manifest if rows_of is None else rows_of, split)
    ds = ReIDImageDataset(rows, dataset_root(manifest), build_test_transform((48, 48)), labels={})
    loader = torch.utils.data.DataLoader(ds, batch_size=17)
    feats, colors = [], []
    for b in loader:
        out = tta_outputs(model, b["image"], views, 0.9)
        feats.append(out["feature"])
        colors.append(out["color_prob"])
    return torch.cat(feats).numpy(), torch.cat(colors).numpy()


def test_two_actors_equal_plain_forward(run, tiny_manifest):
    cfg, uri, model = run
    for split in ("query", "gallery"):
        feats, extra, meta = load_features(uri, tiny_manifest, split)
        ref, ref_color = _plain_forward(model, tiny_manifest, split, cfg.extract.tta)
        assert feats.dtype == np.float32 and feats.flags.c_contiguous
        np.testing.assert_allclose(feats, ref, atol=1e-5)
        np.testing.assert_allclose(extra["color_prob"], ref_color, atol=1e-5)
        assert extra["type_prob"].shape == (feats.shape[0], 7)
    assert meta["dim"] == feats.shape[1] and meta["task"] == "reid" and meta["tta"] == cfg.extract.tta
    assert meta["checkpoint_sha256"] == read_trained_meta(Path(cfg.run_dir) / "models" / "attr")["sha256"]


def test_tta_is_mean_of_views_then_normalised():
    torch.manual_seed(0)
    model = build_model("test_resnet", num_classes=3, input_size=(32, 32)).eval()
    x = torch.rand(4, 3, 32, 32)
    views = ["original", "flip", "crop", "crop_flip"]
    with torch.no_grad():
        mean = sum(model(make_view(x, v, 0.9))["feature"] for v in views) / 4
    got = tta_outputs(model, x, views)["feature"]
    torch.testing.assert_close(got, torch.nn.functional.normalize(mean, dim=1), atol=1e-6, rtol=0)
    assert torch.equal(make_view(x, "flip", 0.9), x.flip(-1))
    with pytest.raises(ValueError, match="unknown TTA view"):
        make_view(x, "rotate", 0.9)


def test_store_readable_with_plain_pyarrow_and_pandas(run, tiny_manifest):
    _, uri, _ = run
    files = sorted(Path(uri).glob("*.parquet"))
    assert files and (Path(uri) / SUCCESS).is_file()
    table = pq.read_table(uri)
    n = sum(split_table(tiny_manifest, s).num_rows for s in ("query", "gallery"))
    assert table.num_rows == n
    assert pa.types.is_fixed_size_list(table.schema.field("feature").type)
    df = pd.read_parquet(uri)
    assert set(df["split"]) == {"query", "gallery"} and df["image_id"].is_unique
    assert np.allclose(np.linalg.norm(np.stack(df["feature"].to_numpy()), axis=1), 1, atol=1e-5)


def test_rerun_skips_complete_store(run, tiny_manifest):
    cfg, uri, _ = run
    before = (Path(uri) / SUCCESS).read_text()
    extract_features(cfg, tiny_manifest, ["test"])
    assert (Path(uri) / SUCCESS).read_text() == before


def test_interrupted_extraction_rerun_one_row_per_image(run, tiny_manifest, tmp_path):
    cfg, uri, _ = run
    import shutil

    other = load_config("configs/tiny.yaml", [f"run_dir={tmp_path / 'run2'}", f"data.root={cfg.data.root}"])
    other.models = cfg.models[:1]
    shutil.copytree(Path(cfg.run_dir) / "models", Path(other.run_dir) / "models")
    dst = Path(store_uri(other.run_dir, "attr"))
    # what an interrupted run leaves: parts without _SUCCESS in the store and in its temp dir
    for d in (dst, Path(f"{dst}.tmp")):
        d.mkdir(parents=True)
        shutil.copy(sorted(Path(uri).glob("*.parquet"))[0], d / "part-stale.parquet")
    with pytest.raises(StoreError, match="no complete feature store"):
        load_features(str(dst), tiny_manifest, "query")
    extract_features(other, tiny_manifest, ["test"])
    df = pd.read_parquet(dst)
    assert df["image_id"].is_unique
    assert len(df) == sum(split_table(tiny_manifest, s).num_rows for s in ("query", "gallery"))
    assert not Path(f"{dst}.tmp").exists()


def _copy_store(uri, tmp_path, **meta_update):
    import shutil

    dst = tmp_path / "store"
    shutil.copytree(uri, dst)
    meta = json.loads((dst / SUCCESS).read_text())
    meta.update(meta_update)
    (dst / SUCCESS).write_text(json.dumps(meta))
    return str(dst)


def test_refusals(run, tiny_manifest, tmp_path):
    _, uri, _ = run
    with pytest.raises(StoreError, match="schema version 99"):
        load_features(_copy_store(uri, tmp_path / "a", schema_version=99), tiny_manifest, "query")
    with pytest.raises(StoreError, match="the model changed, re-extract"):
        load_features(uri, tiny_manifest, "query", expect_sha256="0" * 64)
    fewer = tiny_manifest.slice(0, tiny_manifest.num_rows - 1)
    with pytest.raises(StoreError, match="rows for split 'gallery'"):
        load_features(uri, fewer if fewer.num_rows else tiny_manifest, "gallery")


def test_nan_feature_refused(run, tiny_manifest, tmp_path):
    _, uri, _ = run
    dst = Path(_copy_store(uri, tmp_path))
    part = sorted(dst.glob("*.parquet"))[0]
    t = pq.read_table(part)
    feats = np.stack(t.column("feature").to_numpy(zero_copy_only=False)).astype(np.float32)
    feats[0, 0] = np.nan
    from vreid.features.store import to_fixed_list

    t = t.set_column(t.schema.get_field_index("feature"), "feature", to_fixed_list(feats))
    pq.write_table(t, part)
    split = t.column("split")[0].as_py()
    with pytest.raises(StoreError, match="has NaN or Inf"):
        load_features(str(dst), tiny_manifest, split)


def test_checkpoint_that_does_not_match_config(run, tmp_path):
    from vreid.models.trained import load_trained_model

    cfg, _, _ = run
    import shutil

    d = tmp_path / "m"
    shutil.copytree(Path(cfg.run_dir) / "models" / "attr", d)
    meta = json.loads((d / "model.json").read_text())
    meta["build_args"]["backbone"] = "resnet18"
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="weights do not match the model"):
        load_trained_model(d)
    (d / "model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="sha256 does not match"):
        load_trained_model(d)


@pytest.fixture(scope="module")
def s3_root():
    """A local S3 endpoint (moto) with a bucket; the store root URI carries the endpoint and the
    test credentials so that Ray's workers reach it as a cluster's nodes would."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    pafs.S3FileSystem(access_key="vreid-key", secret_key="vreid-secret", endpoint_override=f"{host}:{port}",
                      scheme="http", region="us-east-1", allow_bucket_creation=True).create_dir("stores")
    yield f"s3://vreid-key:vreid-secret@stores/city?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    server.stop()


def test_stores_on_object_storage(run, tiny_manifest, s3_root):
    """extract.store_root as an s3:// URI: one pass per model writes its test and validation
    stores there, the post-processing reads them there, a rerun skips complete stores and redoes
    only a store without _SUCCESS.json (refused meanwhile), no secret in errors."""
    import pyarrow.fs as pafs

    from vreid.features.store import filesystem, read_success
    from vreid.postprocess.actor import load_inputs
    from vreid.train.launcher import training_manifest

    cfg, _, model = run
    s3cfg = cfg.model_copy(update={"extract": cfg.extract.model_copy(update={"store_root": s3_root})})
    uris = extract_features(s3cfg, tiny_manifest, ["test", "val"])
    assert uris["attr"] == {"test": store_uri(s3_root, "attr"), "val": store_uri(s3_root, "attr", "val")}
    fs, path = filesystem(uris["attr"]["test"])
    assert path == "stores/city/features/attr" and fs.get_file_info(f"{path}/{SUCCESS}").is_file
    local, remote = load_inputs(cfg, tiny_manifest), load_inputs(s3cfg, tiny_manifest)
    for name in ("attr", "cam"):
        for a, b in zip(local.features[name], remote.features[name]):
            np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(local.extras["attr"]["color_prob"][1], remote.extras["attr"]["color_prob"][1], atol=1e-6)
    val_table = training_manifest(cfg, tiny_manifest)
    val = load_inputs(s3cfg, tiny_manifest, "val")
    for i, split in enumerate(("query", "gallery")):
        assert split_table(val_table, split).num_rows > 0
        np.testing.assert_allclose(val.features["attr"][i], _plain_forward(model, tiny_manifest, split, cfg.extract.tta, val_table)[0],
                                   atol=1e-5)

    before = {s: read_success(u) for s, u in uris["attr"].items()}
    assert extract_features(s3cfg, tiny_manifest, ["test", "val"], ["attr"]) == {"attr": uris["attr"]}
    assert {s: read_success(u) for s, u in uris["attr"].items()} == before  # complete: skipped

    fs.delete_file(f"{path}/{SUCCESS}")  # an interrupted write: parts without the marker
    with pytest.raises(StoreError, match="no complete feature store") as err:
        load_features(uris["attr"]["test"], tiny_manifest, "query")
    assert "vreid-secret" not in str(err.value) and "s3://***@stores/city/features/attr" in str(err.value)
    extract_features(s3cfg, tiny_manifest, ["test", "val"], ["attr"])
    assert read_success(uris["attr"]["test"])["created"] > before["test"]["created"]
    assert read_success(uris["attr"]["val"]) == before["val"]  # the complete store is left as it was
    table = pa.concat_tables([pq.read_table(f"{path}/{f.base_name}", filesystem=fs)
                              for f in fs.get_file_info(pafs.FileSelector(path)) if f.base_name.endswith(".parquet")])
    assert table.column_names[:2] == ["image_id", "split"] and "store" not in table.column_names
    assert table.num_rows == len(pd.unique(table.column("image_id").to_numpy(zero_copy_only=False)))
    assert table.num_rows == sum(split_table(tiny_manifest, s).num_rows for s in ("query", "gallery"))


def test_unreadable_image_fails_or_is_skipped_and_recorded(run, tiny_city, tiny_manifest, tmp_path, ray_session):
    """An image that breaks after the manifest was read: ``fail`` names the file; ``skip``
    leaves it out of the store, records it with its reason in _SUCCESS.json, the reader refuses
    it by name and the post-processing inputs leave it out of the gallery."""
    import shutil

    from vreid.data import load_manifest
    from vreid.features.store import read_success
    from vreid.postprocess.actor import load_inputs

    cfg, uri, _ = run
    root = tmp_path / "city"
    shutil.copytree(tiny_city, root)
    bad = split_table(tiny_manifest, "gallery").column("image_id")[3].as_py()
    (root / bad).write_bytes(b"not a jpeg")
    manifest = load_manifest(root, "synth", on_bad_image="skip")  # existence only: it passes here
    assert bad in manifest.column("image_id").to_pylist()

    def config(policy):
        c = load_config("configs/tiny.yaml", [f"run_dir={tmp_path / policy}", f"data.root={root}",
                                              f"data.on_bad_image={policy}"])
        c.models = cfg.models[:1]
        shutil.copytree(Path(cfg.run_dir) / "models" / "attr", Path(c.run_dir) / "models" / "attr")
        return c

    with pytest.raises(UnreadableImages, match=f"1 image.*{root / bad}: not an image file"):
        extract_features(config("fail"), manifest, ["test"])
    assert read_success(store_uri(tmp_path / "fail", "attr")) is None
    assert not list((tmp_path / "fail").glob("features/*"))  # nothing half-written left behind
    import time

    deadline = time.monotonic() + 300  # a failure guard: Ray Data releases its actors once the pass ends
    while ray_session.available_resources().get("CPU", 0) < ray_session.cluster_resources()["CPU"] \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray_session.available_resources().get("CPU", 0) == ray_session.cluster_resources()["CPU"]

    skip = config("skip")
    got = extract_features(skip, manifest, ["test"])["attr"]["test"]
    meta = read_success(got)
    assert [s["image_id"] for s in meta["skipped"]] == [bad] and meta["skipped"][0]["reason"] == "not an image file"
    assert meta["rows"] == sum(split_table(manifest, s).num_rows for s in ("query", "gallery")) - 1
    with pytest.raises(StoreError, match=f"'{bad}' of split 'gallery' was skipped at extraction"):
        load_features(got, manifest, "gallery")
    inputs = load_inputs(skip, manifest)
    assert bad not in inputs.gallery.image_ids and len(inputs.gallery.image_ids) == inputs.features["attr"][1].shape[0]
    ref, _, _ = load_features(uri, tiny_manifest, "gallery")  # the same model on the intact images
    keep = split_table(tiny_manifest, "gallery").column("image_id").to_numpy(zero_copy_only=False) != bad
    np.testing.assert_allclose(inputs.features["attr"][1], ref[keep], atol=1e-5)
    assert extract_features(skip, manifest, ["test"])["attr"]["test"] == got and read_success(got) == meta  # complete
    skip.data.on_bad_image = "fail"  # a store that skipped images is not complete for the fail policy
    with pytest.raises(UnreadableImages):
        extract_features(skip, manifest, ["test"])


def test_float16_store(run, tiny_manifest, tmp_path):
    """extract.dtype float16 halves the store; the reader returns float32 close to the float32
    store; a float32 store is not taken for a float16 one."""
    import shutil

    cfg, uri, _ = run
    half = load_config("configs/tiny.yaml", [f"run_dir={tmp_path / 'run'}", f"data.root={cfg.data.root}",
                                             "extract.dtype=float16"])
    half.models = cfg.models[:1]
    shutil.copytree(Path(cfg.run_dir) / "models", Path(half.run_dir) / "models")
    shutil.copytree(uri, store_uri(half.run_dir, "attr"))  # a complete float32 store of the same model
    got = extract_features(half, tiny_manifest, ["test"])["attr"]["test"]
    meta = json.loads((Path(got) / SUCCESS).read_text())
    assert meta["dtype"] == "float16"
    assert pq.read_schema(sorted(Path(got).glob("*.parquet"))[0]).field("feature").type.value_type == pa.float16()
    for split in ("query", "gallery"):
        f16, _, _ = load_features(got, tiny_manifest, split)
        f32, _, _ = load_features(uri, tiny_manifest, split)
        assert f16.dtype == np.float32 and f16.flags.c_contiguous
        np.testing.assert_allclose(f16, f32, atol=1e-3)


def test_ragged_prob_column_refused(run, tiny_manifest, tmp_path):
    """Rows of a *_prob column with different lengths (a total that still divides by the row count
    used to be reshaped silently into wrong rows)."""
    _, uri, _ = run
    dst = Path(_copy_store(uri, tmp_path))
    part = sorted(dst.glob("*.parquet"))[0]
    t = pq.read_table(part)
    probs, splits, ids = (t.column(c).to_pylist() for c in ("color_prob", "split", "image_id"))
    a, b = [i for i, s in enumerate(splits) if s == splits[0]][:2]  # two rows of one split
    probs[a], probs[b] = probs[a][:-1], probs[b] + [0.0]  # 9 and 11 colours: 20 values, as two rows of 10
    t = t.set_column(t.schema.get_field_index("color_prob"), "color_prob", pa.array(probs, pa.list_(pa.float32())))
    pq.write_table(t, part)
    with pytest.raises(StoreError, match=rf"{dst}: column 'color_prob' is ragged: image '({ids[a]}|{ids[b]})' has "
                                         r"(9|11) values, image '[^']+' (9|10)\b"):
        load_features(str(dst), tiny_manifest, splits[0])



def test_prob_widths_of_query_and_gallery_must_agree(run, tiny_manifest, tmp_path):
    """Each split's rows agree, but the gallery has one class more than the queries."""
    import shutil

    from vreid.postprocess.actor import load_inputs

    cfg, _, _ = run
    c = cfg.model_copy(update={"run_dir": str(tmp_path / "run")})
    shutil.copytree(cfg.run_dir, c.run_dir)
    uri = store_uri(c.run_dir, "attr")
    for part in Path(uri).glob("*.parquet"):
        t = pq.read_table(part)
        probs = [p + [0.0] if s == "gallery" else p
                 for p, s in zip(t.column("color_prob").to_pylist(), t.column("split").to_pylist())]
        pq.write_table(t.set_column(t.schema.get_field_index("color_prob"), "color_prob",
                                    pa.array(probs, pa.list_(pa.float32()))), part)
    with pytest.raises(StoreError, match=rf"{uri}: column 'color_prob' has 10 values per query image and 11 per "
                                         "gallery image"):
        load_inputs(c, tiny_manifest)


def _broken_city(tiny_city, tmp_path, images):
    import shutil

    root = tmp_path / "city"
    shutil.copytree(tiny_city, root)
    for image_id in images:
        (root / image_id).write_bytes(b"not a jpeg")
    return root


def _run_copy(cfg, tmp_path, name, root, *overrides):
    import shutil

    c = load_config("configs/tiny.yaml", [f"run_dir={tmp_path / name}", f"data.root={root}", *overrides])
    c.models = cfg.models[:1]
    shutil.copytree(Path(cfg.run_dir) / "models" / "attr", Path(c.run_dir) / "models" / "attr")
    return c


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_every_image_unreadable(run, tiny_city, tiny_manifest, tmp_path, policy):
    """A pass in which no image decodes (no part written) raises UnreadableImages under either policy
    (skip has nothing to keep), not a KeyError, and leaves no store behind."""
    from vreid.data import load_manifest

    cfg, _, _ = run
    test_ids = pa.concat_tables([split_table(tiny_manifest, s) for s in ("query", "gallery")]).column("image_id")
    root = _broken_city(tiny_city, tmp_path, test_ids.to_pylist())
    c = _run_copy(cfg, tmp_path, policy, root, f"data.on_bad_image={policy}")
    manifest = load_manifest(root, "synth")
    why = "data.on_bad_image: fail" if policy == "fail" else r"no image of .*features/attr decodes, nothing to store"
    with pytest.raises(UnreadableImages, match=rf"{len(test_ids)} image\(s\) cannot be decoded \({why}"):
        extract_features(c, manifest, ["test"])
    assert not list((Path(c.run_dir) / "features").glob("*")), "nothing left behind"


def test_disk_full_during_store_write(run, tiny_manifest, tmp_path):
    """The store root on a 64 KiB tmpfs: the Parquet write fails with ENOSPC; the error names the
    store and its path; no _SUCCESS.json, no partial files."""
    import subprocess

    cfg, _, _ = run
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mount.stderr.decode().strip()}")
    try:
        c = _run_copy(cfg, tmp_path, "run", cfg.data.root, f"extract.store_root={disk}")
        with pytest.raises(StoreError, match=rf"{disk}/features/attr: writing the store failed under "
                                             rf"{disk}/features/attr.tmp: \[Errno 28\] No space left on device"):
            extract_features(c, tiny_manifest, ["test"])
        assert [p for p in disk.rglob("*") if p.is_file()] == [], "no partial files, no _SUCCESS.json"
    finally:
        subprocess.run(["umount", str(disk)], check=True)

"""VERI-Wild reader (lists, vehicle_info.txt, test set by config, absent images) and VehicleID's
protocol: the mean and spread over seeded gallery draws."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vreid.config import DataConfig, PostprocessConfig
from vreid.data import ManifestError, load_dataset, load_manifest, skipped_images, split_table
from vreid.eval import evaluate
from vreid.eval.gallery_draws import gallery_draws
from vreid.postprocess.actor import _side
from vreid.postprocess.pipeline import PostprocessInputs

INFO = [  # vid/image;camera;time;model;type;color (the dataset's header order)
    ("00001/000001", "018", "2018-03-11 11:22:46", "Haval H6", "SUV", "white"),
    ("00001/000002", "021", "2018-03-11 11:40:02", "Haval H6", "SUV", "white"),
    ("00002/000003", "018", "2018-03-12 08:00:00", "Audi A6L", "sedan", "black"),
    ("00002/000004", "007", "2018-03-12 08:05:00", "Audi A6L", "sedan", "black"),
    ("00003/000005", "007", "2018-03-13 09:00:00", "BYD F3", "sedan", "red"),
    ("00003/000006", "018", "2018-03-13 09:10:00", "BYD F3", "sedan", "red"),
    ("00004/000007", "003", "2018-03-14 10:00:00", "Jetta", "sedan", "grey"),
]


def _img(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(path)


def make_veriwild(root: Path) -> Path:
    split = root / "train_test_split"
    split.mkdir(parents=True)
    (split / "vehicle_info.txt").write_text(
        "id/image;Camera ID;Time;Model;Type;Color\n" + "".join(";".join(r) + "\n" for r in INFO))
    for i, row in enumerate(INFO):
        _img(root / "images" / f"{row[0]}.jpg", i)
    (split / "train_list.txt").write_text("00001/000001\n00001/000002\n")
    (split / "test_3000_query.txt").write_text("00002/000003\n")
    (split / "test_3000.txt").write_text("00002/000004\n00003/000005\n")
    (split / "test_5000_query.txt").write_text("00002/000003\n00003/000005\n")
    (split / "test_5000.txt").write_text("00002/000004\n00003/000006\n00004/000007\n")
    return root


def test_veriwild_lists_vehicle_info_and_test_set_by_config(tmp_path):
    root = make_veriwild(tmp_path / "VERI-Wild")
    small = load_manifest(root, "veriwild")
    assert [split_table(small, s).num_rows for s in ("train", "query", "gallery")] == [2, 1, 2]
    q = split_table(small, "query").to_pylist()[0]
    assert q["image_id"] == "images/00002/000003.jpg" and q["pid"] == 2 and q["camid"] == 18
    assert q["timestamp"] == datetime(2018, 3, 12, 8, 0, tzinfo=timezone.utc).timestamp()
    colors = sorted({r[5] for r in INFO})
    types = sorted({r[4] for r in INFO})
    assert (q["color"], q["vtype"]) == (colors.index("black"), types.index("sedan"))
    g = split_table(small, "gallery").to_pydict()
    assert g["order"] == [0, 1] and g["camid"] == [7, 7]

    cfg = DataConfig(format="veriwild", root=str(root), synth_preset=None, veriwild_test_set="medium")
    medium = load_dataset(cfg)
    assert [split_table(medium, s).num_rows for s in ("train", "query", "gallery")] == [2, 2, 3]
    assert split_table(medium, "gallery").column("pid").to_pylist() == [2, 3, 4]
    with pytest.raises(ManifestError, match=r"test_10000_query\.txt: list file not found \(test set .large. = test_10000\)"):
        load_manifest(root, "veriwild", veriwild_test_set="large")


def test_veriwild_bad_lists_name_the_file_and_line(tmp_path):
    root = make_veriwild(tmp_path / "VERI-Wild")
    (root / "images" / "00003" / "000005.jpg").unlink()
    with pytest.raises(ManifestError, match=r"000005\.jpg: listed in test_3000\.txt line 2 but absent"):
        load_manifest(root, "veriwild")
    skipped = load_manifest(root, "veriwild", on_bad_image="skip")
    assert [s["image_id"] for s in skipped_images(skipped)] == ["images/00003/000005.jpg"]
    assert split_table(skipped, "gallery").num_rows == 1

    split = root / "train_test_split"
    (split / "train_list.txt").write_text("00001/000001\n00009/000099\n")
    with pytest.raises(ManifestError, match=r"train_list\.txt:2: image '00009/000099' is not in .*vehicle_info\.txt"):
        load_manifest(root, "veriwild", on_bad_image="skip")
    (split / "vehicle_info.txt").write_text("id/image;Camera ID;Time;Model;Type;Color\n00001/000001;018;noon\n")
    with pytest.raises(ManifestError, match=r"vehicle_info\.txt:2: expected 6 fields"):
        load_manifest(root, "veriwild")


def make_vehicleid(root: Path, ids: int = 8, per_id: int = 4) -> Path:
    (root / "train_test_split").mkdir(parents=True)
    (root / "train_test_split" / "train_list.txt").write_text("t1 1\nt2 1\n")
    test = [(f"v{p}_{j}", p) for p in range(10, 10 + ids) for j in range(per_id)]
    (root / "train_test_split" / "test_list_800.txt").write_text("".join(f"{n} {p}\n" for n, p in test))
    for i, n in enumerate(["t1", "t2"] + [n for n, _ in test]):
        _img(root / "image" / f"{n}.jpg", i)
    return root


def test_vehicleid_mean_and_spread_over_seeded_gallery_draws(tmp_path):
    root = make_vehicleid(tmp_path / "VehicleID")
    n_draws = DataConfig().vehicleid_draws
    assert n_draws == 10  # the protocol's default
    base = load_manifest(root, "vehicleid", seed=0)
    q, g = split_table(base, "query"), split_table(base, "gallery")
    rng = np.random.default_rng(0)
    centre = {p: rng.normal(size=8) for p in range(10, 18)}
    feature = {i: centre[p] + 1.2 * rng.normal(size=8) for t in (q, g)
               for i, p in zip(t.column("image_id").to_pylist(), t.column("pid").to_pylist())}

    def feats(table):
        return np.stack([feature[i] for i in table.column("image_id").to_pylist()]).astype(np.float32)

    inputs = PostprocessInputs(query=_side(q), gallery=_side(g), features={"m": (feats(q), feats(g))},
                               extras={"m": {}}, tasks={"m": "reid"}, weights={"m": 1.0})
    draws = [load_manifest(root, "vehicleid", seed=s) for s in range(n_draws)]
    sides = [(_side(split_table(d, "query")), _side(split_table(d, "gallery"))) for d in draws]
    result = gallery_draws(inputs, sides, PostprocessConfig())

    # reference: each draw scored on its own, squared distances of L2-normalised features
    want = []
    for d in draws:
        dq, dg = split_table(d, "query"), split_table(d, "gallery")
        fq, fg = feats(dq), feats(dg)
        fq /= np.linalg.norm(fq, axis=1, keepdims=True)
        fg /= np.linalg.norm(fg, axis=1, keepdims=True)
        dist = ((fq[:, None] - fg[None]) ** 2).sum(-1)
        want.append(evaluate(dist, dq.column("pid").to_numpy(), dg.column("pid").to_numpy(),
                             dq.column("camid").to_numpy(), dg.column("camid").to_numpy()).mAP)
    assert result["num_draws"] == n_draws
    assert [d["mAP"] for d in result["draws"]] == pytest.approx(want, abs=1e-6)
    s = result["summary"]["mAP"]
    assert s["mean"] == pytest.approx(np.mean(want), abs=1e-6)
    assert s["std"] == pytest.approx(np.std(want, ddof=1), abs=1e-6) and s["std"] > 0
    assert s["min"] <= s["mean"] <= s["max"]


def test_vehicleid_draws_driver_writes_the_summary(tmp_path, monkeypatch):
    """The pipeline's side: data.vehicleid_draws manifests from seeds data.seed + i, the run's
    stores (here the loaded inputs stand in for them), results/<name>/gallery_draws.json."""
    import json

    from vreid.config import RunConfig
    from vreid.eval.gallery_draws import vehicleid_draws
    from vreid.postprocess import actor

    root = make_vehicleid(tmp_path / "VehicleID", ids=6, per_id=3)
    cfg = RunConfig.model_validate({"run_dir": str(tmp_path / "run"), "data": {
        "format": "vehicleid", "root": str(root), "synth_preset": None, "seed": 5, "vehicleid_draws": 4}})
    base = load_manifest(root, "vehicleid", seed=5)
    rng = np.random.default_rng(1)
    feats = {i: rng.normal(size=4).astype(np.float32) for i in base.column("image_id").to_pylist()}

    def fake_inputs(c, manifest, store_set):
        assert store_set == "test" and manifest is base
        q, g = split_table(manifest, "query"), split_table(manifest, "gallery")
        f = [np.stack([feats[i] for i in t.column("image_id").to_pylist()]) for t in (q, g)]
        return PostprocessInputs(query=_side(q), gallery=_side(g), features={"m": tuple(f)}, extras={"m": {}},
                                 tasks={"m": "reid"}, weights={"m": 1.0})

    monkeypatch.setattr(actor, "load_inputs", fake_inputs)
    (tmp_path / "run" / "results" / "final").mkdir(parents=True)
    out = vehicleid_draws(cfg, PostprocessConfig(), base)
    written = json.loads((tmp_path / "run" / "results" / "final" / "gallery_draws.json").read_text())
    assert written == json.loads(json.dumps(out)) and written["seeds"] == [5, 6, 7, 8]
    assert written["num_draws"] == 4 and set(written["summary"]["mAP"]) == {"mean", "std", "min", "max"}

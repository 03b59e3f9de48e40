"""Readers on small fixture trees written here, one per on-disk format, and their bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from vreid.data import (
    ManifestError,
    load_manifest,
    skipped_images,
    split_table,
    validation_split,
    write_manifest,
)

GB_HEADER = '<?xml version="1.0" encoding="gb2312"?>\n'


def _img(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(path)


def _xml(path: Path, items: list[dict], comment: str = "车辆") -> None:
    body = "".join("<Item " + " ".join(f'{k}="{v}"' for k, v in it.items()) + " />\n" for it in items)
    text = f"{GB_HEADER}<!-- {comment} -->\n<TrainingImages><Items>\n{body}</Items></TrainingImages>\n"
    path.write_bytes(text.encode("gb2312"))


def make_aic(root: Path, layout: int = 2021) -> Path:
    train = [("000001.jpg", "0001", "c001"), ("000002.jpg", "0001", "c002"), ("000003.jpg", "0002", "c001")]
    for name, _, _ in train:
        _img(root / "image_train" / name)
    _xml(root / "train_label.xml", [{"imageName": n, "vehicleID": v, "cameraID": c} for n, v, c in train])
    for name in ("000001.jpg", "000002.jpg"):
        _img(root / "image_query" / name)
    for name in ("000001.jpg", "000002.jpg", "000003.jpg"):
        _img(root / "image_test" / name)
    (root / "name_query.txt").write_text("000002.jpg\n000001.jpg\n")
    (root / "name_test.txt").write_text("000003.jpg\n000001.jpg\n000002.jpg\n")
    if layout == 2021:
        _xml(root / "query_label.xml", [{"imageName": "000001.jpg", "cameraID": "c003"},
                                        {"imageName": "000002.jpg", "cameraID": "c004"}])
        _xml(root / "test_label.xml", [{"imageName": f"00000{i}.jpg", "cameraID": "c005"} for i in (1, 2, 3)])
        (root / "test_track.txt").write_text("000001.jpg 000003.jpg\n000002.jpg\n")
        (root / "train_track.txt").write_text("000001.jpg\n000002.jpg 000003.jpg\n")
    else:
        (root / "test_track_id.txt").write_text("1 3\n2\n")
    return root


def test_aic_2021(tmp_path):
    m = load_manifest(make_aic(tmp_path), "aic")
    q = split_table(m, "query").to_pydict()
    assert q["image_id"] == ["image_query/000002.jpg", "image_query/000001.jpg"]
    assert q["order"] == [0, 1] and q["camid"] == [4, 3] and q["pid"] == [-1, -1]
    g = split_table(m, "gallery").to_pydict()
    assert g["name"] == ["000003.jpg", "000001.jpg", "000002.jpg"]
    assert g["trackid"] == [0, 0, 1] and g["camid"] == [5, 5, 5]
    t = split_table(m, "train").to_pydict()
    assert t["pid"] == [1, 1, 2] and t["camid"] == [1, 2, 1] and t["trackid"] == [0, 1, 1]
    assert set(m.column("domain").to_pylist()) == {"real"}


def test_aic_2020_track_ids(tmp_path):
    m = load_manifest(make_aic(tmp_path, layout=2020), "aic")
    g = split_table(m, "gallery").to_pydict()
    assert dict(zip(g["name"], g["trackid"])) == {"000001.jpg": 0, "000003.jpg": 0, "000002.jpg": 1}
    assert split_table(m, "query").column("camid").to_pylist() == [-1, -1]


def test_aic_track_listing_an_unknown_image_fails(tmp_path):
    root = make_aic(tmp_path)
    (root / "test_track.txt").write_text("000001.jpg 000003.jpg\n000002.jpg 000009.jpg\n")
    with pytest.raises(ManifestError, match=r"test_track.txt:2: track lists image '000009.jpg', which is not in"):
        load_manifest(root, "aic")


def test_veri776(tmp_path):
    names = {"image_train": ["0001_c001_00016450_0.jpg", "0001_c002_00016460_1.jpg"],
             "image_query": ["0002_c003_00076640_0.jpg"],
             "image_test": ["0002_c004_00084180_0.jpg", "0003_c003_00080000_0.jpg"]}
    for folder, ns in names.items():
        for n in ns:
            _img(tmp_path / folder / n)
    (tmp_path / "name_query.txt").write_text("\n".join(names["image_query"]))
    (tmp_path / "name_test.txt").write_text("\n".join(names["image_test"]))
    _xml(tmp_path / "test_label.xml", [{"imageName": "0002_c004_00084180_0.jpg", "vehicleID": "0002",
                                         "cameraID": "c004", "colorID": "3", "typeID": "2"}])
    m = load_manifest(tmp_path, "veri776")
    g = split_table(m, "gallery").to_pydict()
    assert g["pid"] == [2, 3] and g["camid"] == [4, 3] and g["timestamp"] == [84180.0, 80000.0]
    assert g["color"] == [3, -1] and g["vtype"] == [2, -1]
    assert split_table(m, "train").num_rows == 2
    (tmp_path / "name_query.txt").write_text("bad_name.jpg\n")
    with pytest.raises(ManifestError, match="not a VeRi name"):
        load_manifest(tmp_path, "veri776")


def test_vehicleid_seeded_gallery(tmp_path):
    (tmp_path / "train_test_split").mkdir()
    (tmp_path / "attribute").mkdir()
    (tmp_path / "train_test_split" / "train_list.txt").write_text("a1 1\na2 1\n")
    test = [("b1", 5), ("b2", 5), ("b3", 5), ("c1", 6), ("c2", 6)]
    (tmp_path / "train_test_split" / "test_list_800.txt").write_text("".join(f"{n} {p}\n" for n, p in test))
    (tmp_path / "attribute" / "color_attr.txt").write_text("5 2\n6 4\n")
    for n in ["a1", "a2"] + [n for n, _ in test]:
        _img(tmp_path / "image" / f"{n}.jpg")
    m1 = load_manifest(tmp_path, "vehicleid", seed=0)
    m2 = load_manifest(tmp_path, "vehicleid", seed=0)
    assert m1.to_pandas().equals(m2.to_pandas())
    g = split_table(m1, "gallery").to_pydict()
    assert g["pid"] == [5, 6] and g["color"] == [2, 4]
    assert split_table(m1, "query").num_rows == 3
    picks = {tuple(split_table(load_manifest(tmp_path, "vehicleid", seed=s), "gallery")
                   .column("name").to_pylist()) for s in range(8)}
    assert len(picks) > 1, "the gallery draw depends on the seed"


def test_vehiclex(tmp_path):
    _img(tmp_path / "image_train" / "1_c1_1.jpg")
    _xml(tmp_path / "train_label.xml", [{"imageName": "1_c1_1.jpg", "vehicleID": "7", "cameraID": "c2",
                                         "colorID": "1", "typeID": "3", "orientation": "123.5"}])
    row = load_manifest(tmp_path, "vehiclex").to_pylist()[0]
    assert (row["pid"], row["camid"], row["color"], row["vtype"], row["domain"]) == (7, 2, 1, 3, "synthetic")
    assert row["orientation"] == pytest.approx(123.5)


def test_manifest_format_roundtrip(tmp_path, tiny_manifest):
    path = write_manifest(tiny_manifest, tmp_path / "m.parquet")
    back = load_manifest(path, "manifest")
    assert back.select(tiny_manifest.column_names).equals(tiny_manifest)
    tiny_manifest.drop_columns(["camid"]).to_pandas().to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ManifestError, match=r"missing columns \['camid'\]"):
        load_manifest(tmp_path / "bad.csv", "manifest")


# --- bad input -------------------------------------------------------------------------------

def test_missing_folder_and_list(tmp_path):
    root = make_aic(tmp_path)
    (root / "name_query.txt").unlink()
    with pytest.raises(ManifestError, match="name_query.txt: list file not found"):
        load_manifest(root, "aic")
    with pytest.raises(ManifestError, match="dataset root not found"):
        load_manifest(tmp_path / "nowhere", "aic")
    with pytest.raises(ManifestError, match="unknown dataset format"):
        load_manifest(root, "cityflow")


def test_listed_image_absent_fail_or_skip(tmp_path):
    root = make_aic(tmp_path)
    (root / "image_test" / "000001.jpg").unlink()
    with pytest.raises(ManifestError, match=r"image_test/000001.jpg: listed in name_test.txt but absent"):
        load_manifest(root, "aic")
    m = load_manifest(root, "aic", on_bad_image="skip")
    assert skipped_images(m) == [{"image_id": "image_test/000001.jpg",
                                  "reason": "listed in name_test.txt but absent"}]
    g = split_table(m, "gallery").to_pydict()
    assert g["name"] == ["000003.jpg", "000002.jpg"] and g["order"] == [0, 2], "official order kept"


def test_truncated_or_non_image(tmp_path):
    root = make_aic(tmp_path)
    data = (root / "image_test" / "000002.jpg").read_bytes()
    (root / "image_test" / "000002.jpg").write_bytes(data[: len(data) // 3])
    (root / "image_test" / "000003.jpg").write_text("not an image")
    load_manifest(root, "aic")  # existence only by default
    with pytest.raises(ManifestError, match="000003.jpg: not an image file"):
        load_manifest(root, "aic", verify_images=True)
    m = load_manifest(root, "aic", verify_images=True, on_bad_image="skip")
    reasons = {s["image_id"]: s["reason"] for s in skipped_images(m)}
    assert reasons["image_test/000003.jpg"] == "not an image file"
    assert reasons["image_test/000002.jpg"].startswith("truncated or corrupt image")


def test_xml_that_does_not_parse_names_line(tmp_path):
    root = make_aic(tmp_path)
    text = (root / "train_label.xml").read_bytes().decode("gb2312").splitlines()
    text[4] = text[4].replace("/>", ">")  # unclosed element on line 5
    (root / "train_label.xml").write_bytes("\n".join(text).encode("gb2312"))
    with pytest.raises(ManifestError, match=r"train_label.xml:\d+:\d+: XML does not parse"):
        load_manifest(root, "aic")


def test_duplicate_names_and_unknown_camera(tmp_path):
    root = make_aic(tmp_path)
    (root / "name_test.txt").write_text("000001.jpg\n000002.jpg\n000001.jpg\n")
    with pytest.raises(ManifestError, match=r"name_test.txt:3: duplicate image name '000001.jpg'"):
        load_manifest(root, "aic")
    root2 = make_aic(tmp_path / "b")
    _xml(root2 / "train_label.xml", [{"imageName": "000001.jpg", "vehicleID": "1", "cameraID": "cam-x"}])
    with pytest.raises(ManifestError, match="unknown camera string 'cam-x'"):
        load_manifest(root2, "aic")
    _xml(root2 / "train_label.xml", [{"imageName": "000001.jpg", "vehicleID": "1", "cameraID": "c1"}] * 2)
    with pytest.raises(ManifestError, match="duplicate imageName '000001.jpg'"):
        load_manifest(root2, "aic")


def test_empty_query_set(tmp_path):
    root = make_aic(tmp_path)
    (root / "name_query.txt").write_text("\n")
    with pytest.raises(ManifestError, match="name_query.txt: the list is empty"):
        load_manifest(root, "aic")


def test_manifest_duplicate_ids_rejected(tiny_manifest, tmp_path):
    doubled = pa.concat_tables([tiny_manifest.slice(0, 2), tiny_manifest.slice(0, 1)])
    with pytest.raises(ManifestError, match="duplicate image_id"):
        write_manifest(doubled, tmp_path / "x.parquet")
    assert not list(tmp_path.iterdir()), "nothing half-written"


def test_validation_split(tiny_manifest):
    v = validation_split(tiny_manifest, num_ids=4, queries_per_id=2, seed=0)
    assert v.num_rows == split_table(tiny_manifest, "train").num_rows
    q, g = split_table(v, "query"), split_table(v, "gallery")
    qp, gp = set(q.column("pid").to_pylist()), set(g.column("pid").to_pylist())
    assert len(qp) == 4 and qp == gp
    assert q.num_rows == 8
    train_ids = set(split_table(v, "train").column("pid").to_pylist())
    assert train_ids.isdisjoint(qp)
    assert validation_split(tiny_manifest, 4, 2, seed=0).equals(v)
    assert not validation_split(tiny_manifest, 4, 2, seed=1).equals(v)
    with pytest.raises(ManifestError, match="num_ids=99"):
        validation_split(tiny_manifest, 99)
    assert pc.all(pc.equal(q.column("order"), pa.array(range(q.num_rows), pa.int32()))).as_py()

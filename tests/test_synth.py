"""The synthetic city: determinism, layout, ground truth consistent with its files."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from vreid.data import load_manifest
from vreid.data.readers.common import parse_label_xml, read_name_list
from vreid.data.synth import generate, get_preset, plan
from vreid.data.synth.render import render_vehicle


def _digest(root, folder, n=20):
    files = sorted((root / folder).iterdir())[:n]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def test_layout_and_gt_consistent(tiny_city):
    root = tiny_city
    for name in ("image_train", "image_query", "image_test", "train_label.xml", "query_label.xml",
                 "test_label.xml", "train_track.txt", "test_track.txt", "name_query.txt",
                 "name_test.txt", "gt/test_gt.csv", "gt/query_gt.csv", "masks/image_test"):
        assert (root / name).exists(), name
    assert (root / "train_label.xml").read_bytes().startswith(b'<?xml version="1.0" encoding="gb2312"?>')
    items = parse_label_xml(root / "train_label.xml")
    assert {"imageName", "vehicleID", "cameraID", "colorID", "typeID", "orientation"} <= set(items[0])
    test_names = read_name_list(root / "name_test.txt")
    assert sorted(p.name for p in (root / "image_test").iterdir()) == sorted(test_names)
    with open(root / "gt" / "test_gt.csv") as fh:
        gt = {r["name"]: r for r in csv.DictReader(fh)}
    assert set(gt) == set(test_names)
    # every test track holds images of one identity and one camera, in time order
    for line in (root / "test_track.txt").read_text().splitlines():
        names = line.split()
        assert len({gt[n]["pid"] for n in names}) == 1
        assert len({gt[n]["camid"] for n in names}) == 1
        assert len({gt[n]["trackid"] for n in names}) == 1
    # masks line up with the images
    name = test_names[0]
    img = Image.open(root / "image_test" / name)
    mask = np.asarray(Image.open(root / "masks" / "image_test" / name.replace(".jpg", ".png")))
    assert mask.shape == img.size[::-1] and set(np.unique(mask)) <= {0, 255} and mask.max() == 255


def test_identities_disjoint_and_queries_per_identity_camera(tiny_manifest):
    m = tiny_manifest
    split = m.column("split").to_numpy(zero_copy_only=False)
    pid, cam = m.column("pid").to_numpy(), m.column("camid").to_numpy()
    train_ids = set(pid[split == "train"])
    test_ids = set(pid[split == "gallery"]) | set(pid[split == "query"])
    assert train_ids.isdisjoint(test_ids)
    preset = get_preset("tiny")
    assert len(train_ids) == preset.num_train_ids and len(test_ids) == preset.num_test_ids
    q = list(zip(pid[split == "query"], cam[split == "query"]))
    assert len(q) == len(set(q)), "at most one query per (identity, camera)"
    assert set(pid[split == "query"]) == test_ids, "every test identity has a query"
    assert (m.filter(pc.equal(m.column("split"), "query")).column("trackid").to_numpy() == -1).all()
    gal = m.filter(pc.equal(m.column("split"), "gallery"))
    assert (gal.column("trackid").to_numpy() >= 0).all()
    assert pc.all(pc.is_valid(gal.column("timestamp"))).as_py()


def test_signals_present_in_plan():
    layout = plan(get_preset("demo"), seed=3)
    vehicles, images = layout["vehicles"], layout["images"]
    assert len({v.vtype for v in vehicles}) >= 5 and len({v.color for v in vehicles}) >= 6
    # look-alikes (same type and colour) exist and differ in their details
    groups: dict = {}
    for v in vehicles:
        groups.setdefault((v.vtype, v.color), []).append(v)
    twins = [g for g in groups.values() if len(g) > 1]
    assert twins and all(len(set(g)) == len(g) for g in twins)
    yaws = np.array([im["orientation"] for im in images])
    assert np.histogram(yaws, bins=4, range=(0, 360))[0].min() > 0.1 * len(yaws)  # all views occur
    assert any(im["occlusion"] for im in images)
    cams = layout["cameras"]
    assert np.std([c.brightness for c in cams]) > 0.05 and np.std([c.blur for c in cams]) > 0.05
    n = sum(1 for im in images if im["part"] != "train")
    assert len(images) >= 6000 and n > 1000 and len(vehicles) >= 150 and len(cams) >= 6


def test_deterministic_for_seed(tmp_path, tiny_city, ray_session):
    again = generate(tmp_path / "again", "tiny", seed=0, progress=False)
    for name in ("train_label.xml", "test_track.txt", "name_query.txt", "gt/test_gt.csv"):
        assert (again / name).read_bytes() == (tiny_city / name).read_bytes()
    assert _digest(again, "image_test") == _digest(tiny_city, "image_test")
    other = plan(get_preset("tiny"), seed=1)["images"]
    assert [im["pid"] for im in other] != [im["pid"] for im in plan(get_preset("tiny"), 0)["images"]] or \
        [im["yaw"] for im in other] != [im["yaw"] for im in plan(get_preset("tiny"), 0)["images"]]


def test_rerun_skips_and_refuses_foreign_folder(tmp_path, tiny_city, ray_session):
    marker = (tiny_city / "_SUCCESS.json").stat().st_mtime_ns
    generate(tiny_city, "tiny", seed=0, progress=False)
    assert (tiny_city / "_SUCCESS.json").stat().st_mtime_ns == marker
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not a complete synth dataset"):
        generate(tmp_path / "busy", "tiny", seed=0, progress=False)


def test_a_changed_preset_is_not_taken_for_the_rendered_one(tmp_path, tiny_city, ray_session):
    old = tmp_path / "old"
    old.mkdir()
    meta = json.loads((tiny_city / "_SUCCESS.json").read_text())
    meta["settings"]["approach_resolution"] = 0.5  # rendered before the preset changed
    (old / "_SUCCESS.json").write_text(json.dumps(meta))
    with pytest.raises(FileExistsError, match=r"rendered with other settings \(differing: \['approach_resolution'\]\)"):
        generate(old, "tiny", seed=0, progress=False)


def test_approaching_vehicles_have_few_pixels_in_their_first_frames():
    """A track's frames rise in resolution (a vehicle approaching the camera: the low-quality
    frames 001's weighted tracklet features weigh less); the first renders with less detail."""
    layout = plan(get_preset("demo"), seed=0)
    first_track = [im for im in layout["images"] if im["trackid"] == 0 and im["part"] == "train"]
    res = [im["resolution"] for im in first_track]
    assert res[0] == pytest.approx(get_preset("demo").approach_resolution) and res[-1] == pytest.approx(1.0)
    assert np.all(np.diff(res) > 0)
    assert all(im["resolution"] == 1.0 for im in plan(get_preset("tiny"), seed=0)["images"])
    im, cam = first_track[0], layout["cameras"][0]
    cam = dataclasses.replace(cam, resolution=1.0, blur=0.0)

    def detail(frame_resolution):
        rgb, _ = render_vehicle(layout["vehicles"][im["pid"]], cam, im["yaw"], im["pitch"], im["scale"], (0, 0),
                                (0, 0), None, 64, 0.0, np.random.default_rng(0), 0.08, frame_resolution)
        grey = rgb.astype(np.float32).mean(axis=2)
        return np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()

    assert detail(0.35) < 0.8 * detail(1.0)


def test_test_only_cameras(ray_session):
    layout = plan(get_preset("tiny", test_only_cameras=2), seed=0)
    train_cams = {im["camid"] for im in layout["images"] if im["part"] == "train"}
    test_cams = {im["camid"] for im in layout["images"] if im["part"] != "train"}
    assert max(train_cams) <= 4 and test_cams - train_cams


def test_bad_preset_values():
    with pytest.raises(ValueError, match="unknown synth preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="inverted"):
        get_preset("tiny", scale=(0.9, 0.5))


def test_manifest_reader_roundtrip(tiny_manifest, tiny_city):
    m = load_manifest(tiny_city, "synth")
    assert m.equals(tiny_manifest)

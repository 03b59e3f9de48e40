"""The synthetic city: plans identities, routes, tracklets and queries, renders them as Ray tasks.

Output is the AI City 2021 layout (``image_train/``, ``image_query/``, ``image_test/``, label
XMLs with the gb2312 header, track and name lists) plus ``gt/`` (hidden test ground truth:
pid, camera, track, timestamp, attributes per image) and ``masks/`` (vehicle masks for
background substitution, seed 000). Deterministic for a seed, whatever the number of tasks.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from vreid.data.synth.presets import SynthPreset, get_preset
from vreid.data.synth.render import COLORS, TYPES, Camera, Vehicle, camera_background, render_vehicle

GT_FIELDS = ("name", "pid", "camid", "trackid", "timestamp", "color", "vtype", "orientation")
SUCCESS = "_SUCCESS.json"
FORMAT_VERSION = 1


def _rgb(rng, base, jitter):
    return tuple(int(np.clip(c + rng.normal(0, jitter), 0, 255)) for c in base)


def _vehicles(rng: np.random.Generator, n: int, preset: SynthPreset) -> list[Vehicle]:
    color_p = 1.0 / np.arange(1, len(COLORS) + 1) ** preset.color_skew
    color_p /= color_p.sum()
    type_p = np.array([0.3, 0.22, 0.12, 0.16, 0.1, 0.04, 0.06])
    out = []
    for _ in range(n):
        color = int(rng.choice(len(COLORS), p=color_p))
        vtype = int(rng.choice(len(TYPES), p=type_p))
        palette = [c for _, c in COLORS]
        detail = lambda: rng.random() < preset.detail_prob  # noqa: E731
        out.append(Vehicle(
            vtype=vtype, color=color, body_rgb=_rgb(rng, COLORS[color][1], 7),
            stripe=(float(rng.uniform(0.3, 0.7)), palette[int(rng.integers(len(palette)))]) if detail() else None,
            decal=(float(rng.uniform(0.1, 0.6)), float(rng.uniform(0.25, 0.5)), float(rng.uniform(0.15, 0.3)),
                   _rgb(rng, palette[int(rng.integers(len(palette)))], 20)) if detail() else None,
            roof_box=(float(rng.uniform(0.4, 0.8)), float(rng.uniform(0.15, 0.35))) if detail() else None,
            tint=int(rng.integers(15, 110)),
            bumper_rgb=(30, 30, 34) if rng.random() < 0.5 else _rgb(rng, COLORS[color][1], 30),
            plate=tuple(palette[int(i)] for i in rng.integers(len(palette), size=3)),
        ))
    return out


def _cameras(rng: np.random.Generator, n: int, preset: SynthPreset) -> list[Camera]:
    cams = []
    for _ in range(n):
        cast = rng.uniform(-preset.color_cast, preset.color_cast, size=3)
        cams.append(Camera(
            background=camera_background(rng, preset.image_size),
            gain=tuple(float(1 + c) for c in cast),
            brightness=float(rng.uniform(*preset.brightness)),
            blur=float(rng.uniform(*preset.blur)),
            resolution=float(rng.uniform(*preset.resolution)),
            light=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)), float(rng.uniform(0.5, 1.5))),
            yaw_center=float(rng.uniform(0, 360)),
            pitch=float(rng.uniform(*preset.pitch)),
        ))
    return cams


def plan(preset: SynthPreset, seed: int) -> dict[str, Any]:
    """Everything but the pixels: identities, cameras, one record per image, the query choice."""
    rng = np.random.default_rng(seed)
    n_ids = preset.num_train_ids + preset.num_test_ids
    vehicles = _vehicles(rng, n_ids, preset)
    n_cams = preset.num_cameras + preset.test_only_cameras
    cameras = _cameras(rng, n_cams, preset)
    images: list[dict[str, Any]] = []
    track = {"train": 0, "test": 0}
    for pid in range(n_ids):
        part = "train" if pid < preset.num_train_ids else "test"
        pool = preset.num_cameras + (preset.test_only_cameras if part == "test" else 0)
        k = int(rng.integers(preset.cameras_per_id[0], min(preset.cameras_per_id[1], pool) + 1))
        route = rng.choice(pool, size=k, replace=False)
        if part == "test" and preset.test_only_cameras and not (route >= preset.num_cameras).any() \
                and rng.random() < 0.5:  # a share of test identities pass the new cameras
            route[-1] = preset.num_cameras + int(rng.integers(preset.test_only_cameras))
        t = float(rng.uniform(0, 3600))
        for cam in route:
            c = cameras[int(cam)]
            n = int(rng.integers(preset.frames_per_track[0], preset.frames_per_track[1] + 1))
            direction = 180.0 if rng.random() < 0.5 else 0.0  # traffic both ways
            yaw0 = c.yaw_center + direction + rng.uniform(-preset.yaw_range / 2, preset.yaw_range / 2)
            s0 = rng.uniform(*preset.scale)
            for f in range(n):
                occ = None
                if rng.random() < preset.occlusion_prob:
                    vertical = rng.random() < 0.5
                    w, h = (rng.uniform(0.06, 0.14), 1.0) if vertical else (1.0, rng.uniform(0.2, 0.35))
                    occ = (float(rng.uniform(0, 1 - w)) if vertical else 0.0,
                           0.0 if vertical else float(1 - h), float(w), float(h),
                           [int(v) for v in rng.integers(20, 220, size=3)])
                yaw = float((yaw0 + f * rng.uniform(-3, 3)) % 360)
                images.append({
                    "pid": pid, "part": part, "camid": int(cam) + 1, "trackid": track[part],
                    "timestamp": round(t + f * preset.frame_interval_s, 3),
                    "color": vehicles[pid].color, "vtype": vehicles[pid].vtype, "orientation": round(yaw, 2),
                    "yaw": yaw, "pitch": float(c.pitch + rng.uniform(-3, 3)),
                    "scale": float(min(0.98, s0 * (1 + 0.03 * f))),
                    "resolution": preset.approach_resolution + (1 - preset.approach_resolution) * f / max(1, n - 1),
                    "shift": (float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04))),
                    "bg_offset": (int(rng.integers(0, preset.image_size)), int(rng.integers(0, preset.image_size))),
                    "occlusion": occ, "margin": float(rng.uniform(*preset.box_margin)),
                })
            track[part] += 1
            t += float(rng.uniform(*preset.travel_time_s))
    # queries: per (test identity, camera), one frame of that visit with probability query_prob
    by_visit: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        if im["part"] == "test":
            by_visit.setdefault((im["pid"], im["camid"]), []).append(i)
    chosen_ids: set[int] = set()
    for (pid, _), idx in sorted(by_visit.items()):
        if rng.random() < preset.query_prob:
            images[int(rng.choice(idx))]["part"] = "query"
            chosen_ids.add(pid)
    for (pid, _), idx in sorted(by_visit.items()):  # every test identity gets at least one query
        if pid not in chosen_ids:
            images[int(rng.choice(idx))]["part"] = "query"
            chosen_ids.add(pid)
    # file names: shuffled sequential numbers per folder so names leak nothing
    for part in ("train", "query", "test"):
        idx = [i for i, im in enumerate(images) if im["part"] == part]
        for num, i in enumerate(rng.permutation(idx), 1):
            images[int(i)]["name"] = f"{num:06d}.jpg"
    for i, im in enumerate(images):
        im["index"] = i
    return {"vehicles": vehicles, "cameras": cameras, "images": images}


_FOLDER = {"train": "image_train", "query": "image_query", "test": "image_test"}


def render_chunk(records: list[dict[str, Any]], vehicles: list[Vehicle], cameras: list[Camera],
                 preset: SynthPreset, seed: int, out_dir: str) -> int:
    """Render and write the images and masks of some records (a Ray task body)."""
    from PIL import Image

    out = Path(out_dir)
    for im in records:
        rng = np.random.default_rng([seed, im["index"]])
        rgb, mask = render_vehicle(vehicles[im["pid"]], cameras[im["camid"] - 1], im["yaw"], im["pitch"],
                                   im["scale"], im["shift"], im["bg_offset"], im["occlusion"],
                                   preset.image_size, preset.noise, rng, im["margin"], im["resolution"])
        folder = _FOLDER[im["part"]]
        Image.fromarray(rgb).save(out / folder / im["name"], quality=preset.jpeg_quality)
        Image.fromarray(mask).save(out / "masks" / folder / im["name"].replace(".jpg", ".png"))
    return len(records)


def _write_xml(path: Path, items: list[dict[str, Any]], fields: tuple[str, ...]) -> None:
    lines = ['<?xml version="1.0" encoding="gb2312"?>', "<TrainingImages>", "<Items>"]
    for it in items:
        attrs = " ".join(f'{k}="{it[k]}"' for k in fields)
        lines.append(f"<Item {attrs} />")
    lines += ["</Items>", "</TrainingImages>", ""]
    path.write_bytes("\n".join(lines).encode("gb2312"))


def _write_labels(out: Path, images: list[dict[str, Any]]) -> None:
    by_part: dict[str, list[dict[str, Any]]] = {p: [] for p in _FOLDER}
    for im in sorted(images, key=lambda r: r["name"]):
        by_part[im["part"]].append({**im, "vehicleID": f"{im['pid']:04d}", "cameraID": f"c{im['camid']:03d}",
                                    "imageName": im["name"], "colorID": im["color"], "typeID": im["vtype"]})
    _write_xml(out / "train_label.xml", by_part["train"],
               ("imageName", "vehicleID", "cameraID", "colorID", "typeID", "orientation"))
    _write_xml(out / "query_label.xml", by_part["query"], ("imageName", "cameraID"))
    _write_xml(out / "test_label.xml", by_part["test"], ("imageName", "cameraID"))
    (out / "name_query.txt").write_text("".join(f"{r['name']}\n" for r in by_part["query"]))
    (out / "name_test.txt").write_text("".join(f"{r['name']}\n" for r in by_part["test"]))
    for part, fname in (("train", "train_track.txt"), ("test", "test_track.txt")):
        tracks: dict[int, list[str]] = {}
        for r in by_part[part]:
            tracks.setdefault(r["trackid"], []).append(r["name"])
        (out / fname).write_text("".join(" ".join(sorted(v)) + "\n" for _, v in sorted(tracks.items())))
    (out / "gt").mkdir(exist_ok=True)
    for part in _FOLDER:
        with open(out / "gt" / f"{part}_gt.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=GT_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(by_part[part])


def is_complete(out_dir: str | Path, preset: str, seed: int, settings: dict[str, Any] | None = None) -> bool:
    """Whether ``out_dir`` holds the finished city of this preset tag and seed (and, given
    ``settings``, rendered with those preset values: a changed preset is not complete)."""
    marker = Path(out_dir) / SUCCESS
    if not marker.is_file():
        return False
    meta = json.loads(marker.read_text())
    return meta.get("preset") == preset and meta.get("seed") == seed and meta.get("version") == FORMAT_VERSION \
        and (settings is None or meta.get("settings") == settings)


def generate(out_dir: str | Path, preset: str = "tiny", seed: int = 0, progress: bool = True,
             **overrides: Any) -> Path:
    """Generate the synthetic city at ``out_dir`` (skipped when already complete for preset/seed).

    Rendering runs as Ray tasks of ``chunk_images`` images each (Ray is started locally when no
    cluster is connected). Files go to a temporary sibling folder renamed when complete.
    """
    import ray

    cfg = get_preset(preset, **overrides)
    out = Path(out_dir)
    tag = preset if not overrides else f"{preset}+{json.dumps(overrides, sort_keys=True)}"
    settings = cfg.model_dump(mode="json")
    if is_complete(out, tag, seed, settings):
        return out
    if out.exists() and any(out.iterdir()):
        why = "is not a complete synth dataset of"
        if is_complete(out, tag, seed):
            old = json.loads((out / SUCCESS).read_text()).get("settings") or {}
            why = (f"was rendered with other settings (differing: "
                   f"{sorted(k for k in settings if old.get(k) != settings[k])}) of")
        raise FileExistsError(f"{out}: exists and {why} preset '{tag}' seed {seed}; remove it or choose "
                              "another root")
    layout = plan(cfg, seed)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for folder in _FOLDER.values():
        (tmp / folder).mkdir(parents=True)
        (tmp / "masks" / folder).mkdir(parents=True)
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    images = layout["images"]
    vehicles_ref, cameras_ref = ray.put(layout["vehicles"]), ray.put(layout["cameras"])
    task = ray.remote(num_cpus=1)(render_chunk)
    pending = [task.remote(images[i:i + cfg.chunk_images], vehicles_ref, cameras_ref, cfg, seed, str(tmp))
               for i in range(0, len(images), cfg.chunk_images)]
    from tqdm import tqdm

    with tqdm(total=len(images), desc=f"synth {preset}", unit="img", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(sum(ray.get(done)))
    _write_labels(tmp, images)
    (tmp / SUCCESS).write_text(json.dumps({"preset": tag, "seed": seed, "version": FORMAT_VERSION,
                                           "images": len(images), "settings": settings}))
    if out.exists():
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out

"""Renders one vehicle crop: boxes in 3-D seen from a camera, with the camera's look applied.

A vehicle is a few boxes (body, cabin or cargo, roof box) with per-identity details painted on
their faces (stripe, decal, window tint, bumper, plate pattern). The camera fixes the
background, colour cast, brightness, blur, resolution and light; the view fixes yaw (the
orientation label: 0° = front towards the camera, 90° = left side, 180° = rear), pitch and
scale. Orthographic projection and painter's order are enough at re-ID crop sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# colorID -> RGB; typeID -> geometry. Index = label written to the label XML.
COLORS = (
    ("white", (232, 232, 228)), ("black", (28, 28, 32)), ("gray", (118, 120, 124)),
    ("silver", (186, 190, 196)), ("red", (182, 28, 34)), ("blue", (32, 68, 168)),
    ("green", (38, 122, 58)), ("yellow", (226, 196, 40)), ("brown", (112, 74, 42)),
    ("orange", (226, 116, 28)),
)
# name, length, width, body height, upper boxes [(x0, x1) as fractions of length, height, glass]
TYPES = (
    ("sedan", 4.6, 1.8, 0.72, [((-0.30, 0.16), 0.58, True)]),
    ("suv", 4.7, 1.9, 0.95, [((-0.46, 0.20), 0.72, True)]),
    ("van", 5.0, 1.95, 1.00, [((-0.49, 0.30), 0.95, True)]),
    ("hatchback", 3.9, 1.7, 0.74, [((-0.47, 0.14), 0.64, True)]),
    ("pickup", 5.3, 1.9, 0.95, [((-0.04, 0.26), 0.72, True)]),
    ("bus", 11.0, 2.5, 1.5, [((-0.50, 0.50), 1.25, True)]),
    ("truck", 7.4, 2.4, 1.1, [((0.26, 0.50), 1.2, True), ((-0.50, 0.22), 1.9, False)]),
)
CLEARANCE = 0.32


@dataclass(frozen=True)
class Vehicle:
    """Identity-level appearance: attributes plus the details that tell look-alikes apart."""

    vtype: int
    color: int
    body_rgb: tuple[int, int, int]
    stripe: tuple[float, tuple[int, int, int]] | None  # height on the side (0..1), colour
    decal: tuple[float, float, float, tuple[int, int, int]] | None  # u, v, size, colour (left side)
    roof_box: tuple[float, float] | None  # length fraction, height
    tint: int  # window darkness 0..255
    bumper_rgb: tuple[int, int, int]
    plate: tuple[tuple[int, int, int], ...]  # 3 block colours on the plates


@dataclass(frozen=True)
class Camera:
    """Camera-level look: the bias the camera-bias removal methods (003) take out."""

    background: np.ndarray  # (B, B, 3) uint8 texture this camera's crops are cut from
    gain: tuple[float, float, float]
    brightness: float
    blur: float
    resolution: float
    light: tuple[float, float, float]
    yaw_center: float
    pitch: float


def _shade(rgb, factor):
    return tuple(int(max(0, min(255, c * factor))) for c in rgb)


def _box(x0, x1, y0, y1, z0, z1):
    """Faces of an axis-aligned box as (name, outward normal, 4 corners ordered u-then-v)."""
    return [
        ("front", (1, 0, 0), [(x1, y1, z0), (x1, y0, z0), (x1, y0, z1), (x1, y1, z1)]),
        ("rear", (-1, 0, 0), [(x0, y0, z0), (x0, y1, z0), (x0, y1, z1), (x0, y0, z1)]),
        ("left", (0, 1, 0), [(x0, y1, z0), (x1, y1, z0), (x1, y1, z1), (x0, y1, z1)]),
        ("right", (0, -1, 0), [(x1, y0, z0), (x0, y0, z0), (x0, y0, z1), (x1, y0, z1)]),
        ("top", (0, 0, 1), [(x0, y0, z1), (x1, y0, z1), (x1, y1, z1), (x0, y1, z1)]),
    ]


def _on_face(corners, u0, u1, v0, v1):
    """Corners of the sub-rectangle [u0,u1]×[v0,v1] (fractions) of a face."""
    p = np.asarray(corners, dtype=np.float64)
    out = []
    for u, v in ((u0, v0), (u1, v0), (u1, v1), (u0, v1)):
        out.append((1 - u) * (1 - v) * p[0] + u * (1 - v) * p[1] + u * v * p[2] + (1 - u) * v * p[3])
    return out


def _parts(vehicle: Vehicle):
    """Boxes as lists of (depth key, [(polygon points 3-D, colour, normal)]) for painting."""
    _, length, width, body_h, uppers = TYPES[vehicle.vtype]
    hl, hw = length / 2, width / 2
    z0, z1 = CLEARANCE, CLEARANCE + body_h
    boxes = []
    body = []
    for name, normal, corners in _box(-hl, hl, -hw, hw, z0, z1):
        body.append((corners, vehicle.body_rgb, normal))
        if name in ("left", "right"):
            for xc in (-0.33 * length, 0.33 * length):  # wheels
                y = hw if name == "left" else -hw
                wheel = [(xc - 0.36, y, 0.0), (xc + 0.36, y, 0.0), (xc + 0.36, y, 0.62), (xc - 0.36, y, 0.62)]
                body.append((wheel, (22, 22, 24), normal))
            body.append((_on_face(corners, 0, 1, 0, 0.16), vehicle.bumper_rgb, normal))
            if vehicle.stripe is not None:
                h, rgb = vehicle.stripe
                body.append((_on_face(corners, 0.02, 0.98, h, h + 0.14), rgb, normal))
            if vehicle.decal is not None and name == "left":
                u, v, s, rgb = vehicle.decal
                body.append((_on_face(corners, u, u + s, v, v + s * 0.8), rgb, normal))
        elif name in ("front", "rear"):
            lamp = (250, 248, 225) if name == "front" else (210, 20, 20)
            body.append((_on_face(corners, 0, 1, 0, 0.2), vehicle.bumper_rgb, normal))
            body.append((_on_face(corners, 0.04, 0.24, 0.62, 0.86), lamp, normal))
            body.append((_on_face(corners, 0.76, 0.96, 0.62, 0.86), lamp, normal))
            if name == "front":
                body.append((_on_face(corners, 0.3, 0.7, 0.45, 0.8), (40, 40, 44), normal))
            plate = _on_face(corners, 0.34, 0.66, 0.22, 0.42)
            body.append((plate, (236, 236, 236), normal))
            for i, rgb in enumerate(vehicle.plate):
                body.append((_on_face(corners, 0.37 + 0.09 * i, 0.44 + 0.09 * i, 0.26, 0.38), rgb, normal))
    boxes.append(((0.0, 0.0, (z0 + z1) / 2), body))
    glass = (vehicle.tint, vehicle.tint, min(255, vehicle.tint + 12))
    top = z1
    for (f0, f1), height, has_glass in uppers:
        x0, x1 = f0 * length, f1 * length
        inset = 0.06 * width
        faces = []
        for name, normal, corners in _box(x0, x1, -hw + inset, hw - inset, z1, z1 + height):
            faces.append((corners, vehicle.body_rgb, normal))
            if has_glass and name != "top":
                faces.append((_on_face(corners, 0.1, 0.9, 0.12, 0.88), glass, normal))
        boxes.append((((x0 + x1) / 2, 0.0, z1 + height / 2), faces))
        top = max(top, z1 + height)
        if vehicle.roof_box is not None and has_glass:
            frac, rh = vehicle.roof_box
            cx = (x0 + x1) / 2
            half = frac * (x1 - x0) / 2
            faces = [(c, (60, 60, 66), n) for _, n, c in
                     _box(cx - half, cx + half, -hw * 0.5, hw * 0.5, z1 + height, z1 + height + rh)]
            boxes.append(((cx, 0.0, z1 + height + rh / 2), faces))
    return boxes


def render_vehicle(vehicle: Vehicle, camera: Camera, yaw: float, pitch: float, scale: float,
                   shift: tuple[float, float], bg_offset: tuple[int, int], occlusion: tuple | None,
                   size: int, noise: float, rng: np.random.Generator, margin: float = 0.08,
                   frame_resolution: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Return (RGB uint8 (size, size, 3), mask uint8 (size, size), 255 = visible vehicle).
    ``frame_resolution`` scales the camera's resolution for this frame (a far-away vehicle)."""
    s = max(16, int(round(size * camera.resolution * frame_resolution)))  # low resolution renders small
    ss = 2 * s  # supersampling
    a, p = np.deg2rad(yaw), np.deg2rad(pitch)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    view = np.array([np.cos(p), 0.0, np.sin(p)])  # towards the camera
    light = np.asarray(camera.light) / np.linalg.norm(camera.light)

    def project(pts):
        q = np.asarray(pts) @ rot.T
        return np.stack([q[:, 1] * -1.0, q[:, 2] * np.cos(p) - q[:, 0] * np.sin(p)], 1), q @ view

    boxes = _parts(vehicle)
    allpts = np.concatenate([np.asarray([pt for poly, _, _ in faces for pt in poly]) for _, faces in boxes])
    xy, _ = project(allpts)
    lo, hi = xy.min(0), xy.max(0)
    extent = max(hi - lo)
    k = scale * ss / extent
    center = (lo + hi) / 2
    offset = np.array([ss / 2 + shift[0] * ss, ss / 2 - shift[1] * ss])

    def to_px(pts):
        uv, _ = project(pts)
        uv = (uv - center) * k
        return [(offset[0] + u, offset[1] - v) for u, v in uv]

    canvas = Image.new("RGB", (ss, ss))
    mask = Image.new("L", (ss, ss), 0)
    draw, mdraw = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)
    order = sorted(boxes, key=lambda b: float(np.asarray(b[0]) @ rot.T @ view))
    for _, faces in order:
        for poly, rgb, normal in faces:
            n = rot @ np.asarray(normal, dtype=np.float64)
            if n @ view <= 1e-6:
                continue
            pts = to_px(poly)
            draw.polygon(pts, fill=_shade(rgb, 0.5 + 0.55 * max(0.0, float(n @ light))))
            mdraw.polygon(pts, fill=255)
    bg = camera.background
    y0, x0 = bg_offset
    bgimg = Image.fromarray(bg[y0:y0 + size, x0:x0 + size]).resize((ss, ss), Image.BILINEAR)
    img = Image.composite(canvas, bgimg, mask)
    # a detector's box: the vehicle's extent plus a margin, stretched to the crop size
    left, top, right, bottom = mask.getbbox() or (0, 0, ss, ss)
    mx, my = margin * (right - left), margin * (bottom - top)
    box = (max(0, int(left - mx)), max(0, int(top - my)), min(ss, int(right + mx) + 1), min(ss, int(bottom + my) + 1))
    img, mask = img.crop(box).resize((ss, ss), Image.BILINEAR), mask.crop(box).resize((ss, ss), Image.NEAREST)
    if occlusion is not None:  # a pole or a passing object in front of the vehicle
        ox, oy, ow, oh, rgb = occlusion
        rect = [ox * ss, oy * ss, (ox + ow) * ss, (oy + oh) * ss]
        ImageDraw.Draw(img).rectangle(rect, fill=tuple(rgb))
        ImageDraw.Draw(mask).rectangle(rect, fill=0)
    img = img.resize((s, s), Image.LANCZOS)
    mask = mask.resize((s, s), Image.BILINEAR)
    if camera.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(camera.blur * s / size))
    if s != size:
        img = img.resize((size, size), Image.BILINEAR)
        mask = mask.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    arr = arr * np.asarray(camera.gain, dtype=np.float32) * camera.brightness
    if noise > 0:
        arr += rng.normal(0.0, noise, arr.shape).astype(np.float32)
    rgb_out = np.clip(arr, 0, 255).astype(np.uint8)
    mask_out = (np.asarray(mask) >= 128).astype(np.uint8) * 255
    return rgb_out, mask_out


def camera_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A camera's scene texture: road, lane marks, kerb, vegetation or buildings, in its palette."""
    b = 2 * size
    road = rng.uniform(60, 140)
    tone = rng.uniform(-18, 18, size=3)
    img = Image.new("RGB", (b, b), tuple(int(road + t) for t in tone))
    d = ImageDraw.Draw(img)
    horizon = int(rng.uniform(0.1, 0.45) * b)
    scene = tuple(int(c) for c in rng.uniform(30, 200, size=3))
    d.rectangle([0, 0, b, horizon], fill=scene)
    for _ in range(int(rng.integers(3, 8))):  # buildings / trees
        x = rng.uniform(0, b)
        w, h = rng.uniform(0.05, 0.3) * b, rng.uniform(0.1, 0.8) * horizon
        d.rectangle([x, horizon - h, x + w, horizon], fill=tuple(int(c) for c in rng.uniform(20, 230, 3)))
    angle = rng.uniform(-0.6, 0.6)
    for i in range(int(rng.integers(2, 5))):  # lane marks
        x = rng.uniform(0, b)
        col = (235, 235, 235) if rng.random() < 0.7 else (230, 200, 40)
        d.line([(x, horizon), (x + angle * b, b)], fill=col, width=max(1, b // 48))
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.normal(0, 6, arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)

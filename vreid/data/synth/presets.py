"""Presets of the synthetic city: every signal the seed papers' methods exploit is a parameter."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SynthPreset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_train_ids: int = Field(ge=2)
    num_test_ids: int = Field(ge=2)
    num_cameras: int = Field(ge=2, description="cameras seen by training and test identities")
    test_only_cameras: int = Field(0, ge=0, description="extra cameras in the test split only (a new scenario, 003)")
    image_size: int = Field(64, ge=32, description="side of the square crops, pixels")
    cameras_per_id: tuple[int, int] = (2, 4)
    frames_per_track: tuple[int, int] = (4, 10)
    query_prob: float = Field(0.6, ge=0, le=1, description="chance that an (identity, camera) gets a query")
    # attributes and identity details
    color_skew: float = Field(1.2, ge=0, description="Zipf-like skew of colour frequencies (white/black common)")
    detail_prob: float = Field(0.6, ge=0, le=1, description="chance of each per-identity detail (stripe, decal, roof box)")
    # camera bias
    color_cast: float = Field(0.08, ge=0, le=0.5, description="max per-channel gain deviation of a camera")
    brightness: tuple[float, float] = (0.75, 1.2)
    blur: tuple[float, float] = (0.0, 1.1)
    resolution: tuple[float, float] = (0.45, 1.0)
    yaw_range: float = Field(70.0, ge=0, le=360, description="spread of viewing angles at one camera, degrees")
    pitch: tuple[float, float] = (8.0, 40.0)
    # per image
    scale: tuple[float, float] = (0.62, 0.95)
    box_margin: tuple[float, float] = Field((0.03, 0.15), description="detector box margin around the vehicle")
    occlusion_prob: float = Field(0.15, ge=0, le=1)
    approach_resolution: float = Field(
        1.0, gt=0, le=1, description="pixel resolution of a track's first frame relative to its last, rising "
        "linearly along the track: a vehicle approaching the camera has few pixels far away (CityFlow's "
        "low-quality frames, which 001 §3.4's weighted tracklet features down-weight); 1 = every frame alike")
    noise: float = Field(4.0, ge=0, description="pixel noise std, 0..255 scale")
    # time
    frame_interval_s: float = 0.5
    travel_time_s: tuple[float, float] = (40.0, 400.0)
    jpeg_quality: int = Field(92, ge=50, le=100)
    chunk_images: int = Field(400, ge=1, description="images per Ray task")

    @model_validator(mode="after")
    def _ranges(self) -> SynthPreset:
        for name in ("cameras_per_id", "frames_per_track", "brightness", "blur", "resolution", "pitch",
                     "scale", "box_margin", "travel_time_s"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: range ({lo}, {hi}) is inverted")
        if self.cameras_per_id[0] < 2:
            raise ValueError("cameras_per_id: identities must visit at least 2 cameras")
        if self.cameras_per_id[0] > self.num_cameras:
            raise ValueError("cameras_per_id: more cameras per identity than num_cameras")
        return self


PRESETS: dict[str, SynthPreset] = {
    # tests: a few hundred images, seconds
    "tiny": SynthPreset(num_train_ids=40, num_test_ids=10, num_cameras=4, cameras_per_id=(2, 3),
                        frames_per_track=(3, 5), image_size=48, chunk_images=200),
    # the main job: >= 150 identities, >= 6 cameras, >= 6,000 images
    "demo": SynthPreset(num_train_ids=160, num_test_ids=100, num_cameras=8, cameras_per_id=(3, 5),
                        frames_per_track=(5, 8), image_size=64, approach_resolution=0.35),
    # benchmarks: 100k+ images
    "city": SynthPreset(num_train_ids=2400, num_test_ids=1600, num_cameras=40, cameras_per_id=(3, 6),
                        frames_per_track=(6, 8), image_size=64, chunk_images=1000, approach_resolution=0.35),
}


def get_preset(name: str, **overrides) -> SynthPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown synth preset '{name}'; expected one of {sorted(PRESETS)}")
    if not overrides:
        return PRESETS[name]
    return SynthPreset.model_validate({**PRESETS[name].model_dump(), **overrides})

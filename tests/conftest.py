"""Shared fixtures: one Ray instance per test session, one tiny synthetic city."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from vreid.fault_points import ENV_VAR as PAUSE_POINTS

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# pause points (tests/pause_points.py): set before any Ray instance starts, so that its workers
# inherit it; a short path under /tmp, as unix socket paths are limited to 107 bytes
os.environ[PAUSE_POINTS] = tempfile.mkdtemp(prefix="vreid-pp-", dir="/tmp")


def pytest_unconfigure(config):
    shutil.rmtree(os.environ[PAUSE_POINTS], ignore_errors=True)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_city(tmp_path_factory, ray_session):
    """The `tiny` preset generated once for the whole session (read-only for tests)."""
    from vreid.data.synth import generate

    return generate(tmp_path_factory.mktemp("city") / "tiny", "tiny", seed=0, progress=False)


@pytest.fixture(scope="session")
def tiny_manifest(tiny_city):
    from vreid.data import load_manifest

    return load_manifest(tiny_city, "synth")


@pytest.fixture(scope="session")
def tiny_stores(tmp_path_factory, tiny_city, tiny_manifest, ray_session):
    """A run dir of the tiny config with two untrained exported models ('attr': attribute heads,
    'cam': a camera model) and their extracted test stores. Read-only for tests."""
    from pathlib import Path

    import torch

    from vreid.config import ModelConfig, load_config
    from vreid.features.extract import extract_features
    from vreid.models import build_model
    from vreid.models.trained import export_trained_model

    tmp = tmp_path_factory.mktemp("stores")
    cfg = load_config("configs/tiny.yaml", [f"run_dir={tmp / 'run'}", f"data.root={tiny_city}"])
    cfg.models = [cfg.models[1], ModelConfig(name="cam", backbone="resnet10t", task="camera", input_size=(48, 48))]
    torch.manual_seed(0)
    specs = {"attr": dict(backbone="resnet10t", head="attribute", task="reid", num_classes=5,
                          input_size=[48, 48], num_colors=10, num_types=7),
             "cam": dict(backbone="resnet10t", head="bnneck", task="camera", num_classes=4, input_size=[48, 48])}
    models = {}
    for name, args in specs.items():
        model = build_model(**{**args, "input_size": (48, 48)}).eval()
        meta = {"key": "k", "name": name, "class_ids": [1, 2, 3, 4] if name == "cam" else list(range(5))}
        export_trained_model(model.state_dict(), args, meta, Path(cfg.run_dir) / "models" / name)
        models[name] = model
    extract_features(cfg, tiny_manifest, ["test"])
    return cfg, models

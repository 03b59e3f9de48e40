"""Shared fixtures: one Ray instance per test session, one tiny synthetic city."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


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

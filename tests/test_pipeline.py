"""The main job's checks before any stage runs, and its report helpers."""

from __future__ import annotations

import os

import pytest

from vreid.config import load_config
from vreid.pipeline import check_cluster, check_run_dir, dataset_summary


def test_run_dir_must_be_writable(tmp_path):
    assert check_run_dir(str(tmp_path / "a" / "b")).is_dir()
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):  # running as root: permissions do not bind
            blocker = tmp_path / "file"
            blocker.write_text("x")
            with pytest.raises(ValueError, match="cannot be written"):
                check_run_dir(str(blocker / "run"))
        else:
            with pytest.raises(ValueError, match="cannot be written"):
                check_run_dir(str(ro / "run"))
    finally:
        os.chmod(ro, 0o700)
    with pytest.raises(ValueError, match="give a shared filesystem path"):
        check_run_dir("s3://bucket/run")


def test_gpu_config_on_a_cpu_cluster_fails_at_once(ray_session):
    cfg = load_config("configs/tiny.yaml", ["models.0.scaling.use_gpu=true", "models.0.scaling.gpus_per_worker=1"])
    with pytest.raises(RuntimeError, match=r"asks for GPUs \(bot\) but the cluster has none"):
        check_cluster(cfg)
    check_cluster(load_config("configs/tiny.yaml"))


def test_missing_dataset_root(tmp_path):
    from vreid.data import ManifestError, load_dataset

    cfg = load_config("configs/tiny.yaml", ["data.format=aic", f"data.root={tmp_path / 'none'}"])
    with pytest.raises(ManifestError, match="dataset root not found"):
        load_dataset(cfg.data)


def test_dataset_summary(tiny_manifest):
    text = dataset_summary(tiny_manifest)
    assert text.splitlines()[0].split() == ["split", "images", "ids", "cams", "tracks"]
    assert len(text.splitlines()) == 4

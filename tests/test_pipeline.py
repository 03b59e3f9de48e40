"""The main job's checks before any stage runs, and its report helpers."""

from __future__ import annotations

import os

import pytest

from vreid.config import load_config
from vreid.pipeline import check_cluster, check_run_dir, dataset_summary
from vreid.resources import InfeasibleResources


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
    with pytest.raises(InfeasibleResources, match=r"model 'bot': each of its 2 training worker\(s\) asks for "
                                                  r"\{CPU: 0.5, GPU: 1\}.*no autoscaler"):
        check_cluster(cfg)
    check_cluster(load_config("configs/tiny.yaml"))
    custom = load_config("configs/tiny.yaml", ["extract.resources_per_actor={accel: 1}"])
    with pytest.raises(InfeasibleResources, match=r"extraction: each model actor asks for \{CPU: 0.5, accel: 1\}"):
        check_cluster(custom)
    # told to wait (train.resource_wait_s): left to the stage, which asks the autoscaler
    check_cluster(load_config("configs/tiny.yaml", ["extract.resources_per_actor={accel: 1}", "train.resource_wait_s=5"]))


def test_missing_dataset_root(tmp_path):
    from vreid.data import ManifestError, load_dataset

    cfg = load_config("configs/tiny.yaml", ["data.format=aic", f"data.root={tmp_path / 'none'}"])
    with pytest.raises(ManifestError, match="dataset root not found"):
        load_dataset(cfg.data)


def test_dataset_summary(tiny_manifest):
    text = dataset_summary(tiny_manifest)
    assert text.splitlines()[0].split() == ["split", "images", "ids", "cams", "tracks"]
    assert len(text.splitlines()) == 4


def test_resource_requests_against_nodes_and_node_types():
    """The pre-flight arithmetic: each bundle on one node; node types count up to max_workers."""
    from vreid.resources import Capacity, NodeType, Request, check_requests

    head = [{"CPU": 2.0}]
    gpu_type = NodeType("gpu_worker", {"CPU": 1.0, "fake_gpu": 1.0}, 2)
    two = Request("model 'bot': each of its 2 training worker(s)", {"CPU": 0.5, "fake_gpu": 1}, 2)
    # no node has fake_gpu now, the autoscaler's type has: allowed to wait
    assert check_requests([two], Capacity(head, True, [gpu_type])) == [two]
    # three such workers need three nodes, the type goes up to two
    three = Request("model 'big'", {"CPU": 0.5, "fake_gpu": 1}, 3)
    with pytest.raises(InfeasibleResources, match=r"no node and no autoscaler node type can ever hold this: "
                                                  r"model 'big' asks for \{CPU: 0.5, fake_gpu: 1\} \(3 of them\).*"
                                                  r"gpu_worker \{CPU: 1, fake_gpu: 1\} \(up to 2\)"):
        check_requests([three], Capacity(head, True, [gpu_type]))
    # one bundle larger than any node: never, whatever the totals
    with pytest.raises(InfeasibleResources, match="can ever hold"):
        check_requests([Request("x", {"CPU": 1.5, "fake_gpu": 1})], Capacity(head, True, [gpu_type]))
    # an autoscaler whose node types are unknown: waits only when told to
    with pytest.raises(InfeasibleResources, match="train.resource_wait_s"):
        check_requests([two], Capacity(head, True, None))
    assert check_requests([two], Capacity(head, True, None), wait_s=10) == [two]
    # placed now: nothing waits
    assert check_requests([two], Capacity([{"CPU": 1.0, "fake_gpu": 2.0}], False, None)) == []

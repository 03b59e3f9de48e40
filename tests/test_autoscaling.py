"""Autoscaling for real on one machine (Ray's fake multi-node provider, tests/autoscaling.py): a
tiny pipeline whose models ask for the GPU stand-in resource makes the autoscaler start worker
nodes of cluster.yaml's GPU type from zero, the run completes on them, and the idle nodes are
removed after the idle timeout; a request that no node type can satisfy fails at once with the
message users see. The drivers run as subprocesses (`python jobs/pipeline.py`, as `ray job submit`
runs them on the head), so the session's own Ray instance is not involved."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from autoscaling import GPU_STANDIN, REPO, node_types_from_cluster_yaml, start_autoscaling_head, wait_for

pytestmark = [pytest.mark.autoscaling, pytest.mark.timeout(1500)]

IDLE_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def head():
    types, source = node_types_from_cluster_yaml()
    gpu_types = [t for t, spec in types.items() if GPU_STANDIN in spec["resources"]]
    assert gpu_types == ["gpu_worker"] and types["gpu_worker"]["min_workers"] == 0, types
    assert source["available_node_types"]["gpu_worker"]["resources"]["GPU"] == types["gpu_worker"]["resources"][GPU_STANDIN]
    h = start_autoscaling_head(types, head_cpus=1, idle_timeout_s=IDLE_TIMEOUT_S, max_workers=2)
    try:
        yield h
    finally:
        h.stop()


def _pipeline(head, tiny_city, run_dir, *overrides, timeout_s=1200):
    cmd = [sys.executable, "jobs/pipeline.py", "--config", "configs/tiny.yaml", "--set", f"run_dir={run_dir}",
           "--set", f"data.root={tiny_city}", *[a for o in overrides for a in ("--set", o)]]
    return subprocess.run(cmd, cwd=REPO, env=head.driver_env(), capture_output=True, text=True, timeout=timeout_s)


def test_models_on_autoscaled_nodes_then_nodes_removed(head, tiny_city, tmp_path):
    assert head.worker_nodes() == [], "the GPU type starts at zero nodes (min_workers: 0)"
    seen: dict[str, float] = {}
    stop = threading.Event()
    t0 = time.monotonic()

    def watch():
        while not stop.is_set():
            try:
                for n in head.worker_nodes():
                    seen.setdefault(n["node_id"], time.monotonic() - t0)
            except Exception:
                pass
            stop.wait(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        res = _pipeline(head, tiny_city, tmp_path / "run",
                        "models.0.scaling.num_workers=1", f"models.0.scaling.resources={{{GPU_STANDIN}: 1}}",
                        f"models.1.scaling.resources={{{GPU_STANDIN}: 1}}",
                        "models.0.recipe.0.epochs=1", "models.1.recipe.0.epochs=1", "tune.space={}",
                        "extract.actors=1", "extract.tta=[original]")
    finally:
        stop.set()
        watcher.join()
    run_s = time.monotonic() - t0
    assert res.returncode == 0, f"{res.stdout[-4000:]}\n{res.stderr[-6000:]}\n{head.log_tail()}"
    assert (tmp_path / "run" / "results" / "final" / "track2.txt").is_file()
    assert seen, "the autoscaler added no worker node"
    first_node_s = min(seen.values())
    _, removed_s = wait_for(lambda: head.worker_nodes() == [], 300, "idle worker nodes removed",
                            poll_s=1.0, on_timeout=head.log_tail)
    print(f"\nautoscaling: first worker node after {first_node_s:.1f} s, {len(seen)} node(s) in all, "
          f"run {run_s:.1f} s, nodes gone {removed_s:.1f} s after the run (idle timeout {IDLE_TIMEOUT_S} s)")


def test_request_no_node_type_can_hold_fails_at_once(head, tiny_city, tmp_path):
    t0 = time.monotonic()
    res = _pipeline(head, tiny_city, tmp_path / "run", f"models.0.scaling.resources={{{GPU_STANDIN}: 2}}",
                    timeout_s=300)
    took = time.monotonic() - t0
    assert res.returncode == 2, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert ("error: no node and no autoscaler node type can ever hold this: model 'bot': each of its 2 training "
            f"worker(s) asks for {{CPU: 0.5, {GPU_STANDIN}: 2}}") in res.stderr, res.stderr[-3000:]
    assert f"gpu_worker {{CPU: 1, {GPU_STANDIN}: 1}} (up to 2)" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "models").exists()
    print(f"\ninfeasible request: failed after {took:.1f} s (driver start included)")

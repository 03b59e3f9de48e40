"""A real autoscaling Ray cluster on this one machine, for tests: Ray's fake multi-node provider.

``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=FILE`` starts a head whose autoscaler
(the head's monitor process) launches and terminates worker *nodes* (each a raylet of its own,
started on this machine by ``ray.autoscaler._private.fake_multi_node.node_provider``) exactly as it
would launch and terminate cloud instances: for pending demand, and after ``idle_timeout_minutes``
without work.

The worker node types are derived from ``cluster.yaml`` (:func:`node_types_from_cluster_yaml`), so
that the test exercises the cluster users start with ``ray up``: the same type names and
``min_workers``, every GPU replaced by the custom resource :data:`GPU_STANDIN` (this machine has
no GPU, and a fake node cannot have one), CPUs scaled down to what a 2-core machine can hold.

(``ray.cluster_utils.AutoscalingCluster`` is not usable: it needs an example file the wheel does not
ship, and its ``start()`` runs ``ray stop --force``, which kills every Ray process on the machine.)

Everything this helper starts lives in its own temp dir under /tmp, with its own ports and auth
token; :meth:`AutoscalingHead.stop` ends the head's process group and every process whose command
line names that temp dir (the fake nodes are started by the monitor, outside the head's group).
Never ``ray stop``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ray_env import REPO, head_start_cmd, ray_env, temp_root, write_token

CLUSTER_YAML = REPO / "cluster.yaml"

GPU_STANDIN = "fake_gpu"  # the custom resource that stands in for a GPU on fake nodes
HEAD_TYPE = "ray.head.default"  # the fake provider's fixed name for the head's type
HEAD_START_TIMEOUT_S = 240


def node_types_from_cluster_yaml(path: Path = CLUSTER_YAML, *, cpus_per_node: float = 1,
                                 max_workers: int = 2) -> tuple[dict[str, Any], dict[str, Any]]:
    """The worker node types of ``cluster.yaml`` as fake-provider node types, and what was mapped.

    Kept from cluster.yaml: the type names, ``min_workers``, which types have GPUs (and how many).
    Changed: ``GPU: n`` becomes ``{GPU_STANDIN: n}``; ``CPU`` becomes ``cpus_per_node`` (a logical
    count: the fake nodes share this machine's cores); ``max_workers`` is capped at ``max_workers``.
    """
    cfg = yaml.safe_load(Path(path).read_text())
    out = {}
    for name, spec in cfg["available_node_types"].items():
        if name == cfg["head_node_type"]:
            continue
        res = dict(spec.get("resources", {}))
        fake: dict[str, Any] = {"CPU": cpus_per_node}
        if res.get("GPU"):
            fake[GPU_STANDIN] = res["GPU"]
        fake.update({k: v for k, v in res.items() if k not in ("CPU", "GPU")})
        out[name] = {"resources": fake, "node_config": {},
                     "min_workers": spec.get("min_workers", 0),
                     "max_workers": min(spec.get("max_workers", cfg.get("max_workers", 1)), max_workers)}
    return out, cfg


def autoscaler_config(gcs_address: str, head_cpus: float, worker_types: dict[str, Any], *,
                      idle_timeout_s: float, max_workers: int) -> dict[str, Any]:
    """An autoscaler config for the fake multi-node provider (the fields of Ray's
    ``fake_multi_node/example.yaml``, which the wheel does not ship)."""
    return {
        "cluster_name": "vreid-fake",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60.0,
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "head_node_type": HEAD_TYPE,
        "available_node_types": {HEAD_TYPE: {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
                                 **worker_types},
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


@dataclass
class AutoscalingHead:
    proc: subprocess.Popen
    temp_dir: Path
    gcs_address: str
    env: dict[str, str]
    log: Path
    config: dict[str, Any]
    children: set = field(default_factory=set)

    def driver_env(self) -> dict[str, str]:
        """The environment of a driver process that connects to this cluster."""
        return {**self.env, "RAY_ADDRESS": self.gcs_address}

    def log_tail(self, n: int = 3000) -> str:
        text = self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""
        logs = self.temp_dir / "ray" / "session_latest" / "logs"
        for name in ("monitor.log", "monitor.err", "raylet.err"):
            if (logs / name).exists():
                text += f"\n--- {name}\n" + (logs / name).read_text(errors="replace")[-n:]
        return text

    def nodes(self) -> list[dict[str, Any]]:
        """Alive nodes as the GCS lists them: {node_id, type, resources}, the head first."""
        out = subprocess.run(
            [sys.executable, "-c", _LIST_NODES], env=self.driver_env(), capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"listing nodes failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def worker_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.nodes() if not n["is_head"]]

    def stop(self) -> None:
        import psutil

        self._remember_children()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        marker = str(self.temp_dir)
        procs = set(self.children)
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(marker in part for part in (p.info["cmdline"] or [])):
                    procs.add(p)
            except psutil.Error:
                pass
        procs.discard(psutil.Process())
        for p in procs:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(list(procs), timeout=15)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=10)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _remember_children(self) -> None:
        import psutil

        try:
            self.children.update(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.Error:
            pass


# Run in a subprocess (the test process holds the session's own Ray instance).
_LIST_NODES = """
import json, ray
ray.init(log_to_driver=False, configure_logging=False)
nodes = [{"node_id": n["NodeID"], "is_head": n.get("Resources", {}).get("node:__internal_head__", 0) > 0,
          "resources": n.get("Resources", {})} for n in ray.nodes() if n["Alive"]]
print(json.dumps(sorted(nodes, key=lambda n: not n["is_head"])))
"""


def start_autoscaling_head(worker_types: dict[str, Any], *, head_cpus: float = 1, idle_timeout_s: float = 10,
                           max_workers: int = 2, extra_env: dict[str, str] | None = None) -> AutoscalingHead:
    """``RAY_FAKE_CLUSTER=1 ray start --head --block --autoscaling-config=...`` with its own temp dir,
    ports and auth token; returns once the GCS answers."""
    temp_dir = temp_root("vras")  # unix socket paths stay short
    _, token_file = write_token(temp_dir)
    cmd, gcs, _ = head_start_cmd(temp_dir / "ray", num_cpus=head_cpus, dashboard=False,
                                 extra=["--node-ip-address=127.0.0.1"])
    gcs_address = f"127.0.0.1:{gcs}"
    config = autoscaler_config(gcs_address, head_cpus, worker_types, idle_timeout_s=idle_timeout_s,
                               max_workers=max_workers)
    cfg_file = temp_dir / "autoscaler.yaml"
    cfg_file.write_text(yaml.safe_dump(config))
    cmd.append(f"--autoscaling-config={cfg_file}")
    # the fake nodes are started by the head's monitor and inherit its environment (this tree
    # first on PYTHONPATH, the token)
    env = ray_env(token_file, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", **(extra_env or {}))
    log = temp_dir / "head.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    head = AutoscalingHead(proc, temp_dir, gcs_address, env, log, config)
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    try:
        while True:
            head._remember_children()
            if proc.poll() is not None:
                raise RuntimeError(f"ray start --head exited with {proc.returncode}:\n{head.log_tail()}")
            if "Ray runtime started" in log.read_text(errors="replace"):
                head.nodes()
                return head
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray head not up in {HEAD_START_TIMEOUT_S} s:\n{head.log_tail()}")
            time.sleep(0.5)
    except BaseException:
        head.stop()
        raise


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.5,
             on_timeout: Callable[[], str] = lambda: "") -> tuple[Any, float]:
    """Poll ``condition`` until it returns something truthy; returns (it, seconds waited). The
    timeout is a failure guard, not a wait."""
    t0 = time.monotonic()
    while True:
        value = condition()
        if value:
            return value, time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}\n{on_timeout()}")
        time.sleep(poll_s)

"""A multi-node Ray cluster on this machine, for fault tests: a head and worker nodes, each its
own `ray start --block` process tree (own process group, temp dir, ports, CPUs and a custom
resource named after the node, so that work can be pinned to it), and the faults a cluster
sees: ``kill_node`` (SIGKILL to the node's whole process group: its raylet, object store and
workers die at once, as with a lost machine) and ``add_node`` (a node joins, e.g. a replacement).

Never `ray stop`: it would kill every Ray instance on the machine (the session's ``ray_session``
and other users'). Only the processes this harness started are signalled, by their process
groups and sessions, and whatever still names their temp dirs.

Drivers connect with ``ray.init(address=cluster.address)`` from a subprocess started with
``cluster.env`` (token authentication on, this tree first on PYTHONPATH): the pytest process may
already hold the session's local Ray instance (tests/conftest.py ``ray_session``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ray_env import REPO, head_start_cmd, node_port_args, ray_cli, ray_env, temp_root, write_token

START_TIMEOUT_S = 240  # a failure guard: a node is up when the GCS lists it ALIVE
POLL_S = 0.5
# a node whose `ray start` exits while starting (a chosen free port taken meanwhile, or on a
# loaded machine a raylet that gives up waiting for its agents) is started again, with new ports
START_ATTEMPTS = 3

# The GCS declares a node dead after health_check_failure_threshold missed checks: about 3 s
# here instead of Ray's default 30 s, so that a killed node's work is rescheduled promptly.
FAST_FAILURE_DETECTION = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


class NodeStartFailed(RuntimeError):
    """`ray start` of a node exited before the node registered."""


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    temp_dir: Path
    log: Path
    num_cpus: float
    resources: dict[str, float]
    killed: bool = False
    procs: set = field(default_factory=set)  # psutil.Process of its tree, remembered while it runs

    def remember(self) -> None:
        import psutil

        try:
            self.procs.update(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.Error:
            pass

    def members(self) -> list:
        """Every live process of this node: its process group / session (start_new_session makes
        `ray start` their leader), its remembered tree, and whatever names its temp dir."""
        import psutil

        self.remember()
        found = {p for p in self.procs if p.is_running()}
        marker = str(self.temp_dir)
        for p in psutil.process_iter(["cmdline"]):
            try:
                if p.pid == os.getpid():
                    continue
                if os.getsid(p.pid) == self.proc.pid or os.getpgid(p.pid) == self.proc.pid \
                        or any(marker in part for part in (p.info["cmdline"] or [])):
                    found.add(p)
            except (psutil.Error, ProcessLookupError, PermissionError):
                pass
        return sorted(found, key=lambda p: p.pid)

    def owns(self, pid: int) -> bool:
        return any(p.pid == pid for p in self.members())

    def log_tail(self, n: int = 3000) -> str:
        text = self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""
        logs = self.temp_dir / "session_latest" / "logs"
        for name in ("raylet.out", "gcs_server.out"):
            if (logs / name).exists():
                text += f"\n--- {self.name} {name}\n" + (logs / name).read_text(errors="replace")[-n:]
        return text


class Cluster:
    """``Cluster().start(workers={"node_a": 1, "node_b": 1})``; always ``shutdown()`` (the
    ``cluster`` fixtures do it in a finalizer)."""

    def __init__(self, head_cpus: float = 0, dashboard: bool = True, env: dict[str, str] | None = None,
                 worker_resources: dict[str, float] | None = None):
        self.root = temp_root("vrc")
        self.token, self.token_file = write_token(self.root)
        self.head_cpus = head_cpus
        self.worker_resources = dict(worker_resources or {})  # on every worker node, besides {name: 1}
        self.dashboard = dashboard
        self.nodes: dict[str, Node] = {}
        self.gcs_port = self.dashboard_port = 0
        # token authentication on, for the nodes, their workers, job drivers and CLI calls
        self.env = ray_env(self.token_file, RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
                           **FAST_FAILURE_DETECTION, **(env or {}))

    # ------------------------------------------------------------------ addresses

    @property
    def address(self) -> str:
        """The GCS address, for ``ray.init(address=...)`` and ``ray start --address``."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """For ``ray job submit --address`` and ``JobSubmissionClient``."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    # ------------------------------------------------------------------ start / stop

    def start(self, workers: dict[str, float] | None = None) -> "Cluster":
        try:
            self._start_head()
            for name, cpus in (workers or {}).items():
                self.add_node(name, cpus)
        except BaseException:
            self.shutdown()
            raise
        return self

    def _node_dir(self, name: str) -> Path:
        temp_dir = self.root / name
        if temp_dir.exists():  # a node re-added under the same name: a fresh machine
            shutil.rmtree(temp_dir, ignore_errors=True)
        temp_dir.mkdir()
        return temp_dir

    def _spawn(self, name: str, cmd: list[str], temp_dir: Path, num_cpus: float,
               resources: dict[str, float], env: dict[str, str] | None = None) -> Node:
        cmd = [*cmd, f"--resources={json.dumps(resources)}", "--object-store-memory=200000000"]
        log = self.root / f"{name}.log"
        with open(log, "a") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, env={**self.env, **(env or {})}, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(name, proc, temp_dir, log, num_cpus, resources)
        self.nodes[name] = node
        return node

    def _start_head(self) -> None:
        for attempt in range(START_ATTEMPTS):
            try:
                return self._try_start_head()
            except NodeStartFailed:
                if attempt == START_ATTEMPTS - 1:
                    raise
                self._discard("head")

    def _try_start_head(self) -> None:
        temp_dir = self._node_dir("head")
        cmd, self.gcs_port, self.dashboard_port = head_start_cmd(temp_dir, num_cpus=self.head_cpus,
                                                                 dashboard=self.dashboard)
        self._spawn("head", cmd, temp_dir, self.head_cpus, {"head": 1})
        self.wait_for(["head"])

    def add_node(self, name: str, num_cpus: float = 1, resources: dict[str, float] | None = None,
                 wait: bool = True, env: dict[str, str] | None = None, generic: bool = True) -> Node:
        """A worker node with ``num_cpus`` CPUs and the custom resource ``{name: 1}`` (plus the
        cluster's ``worker_resources`` unless not ``generic``, plus ``resources``); ``env``: added to
        its raylet's environment (e.g. ``RAY_memory_usage_threshold``); returns once the GCS lists
        it alive (``wait``)."""
        if name in self.nodes and not self.nodes[name].killed and self.nodes[name].proc.poll() is None:
            raise ValueError(f"node {name} is running")
        for attempt in range(START_ATTEMPTS):
            self.nodes.pop(name, None)
            temp_dir = self._node_dir(name)
            cmd = [ray_cli(), "start", "--block", "--disable-usage-stats", f"--address={self.address}",
                   f"--num-cpus={num_cpus:g}", "--num-gpus=0", *node_port_args(), f"--temp-dir={temp_dir}"]
            node = self._spawn(name, cmd, temp_dir, num_cpus,
                               {name: 1, **(self.worker_resources if generic else {}), **(resources or {})}, env)
            if not wait:
                return node
            try:
                self.wait_for([name])
                return node
            except NodeStartFailed:
                if attempt == START_ATTEMPTS - 1:
                    raise
                self._discard(name)
        raise AssertionError("unreachable")

    def _discard(self, name: str) -> None:
        """Kill what a failed start left and forget the node."""
        self.kill_node(name, wait_dead=False)
        self.nodes.pop(name)

    def kill_node(self, name: str, wait_dead: bool = True) -> None:
        """SIGKILL to every process of the node at once (raylet, object store, workers), as when
        the machine is lost; with ``wait_dead``, returns when the GCS has declared it dead."""
        import psutil

        node = self.nodes[name]
        procs = node.members()
        try:
            os.killpg(node.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=30)
        node.proc.wait(timeout=30)
        node.killed = True
        if wait_dead:
            self._poll(lambda alive: name not in alive, f"node {name} still alive after SIGKILL")

    def node_of(self, pid: int) -> str:
        """The name of the node whose process ``pid`` is (a worker that reached a pause point)."""
        for name, node in self.nodes.items():
            if not node.killed and node.owns(pid):
                return name
        raise LookupError(f"process {pid} belongs to no node of this cluster")

    def ensure(self, names: dict[str, float]) -> None:
        """Re-add any of ``names`` (node -> CPUs) that a previous test killed."""
        missing = [n for n, c in names.items() if n not in self.nodes or self.nodes[n].killed
                   or self.nodes[n].proc.poll() is not None]
        for n in missing:
            self.add_node(n, names[n])

    def shutdown(self) -> None:
        """Kill every node (workers first, then the head) and remove the temp dirs. Safe to call
        more than once and after a failed start."""
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            node = self.nodes[name]
            if not node.killed:
                try:
                    self.kill_node(name, wait_dead=False)
                except Exception:  # noqa: BLE001 - best effort; the sweep below catches the rest
                    pass
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ state

    def alive(self) -> dict[str, dict]:
        """node name -> state API record, for the nodes the GCS lists ALIVE (by their resource)."""
        status, body = self._http("/api/v0/nodes?limit=1000&detail=true")
        if status != 200:
            raise RuntimeError(f"state API answered {status}: {body[:500]}")
        out = {}
        for rec in json.loads(body)["data"]["result"]["result"]:
            if rec.get("state") != "ALIVE":
                continue
            names = [n for n in self.nodes if n in (rec.get("resources_total") or {})]
            for n in names:
                out[n] = rec
        return out

    def wait_for(self, names: list[str]) -> None:
        self._poll(lambda alive: all(n in alive for n in names), f"nodes {names} not registered")

    def _poll(self, done, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            for node in self.nodes.values():
                node.remember()
                if not node.killed and node.proc.poll() is not None:
                    raise NodeStartFailed(f"ray start for node {node.name} exited with {node.proc.returncode}:\n"
                                       f"{node.log_tail()}")
            try:
                if done(self.alive()):
                    return
            except (OSError, RuntimeError, KeyError, ValueError):
                pass  # the dashboard is not up yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} in {START_TIMEOUT_S} s:\n" +
                                   "\n".join(n.log_tail() for n in self.nodes.values()))
            time.sleep(POLL_S)

    def _http(self, path: str) -> tuple[int, str]:
        req = urllib.request.Request(self.dashboard_url + path, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    # ------------------------------------------------------------------ drivers

    def driver(self, code: str, *args: str, log: Path | None = None, **kw) -> subprocess.Popen:
        """A driver process running ``code`` (``sys.argv[1:]`` = ``args``) against this cluster;
        ``RAY_ADDRESS`` names it, so ``ray.init()`` connects here."""
        out = open(log, "w") if log else subprocess.DEVNULL
        try:
            return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO,
                                    env={**self.env, "RAY_ADDRESS": self.address}, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, **kw)
        finally:
            if log:
                out.close()

    def run_driver(self, code: str, *args: str, log: Path, timeout_s: float = 600) -> None:
        proc = self.driver(code, *args, log=log)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"driver not done in {timeout_s} s:\n{log.read_text()[-6000:]}") from None
        assert rc == 0, f"driver exited {rc}:\n{log.read_text()[-8000:]}"

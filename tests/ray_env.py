"""What every test that starts its own Ray processes (`ray start`) shares: the `ray` CLI of this
venv, free ports, a temp dir of its own under /tmp, a token of its own, and the environment of
the nodes, drivers and CLI calls (token authentication on).

Used by tests/cluster.py (multi-node cluster), tests/autoscaling.py (fake autoscaling cluster)
and tests/test_job_submit.py (a head for `ray job submit`). Never `ray stop`: it would kill every
Ray instance on the machine; each helper stops only the processes it started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Variables of an outer Ray instance (the session's ray_session, a user's cluster) that would
# point the new processes elsewhere.
_OUTER = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")


def ray_cli() -> str:
    ray = Path(sys.executable).with_name("ray")
    return str(ray) if ray.exists() else shutil.which("ray")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now (a port may be taken before it is used: callers that start
    nodes retry a start that fails)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def temp_root(prefix: str) -> Path:
    """A fresh dir under /tmp: unix socket paths below it (<root>/<node>/session_.../sockets/...)
    must stay under 107 bytes, so keep ``prefix`` short."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def write_token(root: Path) -> tuple[str, Path]:
    """A new auth token in ``root/auth_token`` (mode 0600); returns (token, file)."""
    token = secrets.token_hex(32)
    path = Path(root) / "auth_token"
    path.write_text(token)
    path.chmod(0o600)
    return token, path


def ray_env(token_file: Path, *, repo_on_path: bool = True, **extra: str) -> dict[str, str]:
    """This process's environment for Ray processes that use the token in ``token_file``: token
    authentication on for the nodes, every process they start (workers, job drivers) and CLI
    calls; the token is the test's own, not ~/.ray/auth_token. ``repo_on_path``: this tree first
    on PYTHONPATH (workers import this checkout, not another install). ``extra`` is added last."""
    env = {k: v for k, v in os.environ.items() if k not in _OUTER}
    env.update(
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file),
        RAY_USAGE_STATS_ENABLED="0",
        # SIGTERM to `ray start --block` would first wait up to 30 s for the node to drain
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
    )
    if repo_on_path:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                           if p and Path(p).resolve() != REPO])
    env.update(extra)
    return env


def node_port_args() -> list[str]:
    """`ray start` flags giving a node's own servers free ports (several nodes on one machine)."""
    node_mgr, obj_mgr, metrics, agent_http, agent_grpc, rt_env = free_ports(6)
    return [f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
            f"--metrics-export-port={metrics}", f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={rt_env}"]


def head_start_cmd(temp_dir: Path, *, num_cpus: float, dashboard: bool = True,
                   extra: list[str] | None = None) -> tuple[list[str], int, int]:
    """``ray start --head --block`` on free ports, its temp dir ``temp_dir``; returns
    (command, GCS port, dashboard port). The dashboard, when on, listens on loopback only."""
    gcs, dash, client = free_ports(3)
    dash_args = ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"] \
        if dashboard else ["--include-dashboard=false", f"--dashboard-port={dash}"]
    cmd = [ray_cli(), "start", "--head", "--block", "--disable-usage-stats", f"--port={gcs}",
           f"--ray-client-server-port={client}", f"--num-cpus={num_cpus:g}", "--num-gpus=0",
           *dash_args, *node_port_args(), f"--temp-dir={temp_dir}", *(extra or [])]
    return cmd, gcs, dash

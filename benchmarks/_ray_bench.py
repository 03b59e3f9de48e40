"""What the benchmarks share: the process setup Ray reads at import, one local Ray instance the
size of this machine, best-of-N timing, and the JSON line each of them ends with.

Imported by the scripts as ``_ray_bench`` (their own directory is first on ``sys.path``); the
leading underscore keeps ``make bench`` from running it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NUM_CPUS = 2
RAY_WORKER_NICENESS = 15  # Ray's default RAY_worker_niceness

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# a shared, loaded machine can take longer than Ray's 30-60 s to start the node's agents
os.environ.setdefault("RAY_agent_register_timeout_ms", "300000")
sys.path.insert(0, str(ROOT))


def start_ray(match_niceness: bool) -> int:
    """A local Ray instance with ``NUM_CPUS``. Ray starts its workers at niceness 15: with
    ``match_niceness`` this process lowers itself to the same, so that a plain loop run here
    competes with other load on equal terms. Returns this process's niceness."""
    import ray

    ray.init(num_cpus=NUM_CPUS, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return os.nice(max(0, RAY_WORKER_NICENESS - os.nice(0))) if match_niceness else os.nice(0)


def best_of(fn, repeats: int) -> tuple[float, object]:
    """The best wall time of ``repeats`` calls of ``fn`` and the last call's result."""
    import time

    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def emit(result: dict[str, Any]) -> dict[str, Any]:
    """Add the versions and the load average, stop Ray, print ``result`` as the last line."""
    import ray
    import torch

    result.update({"torch": torch.__version__, "ray": ray.__version__, "load1": round(os.getloadavg()[0], 2)})
    ray.shutdown()
    print(json.dumps(result), flush=True)
    return result

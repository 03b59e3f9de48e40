"""What a Ray cluster can place, now and once its autoscaler has added nodes (the pre-flight checks).

A request is one bundle of resources (a training worker, an extraction actor, a Tune trial, the
post-processing actor) wanted ``count`` times. It is

- *placeable now* when the alive nodes' total resources hold ``count`` such bundles (each bundle on
  one node);
- *placeable later* when the alive nodes plus every autoscaler node type, at its ``max_workers``,
  hold them: the request is allowed to wait (Ray Train, Data and Tune wait for the nodes, which the
  autoscaler launches for the pending demand);
- *infeasible* otherwise: it fails at once, naming the request, the nodes and the node types
  (Train V2 would retry an infeasible worker group forever, Ray Data and Tune would hang).

The autoscaler's node types come from the cluster config the GCS holds (autoscaler v2, KubeRay) or
else from the ``--autoscaling-config`` file of the head's monitor process, read where the driver runs
on the head (``ray job submit``; the file ``ray up`` writes). A cluster with an autoscaler whose node
types cannot be read is treated as able to provide anything; a cluster without an autoscaler as
the nodes it has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from vreid.errors import InputError

log = logging.getLogger("vreid.resources")

EPS = 1e-9
IGNORED = ("memory", "object_store_memory")  # Ray's memory accounting: not compared here


class InfeasibleResources(InputError):
    """The cluster cannot provide what a stage asks for, now or after autoscaling."""


@dataclass
class Request:
    who: str  # e.g. "model 'bot': each of its 2 training worker(s)"
    bundle: dict[str, float]
    count: int = 1
    field: str = ""  # the config fields to change


@dataclass
class NodeType:
    name: str
    resources: dict[str, float]
    max_count: int  # -1: unbounded


@dataclass
class Capacity:
    nodes: list[dict[str, float]]
    autoscaler: bool = False
    node_types: list[NodeType] | None = None  # None: none known (no autoscaler, or types unreadable)
    source: str = ""
    notes: list[str] = field(default_factory=list)


def fmt(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in bundle.items() if v) + "}"


def _clean(bundle: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in bundle.items() if v and k not in IGNORED and not k.startswith("node:")}


def placeable(bundle: dict[str, float], count: int, nodes: list[dict[str, float]]) -> int:
    """How many of ``count`` bundles fit on ``nodes`` (their total resources), first fit."""
    free = [dict(n) for n in nodes]
    need = _clean(bundle)
    placed = 0
    for node in free:
        while placed < count and all(node.get(k, 0.0) + EPS >= v for k, v in need.items()):
            for k, v in need.items():
                node[k] = node.get(k, 0.0) - v
            placed += 1
            if not need:
                return count
    return placed


def _monitor_config_path(gcs_address: str) -> str | None | bool:
    """The ``--autoscaling-config`` of the monitor process (the v1 autoscaler) of this cluster's head
    when it runs on this machine; False when that monitor has none (a local ``ray.init`` or a
    ``ray start`` cluster without autoscaling), None when no monitor of this cluster runs here."""
    import psutil

    port = gcs_address.rsplit(":", 1)[-1]
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
        except psutil.Error:
            continue
        if not any(c.endswith("monitor.py") for c in cmd):
            continue
        args = dict(a.split("=", 1) for a in cmd if a.startswith("--") and "=" in a)
        if args.get("--gcs-address", "").rsplit(":", 1)[-1] == port:
            return args.get("--autoscaling-config") or False
    return None


def _types_from_yaml(path: str) -> list[NodeType] | None:
    import os

    import yaml

    with open(os.path.expanduser(path)) as f:
        cfg = yaml.safe_load(f)
    head = cfg.get("head_node_type")
    types = []
    for name, spec in (cfg.get("available_node_types") or {}).items():
        if name == head:
            continue
        if not spec.get("resources"):
            return None  # resources filled in by the cloud provider: not known here
        types.append(NodeType(name, _clean(spec["resources"]), int(spec.get("max_workers", cfg.get("max_workers", 0)))))
    return types


def cluster_capacity() -> Capacity:
    """The alive nodes and, where an autoscaler runs, its worker node types."""
    import ray
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    nodes = [_clean(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    cap = Capacity(nodes)
    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # an older GCS without the key
        config = None
    if config is not None and config.node_group_configs:
        cap.autoscaler, cap.source = True, "the cluster config in the GCS"
        cap.node_types = [NodeType(g.name, _clean(dict(g.resources)), g.max_count) for g in config.node_group_configs
                          if g.max_count != 0]
        return cap
    try:
        cap.autoscaler = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS) is not None
    except Exception:
        cap.autoscaler = False
    if not cap.autoscaler:
        return cap
    try:
        path = _monitor_config_path(ray.get_runtime_context().gcs_address)
        if path is False:  # the head's monitor runs here without an autoscaling config
            cap.autoscaler = False
            return cap
        if path:
            cap.node_types, cap.source = _types_from_yaml(path), path
    except Exception as exc:  # unreadable: treated as unknown node types
        cap.notes.append(f"the autoscaler's node types could not be read: {exc}")
    if cap.node_types is None:
        cap.notes.append("an autoscaler runs but its node types are not known here")
    return cap


def _eventual_nodes(cap: Capacity, count: int) -> list[dict[str, float]]:
    extra = []
    for t in cap.node_types or []:
        extra += [t.resources] * (count if t.max_count < 0 else min(t.max_count, count))
    return cap.nodes + extra


def describe(cap: Capacity) -> str:
    kinds: dict[str, int] = {}
    for n in cap.nodes:
        kinds[fmt(n)] = kinds.get(fmt(n), 0) + 1
    text = "the cluster's nodes: " + (", ".join(f"{c} x {k}" for k, c in kinds.items()) or "none")
    if cap.node_types is not None:
        text += "; the autoscaler's node types: " + (", ".join(
            f"{t.name} {fmt(t.resources)} (up to {t.max_count if t.max_count >= 0 else 'any number'})"
            for t in cap.node_types) or "none")
    elif not cap.autoscaler:
        text += "; no autoscaler"
    return text


def check_requests(requests: list[Request], cap: Capacity | None = None, *, wait_s: float = 0.0) -> list[Request]:
    """Raise :class:`InfeasibleResources` for the requests no node and no node type can ever hold
    (and, with node types unknown and ``wait_s`` 0, for those the nodes cannot hold now); returns
    the requests that wait for the autoscaler (logged)."""
    cap = cap or cluster_capacity()
    bad, waiting = [], []
    for r in requests:
        if placeable(r.bundle, r.count, cap.nodes) >= r.count:
            continue
        if cap.node_types is not None:
            if placeable(r.bundle, r.count, _eventual_nodes(cap, r.count)) >= r.count:
                waiting.append(r)
                continue
            bad.append(r)
        else:  # nodes as they are, or an autoscaler of unknown node types: waits only when told to
            (waiting if wait_s > 0 else bad).append(r)
    for r in waiting:
        log.info("%s asks for %s x %d: not on the cluster's nodes now, waiting for the autoscaler to add them",
                 r.who, fmt(r.bundle), r.count)
    if bad:
        unknown = cap.node_types is None and cap.autoscaler
        hint = ("; set train.resource_wait_s to wait for the autoscaler, whose node types are not known here"
                if unknown else
                "; lower the request or add a node type that has these resources (cluster.yaml available_node_types)"
                if cap.node_types is not None else
                "; lower the request, start nodes that have these resources (`ray start --resources`), or "
                "set train.resource_wait_s to wait for nodes to join")
        lines = [f"{r.who} asks for {fmt(r.bundle)}" + (f" ({r.count} of them)" if r.count > 1 else "")
                 + (f" [{r.field}]" if r.field else "") for r in bad]
        raise InfeasibleResources(
            ("no node and no autoscaler node type can ever hold this: " if cap.node_types is not None
             else "no node of the cluster can hold this: ") + "; ".join(lines) + f" ({describe(cap)})" + hint)
    return waiting


def model_request(m) -> Request:
    s = m.scaling
    bundle = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {}), **s.resources}
    return Request(f"model '{m.name}': each of its {s.num_workers} training worker(s)", bundle, s.num_workers,
                   f"models[{m.name}].scaling")


def run_requests(cfg) -> list[Request]:
    """Every request of a run: training workers, extraction actors and decode tasks, Tune trials,
    the post-processing actor."""
    e = cfg.extract
    reqs = [model_request(m) for m in cfg.models]
    reqs.append(Request("extraction: each model actor", {"CPU": e.cpus_per_actor, "GPU": e.num_gpus_per_actor,
                                                         **e.resources_per_actor}, 1, "extract"))
    reqs.append(Request("extraction: each decode task", {"CPU": e.cpus_per_decode_task}, 1, "extract"))
    if cfg.tune.space:
        reqs.append(Request("tune: each trial", {"CPU": cfg.tune.cpus_per_trial, **cfg.tune.resources_per_trial}, 1,
                            "tune"))
    reqs.append(Request("post-processing: its actor", {"CPU": 1.0, **cfg.postprocess.actor_resources}, 1,
                        "postprocess.actor_resources"))
    return reqs

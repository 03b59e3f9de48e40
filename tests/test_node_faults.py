"""Lost nodes on a real multi-node Ray cluster (tests/cluster.py: a head and two worker nodes on
this machine, each its own `ray start`): a node is killed the way a lost machine dies (SIGKILL to
all of its processes) while the work on it waits at a pause point (vreid/fault_points.py), so
the fault lands at the same place on every run, never by racing the work.

Layout: the head (1 CPU, resource ``head``) runs the drivers; ``node_a`` and ``node_b`` (1 CPU
each, resources ``node_a`` / ``node_b`` and ``worker``) run the work that is interrupted, which
asks for ``worker`` so that it can move to the surviving node. A killed node is added back
before the next test (``Cluster.ensure``).

The drivers run as subprocesses connected with ``ray.init(address=...)``: this pytest process
may hold the session's local Ray instance (conftest ``ray_session``).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from cluster import Cluster
from pause_points import PausePoint
from ray_env import REPO, ray_cli

pytestmark = pytest.mark.node_faults

WORKERS = {"node_a": 1, "node_b": 1}
DRIVER_TIMEOUT_S = 600

# One driver for every stage: `python -c DRIVER <stage> <result.json> <overrides as JSON>`
DRIVER = r'''
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
import ray
ray.init(log_to_driver=False)
from vreid.config import load_config
from vreid.data import load_dataset
stage, out, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cfg = load_config("configs/tiny.yaml", overrides)
manifest = load_dataset(cfg.data)
result = {}
if stage == "train":
    from vreid.train.launcher import train_models
    result = {r.name: {"status": r.status, "error": r.error} for r in train_models(cfg, manifest)}
elif stage == "extract":
    from vreid.features.extract import extract_features
    result = extract_features(cfg, manifest, ["test", "val"])
elif stage == "postprocess":
    from vreid.postprocess.actor import postprocess_run
    for name in ("reference", "final"):
        result[name] = postprocess_run(cfg, cfg.postprocess.model_copy(update={"name": name}))["out_dir"]
elif stage == "tune":
    from vreid.postprocess.actor import load_inputs
    from vreid.tune.sweep import run_sweep
    r = run_sweep(cfg, load_inputs(cfg, manifest, "val"))
    result = {k: v for k, v in r.items() if k != "best_config"}
open(out, "w").write(json.dumps(result, default=str))
'''


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(head_cpus=1, worker_resources={"worker": 1})
    try:
        c.start(WORKERS)
        yield c
    finally:
        c.shutdown()


@pytest.fixture
def nodes(cluster):
    """The cluster with both worker nodes up (a previous test may have killed one)."""
    cluster.ensure(WORKERS)
    return cluster


class Driver:
    def __init__(self, cluster: Cluster, stage: str, tmp: Path, overrides: list[str]):
        self.log, self.out = tmp / f"{stage}-driver.log", tmp / f"{stage}-result.json"
        self.proc = cluster.driver(DRIVER, stage, str(self.out), json.dumps(overrides), log=self.log)
        self.t0 = time.monotonic()

    def result(self) -> dict:
        try:
            rc = self.proc.wait(timeout=DRIVER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            pytest.fail(f"driver not done in {DRIVER_TIMEOUT_S} s:\n{self.log.read_text()[-6000:]}")
        self.seconds = time.monotonic() - self.t0
        assert rc == 0, f"driver exited {rc}:\n{self.log.read_text()[-8000:]}"
        return json.loads(self.out.read_text())


def _next(point: PausePoint, driver: Driver):
    """The next arrival at ``point``; fails at once when the driver exits meanwhile."""
    while not select.select([point.server], [], [], 0.5)[0]:
        if driver.proc.poll() is not None:
            pytest.fail(f"the driver exited ({driver.proc.returncode}) before reaching {point.path}:\n"
                        f"{driver.log.read_text()[-6000:]}")
    return point.next()


def _hold(point: PausePoint, driver: Driver, pred) -> tuple[object, list[dict]]:
    """Let arrivals go on until one satisfies ``pred``; returns it (held) and every arrival's details."""
    seen = []
    while True:
        arrival = _next(point, driver)
        seen.append(arrival.info)
        if pred(arrival.info):
            return arrival, seen
        arrival.release()


def _locate(cluster: Cluster):
    def hook(info: dict) -> None:
        try:
            info["node"] = cluster.node_of(info["pid"])
        except LookupError:
            info["node"] = None
    return hook


def _base(run: Path, tiny_city) -> list[str]:
    return [f"run_dir={run}", f"data.root={tiny_city}"]


# ----------------------------------------------------------------------------- training


def test_training_resumes_on_the_other_node(nodes, tmp_path, tiny_city):
    """Kill the node running `bot`'s worker at the start of its last epoch (epochs 0 and 1 are
    checkpointed): bot resumes from the epoch-1 checkpoint on the other worker node, epochs 0
    and 1 are not trained again, `attr` (on the head) trains on untouched; both load."""
    from vreid.models.trained import load_trained_model, read_trained_meta

    run = tmp_path / "run"
    overrides = _base(run, tiny_city) + [
        "models.0.scaling={num_workers: 1, cpus_per_worker: 1, resources: {worker: 0.01}}",
        "models.1.scaling={num_workers: 1, cpus_per_worker: 0.5, resources: {head: 0.01}}"]
    with PausePoint("train.epoch_start") as point:
        driver = Driver(nodes, "train", tmp_path, overrides)
        held, before = _hold(point, driver, lambda i: i["model"] == "bot" and i["epoch"] == 2)
        lost = nodes.node_of(held.info["pid"])
        assert lost in WORKERS
        nodes.kill_node(lost)
        after = point.release_all_in_background(_locate(nodes))
        result = driver.result()
    assert result == {"bot": {"status": "trained", "error": None}, "attr": {"status": "trained", "error": None}}
    arrivals = before + after
    bot = [i["epoch"] for i in arrivals if i["model"] == "bot"]
    attr = [i["epoch"] for i in arrivals if i["model"] == "attr"]
    assert bot == [0, 1, 2, 2], bot  # epoch 2 begun on the lost node, then redone; 0 and 1 once
    assert sorted(attr) == [0, 1, 2], attr  # the other model was not restarted
    resumed = [i for i in after if i["model"] == "bot"]
    assert resumed[0]["node"] not in (lost, None), resumed  # on the surviving worker node
    for name in ("bot", "attr"):
        meta = read_trained_meta(run / "models" / name)
        epochs = [h["epoch"] for h in meta["history"] if h["epoch"] >= 0]
        assert epochs == [0, 1, 2], (name, epochs)  # one history entry per epoch: none redone or lost
        load_trained_model(run / "models" / name)
    print(f"\ntraining: killed {lost} at bot epoch 2 start; bot epochs run {bot}, resumed on "
          f"{resumed[0]['node']}; attr epochs {sorted(attr)}; {driver.seconds:.0f} s")


# ----------------------------------------------------------------------------- feature stores


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_city):
    """A run directory holding the tiny config's two models, untrained and exported (training is
    the test above); overrides that place extraction, post-processing and Tune on worker nodes."""
    import torch

    from vreid.models import build_model
    from vreid.models.trained import export_trained_model

    run = tmp_path_factory.mktemp("faults") / "run"
    torch.manual_seed(0)
    specs = {"bot": dict(backbone="resnet10t", head="bnneck", task="reid", num_classes=5, input_size=[48, 48]),
             "attr": dict(backbone="resnet10t", head="attribute", task="reid", num_classes=5, input_size=[48, 48],
                          num_colors=10, num_types=7)}
    for name, args in specs.items():
        model = build_model(**{**args, "input_size": (48, 48)}).eval()
        export_trained_model(model.state_dict(), args, {"key": "k", "name": name, "class_ids": list(range(5))},
                             run / "models" / name)
    return run, _base(run, tiny_city) + [
        "extract.resources_per_actor={worker: 0.01}",
        "postprocess.actor_resources={worker: 0.01}",
        "tune.resources_per_trial={worker: 0.01}"]


def _uris(run: Path) -> dict[str, str]:
    from vreid.features.store import store_uri

    return {f"{m}/{s}": store_uri(str(run), m, s) for m in ("bot", "attr") for s in ("test", "val")}


def test_extraction_completes_after_losing_an_actor_node(nodes, exported, tmp_path, tiny_city, tiny_manifest):
    """Kill the node of the first extraction actor that reaches a batch: nothing is visible to
    readers while the pass runs; then every store holds exactly one row per image."""
    from vreid.config import load_config
    from vreid.data import split_table
    from vreid.features.store import SUCCESS, StoreError, load_features, read_success
    from vreid.train.launcher import training_manifest

    run, overrides = exported
    uris = _uris(run)
    with PausePoint("extract.batch") as point:
        driver = Driver(nodes, "extract", tmp_path, overrides)
        held = _next(point, driver)
        lost = nodes.node_of(held.info["pid"])
        assert lost in WORKERS
        # mid-pass, readers see no store: no marker, and load_features refuses
        assert not list(run.rglob(SUCCESS)) or all(read_success(u) is None for u in uris.values())
        with pytest.raises(StoreError, match="no complete feature store"):
            load_features(uris["bot/test"], tiny_manifest, "query")
        nodes.kill_node(lost)
        after = point.release_all_in_background(_locate(nodes))
        driver.result()
    cfg = load_config("configs/tiny.yaml", overrides)
    val = training_manifest(cfg, tiny_manifest)
    expected = {"test": tiny_manifest, "val": val}
    rows: dict[str, int] = {}  # per model: one pass over its test + validation rows
    for key, uri in uris.items():
        store_set = key.split("/")[1]
        table = expected[store_set]
        ids = pads.dataset(uri, format="parquet").to_table(columns=["image_id"]).column("image_id").to_pylist()
        want = sorted(split_table(table, "query").column("image_id").to_pylist()
                      + split_table(table, "gallery").column("image_id").to_pylist())
        assert sorted(ids) == want, f"{key}: {len(ids)} rows ({len(set(ids))} distinct), expected {len(want)}"
        assert read_success(uri)["rows"] == len(want)
        for split in ("query", "gallery"):
            load_features(uri, table, split)  # the readers' own validation
        rows[key.split("/")[0]] = rows.get(key.split("/")[0], 0) + len(want)
    assert not list(run.rglob("*.tmp")), "a temporary store directory was left behind"
    batches = sum(-(-n // cfg.extract.batch_size) for n in rows.values())
    # (Ray Data re-batches blocks for the actors: the count of batches is a figure, not an assertion)
    print(f"\nextraction: killed {lost} holding an actor; {sum(rows.values())} rows in {len(uris)} stores, "
          f"{1 + len(after)} batches reached actors (~{batches} batches of rows); {driver.seconds:.0f} s")


@pytest.fixture(scope="module")
def stores(cluster, exported, tmp_path_factory):
    """The stores of ``exported`` (extracted by the test above, or here when it ran alone)."""
    from vreid.features.store import read_success

    run, overrides = exported
    if not all(read_success(u) for u in _uris(run).values()):
        cluster.ensure(WORKERS)
        Driver(cluster, "extract", tmp_path_factory.mktemp("extract"), overrides).result()
    return exported


# ----------------------------------------------------------------------------- post-processing


def test_postprocess_actor_retried_on_the_other_node(nodes, stores, tmp_path):
    """The same post-processing twice: `reference` undisturbed, `final` with the node of its actor
    killed while it runs; the actor is restarted on the other node and the results are identical."""
    run, overrides = stores
    with PausePoint("postprocess.run") as point:
        driver = Driver(nodes, "postprocess", tmp_path, overrides)
        held, before = _hold(point, driver, lambda i: i["results"] == "final")
        lost = nodes.node_of(held.info["pid"])
        assert lost in WORKERS
        nodes.kill_node(lost)
        after = point.release_all_in_background(_locate(nodes))
        out = driver.result()
    retried = [i for i in after if i["results"] == "final"]
    assert len(retried) == 1 and retried[0]["node"] not in (lost, None), retried
    ref, final = Path(out["reference"]), Path(out["final"])
    assert (ref / "track2.txt").read_bytes() == (final / "track2.txt").read_bytes()
    assert pq.read_table(ref / "rankings.parquet").equals(pq.read_table(final / "rankings.parquet"))
    m_ref, m_final = (json.loads((d / "metrics.json").read_text()) for d in (ref, final))
    assert m_ref["final"] == m_final["final"] and m_ref["ablation"] == m_final["ablation"]
    print(f"\npostprocess: killed {lost} holding the actor; retried on {retried[0]['node']} "
          f"({len(retried)} retry), results identical; {driver.seconds:.0f} s")


# ----------------------------------------------------------------------------- Tune


def test_tune_sweep_retries_the_trials_of_a_lost_node(nodes, stores, tmp_path):
    """Kill the node of the first trial that reaches `tune.trial` (before it reports): Tune starts
    that trial again on the surviving worker node (``tune.max_failures``) and the sweep finishes in
    the same run: every trial once in trials.csv with a score, none failed, the best YAML written."""
    import pandas as pd

    run, overrides = stores
    name = "lost-node"
    overrides = overrides + [f"tune.name={name}", "tune.num_samples=4", "tune.max_concurrent_trials=2"]
    with PausePoint("tune.trial") as point:
        driver = Driver(nodes, "tune", tmp_path, overrides)
        held = _next(point, driver)
        lost = nodes.node_of(held.info["pid"])
        assert lost in WORKERS
        nodes.kill_node(lost)
        after = point.release_all_in_background(_locate(nodes))
        result = driver.result()
    out = run / "tune" / name
    assert result["num_trials"] == 4 and result["failed_trials"] == 0, result
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 4 and trials["trial_id"].is_unique, trials[["trial_id", "mAP"]]
    assert trials["mAP"].notna().all(), trials[["trial_id", "mAP"]]
    assert (out / "best_postprocess.yaml").is_file() and (out / "summary.json").is_file()
    assert not list(out.glob(".*.tmp-*")), "a temporary best YAML / summary was left behind"
    # the held trial's parameters reached the pause point again, on a node still alive
    again = [i for i in after if i["params"] == held.info["params"]]
    assert again and all(i["node"] not in (lost, None) for i in again), (held.info, after)
    assert len(after) >= 4, after  # 3 other trials + the retry (a trial killed with it is retried too)
    print(f"\ntune: killed {lost} holding a trial; {len(after)} trial starts after the kill "
          f"({len(after) - 3} redone), {len(trials)} trials in trials.csv, none failed; {driver.seconds:.0f} s")


# ----------------------------------------------------------------------------- the driver


class Job:
    """jobs/pipeline.py submitted to the cluster's head (`ray job submit`, token auth on); the
    driver runs this tree (the cluster's PYTHONPATH), no working dir is uploaded."""

    def __init__(self, cluster: Cluster, run: Path, city: Path, overrides: list[str]):
        import secrets
        import shlex

        from ray.job_submission import JobSubmissionClient

        self.cluster = cluster
        self.client = JobSubmissionClient(cluster.dashboard_url, headers={"Authorization": f"Bearer {cluster.token}"})
        argv = [sys.executable, str(REPO / "jobs" / "pipeline.py"), "--config", str(REPO / "configs" / "tiny.yaml"),
                "--set", f"run_dir={run}", "--set", f"data.root={city}"]
        for o in overrides:
            argv += ["--set", o]
        self.id = self.client.submit_job(entrypoint=shlex.join(argv), submission_id=f"vreid-drv-{secrets.token_hex(4)}")

    def status(self):
        return self.client.get_job_status(self.id)

    def logs(self) -> str:
        return self.client.get_job_logs(self.id)

    def wait(self, guard_s: float = DRIVER_TIMEOUT_S):
        deadline = time.monotonic() + guard_s
        while not (status := self.status()).is_terminal():
            if time.monotonic() > deadline:
                self.client.stop_job(self.id)
                pytest.fail(f"job {self.id} not done in {guard_s} s:\n{self.logs()[-6000:]}")
            time.sleep(0.5)
        return status

    def succeed(self) -> str:
        from ray.job_submission import JobStatus

        status = self.wait()
        logs = self.logs()
        assert status == JobStatus.SUCCEEDED, f"job {self.id}: {status}\n{logs[-8000:]}"
        return logs

    def hold_at(self, point: PausePoint, stage: str):
        """Let the stages before ``stage`` go on; returns the arrival of the driver at ``stage``."""
        while True:
            while not select.select([point.server], [], [], 0.5)[0]:
                if self.status().is_terminal():
                    pytest.fail(f"job {self.id} ended ({self.status()}) before stage {stage}:\n{self.logs()[-6000:]}")
            arrival = point.next()
            if arrival.info.get("stage") == stage:
                return arrival
            arrival.release()


def _mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _results(run: Path) -> Path:
    (out,) = [p.parent for p in (run / "results").glob("final*/track2.txt")]
    return out


def test_pipeline_driver_killed_and_stopped_then_resubmitted(nodes, tmp_path, tiny_city):
    """The pipeline job's driver, waiting at the start of a stage, is SIGKILLed (at `tune`) and then
    stopped with `ray job stop` (at `postprocess`); each time the job is submitted again and goes
    on from the stages complete: models, feature stores and the sweep are not redone, and the
    results equal those of an undisturbed run with the same models."""
    import shutil

    from ray.job_submission import JobStatus

    # one trial at a time: the sweep picks the same configuration on every run
    overrides = ["tune.max_concurrent_trials=1"]
    ref = tmp_path / "reference"
    t0 = time.monotonic()
    Job(nodes, ref, tiny_city, overrides).succeed()
    ref_s = time.monotonic() - t0
    run = tmp_path / "run"
    shutil.copytree(ref / "models", run / "models")  # the same weights: training is the reference's
    models = _mtimes(run / "models")

    with PausePoint("pipeline.stage") as point:
        # 1. SIGKILL of the driver process while it waits at the start of the tune stage
        t0 = time.monotonic()
        job = Job(nodes, run, tiny_city, overrides)
        held = job.hold_at(point, "tune")
        os.kill(held.info["pid"], signal.SIGKILL)
        assert job.wait() == JobStatus.FAILED
        first = job.logs()
        first_s = time.monotonic() - t0
        assert "model bot: already trained" in first and "model attr: already trained" in first, first[-4000:]
        stores = _mtimes(run / "features")
        assert stores and not (run / "tune").exists()

        # 2. resubmitted; `ray job stop` while it waits at the start of the postprocess stage
        t0 = time.monotonic()
        job = Job(nodes, run, tiny_city, overrides)
        job.hold_at(point, "postprocess")
        res = subprocess.run([ray_cli(), "job", "stop", "--address", nodes.dashboard_url, job.id],
                             env=nodes.env, capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S)
        assert res.returncode == 0, res.stdout + res.stderr
        assert job.wait() == JobStatus.STOPPED
        second = job.logs()
        second_s = time.monotonic() - t0
        assert second.count(": complete for checkpoint ") == 4, second[-4000:]  # 2 models x (test, val)
        assert not (run / "results").exists() or not list((run / "results").glob("final*/track2.txt"))
        tune = _mtimes(run / "tune")
        assert any(p.name == "best_postprocess.yaml" for p in tune)

        # 3. resubmitted, not disturbed
        point.release_all_in_background()
        t0 = time.monotonic()
        third = Job(nodes, run, tiny_city, overrides).succeed()
        third_s = time.monotonic() - t0
    assert "stage tune: sweep already complete" in third, third[-4000:]
    assert third.count(": complete for checkpoint ") == 4
    for before in (models, stores, tune):
        rewritten = [str(p) for p, m in before.items() if not p.exists() or p.stat().st_mtime_ns != m]
        assert not rewritten, f"a resubmitted job rewrote complete outputs: {rewritten[:10]}"
    a, b = _results(ref), _results(run)
    assert (a / "track2.txt").read_bytes() == (b / "track2.txt").read_bytes()
    assert pq.read_table(a / "rankings.parquet").equals(pq.read_table(b / "rankings.parquet"))
    assert json.loads((a / "metrics.json").read_text())["final"] == json.loads((b / "metrics.json").read_text())["final"]
    print(f"\ndriver: undisturbed run {ref_s:.0f} s; SIGKILL at tune after {first_s:.0f} s (train skipped, "
          f"extract done), `ray job stop` at postprocess after {second_s:.0f} s (extract skipped, tune done), "
          f"resubmitted: {third_s:.0f} s (train, extract, tune skipped); results identical")


# ----------------------------------------------------------------------------- out of memory

# The node's threshold lies OOM_MARGIN above the machine's memory use when the test starts (room
# for the test's own processes: the node, both workers, the driver); at the pause point bot's
# worker allocates what is left up to the threshold then, plus OOM_OVER. Ray's monitor kills the
# worker as soon as the use crosses the threshold, so the machine's use never goes far above it.
OOM_MARGIN = 6 << 30
OOM_OVER = 2 << 30


def _used() -> int:
    import psutil

    vm = psutil.virtual_memory()
    return vm.total - vm.available  # what Ray's monitor counts (MemTotal - MemAvailable, no cgroup here)


def test_out_of_memory_worker_fails_its_model_only(cluster, tmp_path, tiny_city):
    """`bot`'s only worker runs on a node whose raylet kills workers above a memory threshold (Ray's
    memory monitor, `RAY_memory_usage_threshold`, computed now from psutil); at the start of each of
    its epochs that worker allocates more than the room left (a pause point's ``allocate``). Ray
    kills it, and Train's retry: bot fails with the out-of-memory reason named in its error;
    `attr` (on the head) trains on."""
    import psutil

    vm = psutil.virtual_memory()
    used = _used()
    if vm.available < OOM_MARGIN + OOM_OVER + (4 << 30):
        pytest.skip(f"{vm.available / 2**30:.1f} GiB available: too little to run a worker out of memory safely")
    threshold = (used + OOM_MARGIN) / vm.total
    cluster.add_node("node_oom", 1, generic=False, env={
        "RAY_memory_usage_threshold": f"{threshold:.4f}", "RAY_memory_monitor_refresh_ms": "100"})
    try:
        run = tmp_path / "run"
        overrides = _base(run, tiny_city) + [
            "train.max_failures=1",
            "models.0.recipe.0.epochs=1", "models.1.recipe.0.epochs=1",
            "models.0.scaling={num_workers: 1, cpus_per_worker: 0.5, resources: {node_oom: 0.01}}",
            "models.1.scaling={num_workers: 1, cpus_per_worker: 0.5, resources: {head: 0.01}}"]
        seen: list[dict] = []
        with PausePoint("train.epoch_start") as point:
            driver = Driver(cluster, "train", tmp_path, overrides)
            deadline = time.monotonic() + DRIVER_TIMEOUT_S  # a failure guard
            while driver.proc.poll() is None and time.monotonic() < deadline:
                if not select.select([point.server], [], [], 0.5)[0]:
                    continue
                arrival = point.next()
                arrival.info["node"] = _node_or_none(cluster, arrival.info["pid"])
                seen.append(arrival.info)
                if arrival.info["model"] == "bot":
                    arrival.info["used"] = _used()
                    arrival.info["alloc"] = max(0, int(threshold * vm.total) - arrival.info["used"]) + OOM_OVER
                    arrival.allocate(arrival.info["alloc"])
                else:
                    arrival.release()
            result = driver.result()
    finally:
        cluster.kill_node("node_oom")
    bot = [i for i in seen if i["model"] == "bot"]
    assert bot and all(i["node"] == "node_oom" for i in bot), (seen, result, driver.log.read_text()[-6000:])
    assert [i["epoch"] for i in seen if i["model"] == "attr"] == [0]
    assert result["attr"] == {"status": "trained", "error": None}, result
    assert result["bot"]["status"] == "failed", result
    err = result["bot"]["error"]
    assert err.startswith("out of memory: a training worker of model 'bot'"), err
    print(f"\nout of memory: node_oom threshold {threshold:.3f} of {vm.total / 2**30:.1f} GiB "
          f"({used / 2**30:.1f} GiB used + {OOM_MARGIN / 2**30:g} GiB); bot's worker asked for "
          f"{', '.join(format(i['alloc'] / 2**30, '.1f') for i in bot)} GiB at {len(bot)} epoch start(s) "
          f"({len(bot) - 1} Train retry); "
          f"bot failed: {err[:300]}; attr trained; {driver.seconds:.0f} s")


def _node_or_none(cluster: Cluster, pid: int) -> str | None:
    try:
        return cluster.node_of(pid)
    except LookupError:
        return None

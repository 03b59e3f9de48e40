"""MLflow tracking against a real `mlflow server` started on 127.0.0.1 by the test (bounded wait,
stopped at the end): model histories, Tune trials (Ray's MLflow callback through run_sweep), the
ablation table and the report land in one experiment; a URI that does not answer gives one
warning and nothing fails."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vreid.config import RunConfig
from vreid.tracking import Tracker, open_tracker
from vreid.tune.sweep import run_sweep

sys.path.insert(0, str(Path(__file__).parent))
from test_tune import _cfg  # noqa: E402
from test_postprocess_pipeline import _city  # noqa: E402

SERVER_WAIT_S = 120  # the server answers /health within this, or the test fails


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    proc = subprocess.Popen([mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                             "--artifacts-destination", str(tmp_path / "artifacts")],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_WAIT_S
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _run_dir(tmp: Path) -> Path:
    model = tmp / "run" / "models" / "bot"
    model.mkdir(parents=True)
    history = [{"epoch": -1, "stage": "init", "val_mAP": 0.05}] + [
        {"epoch": e, "stage": "stage1", "id": 3.0 - e, "triplet": 1.0 / (e + 1), "lr": 1e-3, "val_mAP": 0.1 * (e + 1)}
        for e in range(3)]
    (model / "model.json").write_text(json.dumps({"history": history, "config": {"backbone": "resnet10t"}}))
    report = tmp / "run" / "report" / "report.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html><body>report</body></html>")
    return tmp / "run"


def test_run_lands_in_one_mlflow_experiment(tmp_path, mlflow_server, ray_session):
    from mlflow.tracking import MlflowClient

    cfg = _cfg(tmp_path, num_samples=3)
    cfg = RunConfig.model_validate({**cfg.model_dump(mode="json"), "name": "tracked",
                                    "tracking": {"mlflow_uri": mlflow_server}})
    run_dir = _run_dir(tmp_path)
    tracker = open_tracker(cfg)
    assert tracker.active
    tracker.log_models(run_dir, ["bot"])
    sweep = run_sweep(cfg, _city(), callbacks=tracker.tune_callbacks())
    ablation = [{"step": "features", "mAP": 0.4, "mAP@100": 0.41, "rank-1": 0.5},
                {"step": "rerank", "mAP": 0.5, "mAP@100": 0.52, "rank-1": 0.6}]
    tracker.log_results("final", ablation, run_dir / "report" / "report.html")

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("vreid-tracked")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id], max_results=100)}
    model = runs["model-bot"]
    assert [(m.step, m.value) for m in client.get_metric_history(model.info.run_id, "val_mAP")] == \
        [(-1, 0.05), (0, 0.1), (1, 0.2), (2, pytest.approx(0.3))]
    assert [m.value for m in client.get_metric_history(model.info.run_id, "id")] == [3.0, 2.0, 1.0]
    assert model.data.params["backbone"] == "resnet10t"

    trials = [r for name, r in runs.items() if not name.startswith(("model-", "pipeline-"))]
    assert len(trials) == sweep["num_trials"] == 3
    for t in trials:
        assert {"rerank.k1", "rerank.lambda_value"} <= set(t.data.params)
        assert 0 <= t.data.metrics["mAP"] <= 1 and "mAP_at_100" in t.data.metrics
    assert max(t.data.metrics["mAP"] for t in trials) == pytest.approx(sweep["best_score"])

    pipe = runs["pipeline-final"]
    assert pipe.data.metrics["rerank/mAP"] == 0.5 and pipe.data.metrics["features/mAP_at_100"] == 0.41
    assert pipe.data.metrics["mAP"] == 0.5  # the final row
    assert [a.path for a in client.list_artifacts(pipe.info.run_id)] == ["report.html"]


def test_unanswering_uri_warns_once_and_the_run_goes_on(tmp_path, caplog):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    run_dir = _run_dir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="vreid.tracking"):
        tracker = Tracker(uri, "vreid-down", timeout_s=1)
        tracker.log_models(run_dir, ["bot"])
        tracker.log_results("final", [{"step": "features", "mAP": 0.4}], run_dir / "report" / "report.html")
        assert tracker.tune_callbacks() == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and uri in warnings[0].getMessage() and "does not answer" in warnings[0].getMessage()
    assert not tracker.active
    assert (run_dir / "report" / "report.html").is_file()  # nothing lost

    off = open_tracker(RunConfig())  # tracking is off by default
    assert not off.active and off.tune_callbacks() == []

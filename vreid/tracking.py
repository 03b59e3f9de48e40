"""Experiment tracking with MLflow, off unless ``tracking.mlflow_uri`` is set.

One MLflow experiment per pipeline run (``tracking.experiment``, default ``vreid-<name>``) holds:
one MLflow run per model with its per-epoch losses and validation mAP (``step`` = epoch, read on
the driver from the trained model's history), one run per Tune trial with its parameters and
score (Ray's ``MLflowLoggerCallback``), and a ``pipeline`` run with the ablation table (one
metric per step and column) and the report as artifacts. A URI that does not answer, at the
start or later, gives one warning and the run goes on untracked: its outputs on disk are whole.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("vreid.tracking")
ABLATION_COLUMNS = ("mAP", "mAP@100", "rank-1", "rank-5", "rank-10", "mINP")


def metric_name(key: str) -> str:
    """MLflow metric names allow letters, digits, ``_-. :/``: ``mAP@100`` -> ``mAP_at_100``."""
    return key.replace("@", "_at_")


class Tracker:
    """Logs to MLflow while the server answers; after the first failure it warns once and stops."""

    def __init__(self, uri: str | None, experiment: str, timeout_s: float = 5.0, retries: int = 0):
        self.uri, self.experiment, self.client, self.experiment_id = uri, experiment, None, None
        if uri is None:
            return
        # bounded: MLflow's default retries with back-off would stall the run for minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(1, timeout_s))))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
        try:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        except Exception as exc:  # ImportError, connection refused, timeout, HTTP errors
            self._disable(exc)

    @property
    def active(self) -> bool:
        return self.client is not None

    def _disable(self, exc: BaseException) -> None:
        log.warning("tracking.mlflow_uri %s does not answer (%s: %s); the run goes on without tracking",
                    self.uri, type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
        self.client = None

    def _run(self, name: str, params: dict[str, Any], metrics: list[tuple[str, float, int]],
             artifacts: list[Path] = ()) -> str | None:
        if not self.active:
            return None
        from mlflow.entities import Metric, Param

        try:
            run = self.client.create_run(self.experiment_id, run_name=name)
            rid = run.info.run_id
            self.client.log_batch(rid, metrics=[Metric(metric_name(k), float(v), 0, step) for k, v, step in metrics],
                                  params=[Param(k, str(v)[:500]) for k, v in params.items()])
            for path in artifacts:
                self.client.log_artifact(rid, str(path))
            self.client.set_terminated(rid)
            return rid
        except Exception as exc:
            self._disable(exc)
            return None

    def log_models(self, run_dir: str | Path, names: list[str]) -> None:
        """Each model's per-epoch training losses and validation mAP (``model.json`` history)."""
        for name in names:
            meta = json.loads((Path(run_dir) / "models" / name / "model.json").read_text())
            metrics = [(k, v, int(h["epoch"])) for h in meta.get("history", []) for k, v in h.items()
                       if k not in ("epoch", "stage") and isinstance(v, (int, float)) and v == v]
            params = {k: v for k, v in meta.get("config", {}).items() if not isinstance(v, (dict, list))}
            self._run(f"model-{name}", params, metrics)

    def tune_callbacks(self) -> list:
        """Ray Tune's own MLflow logger: one MLflow run per trial, its parameters and scores."""
        if not self.active:
            return []
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        class TrialLogger(MLflowLoggerCallback):
            def log_trial_result(self, iteration, trial, result):
                super().log_trial_result(iteration, trial, {metric_name(k): v for k, v in result.items()})

        return [TrialLogger(tracking_uri=self.uri, experiment_name=self.experiment)]

    def log_results(self, name: str, ablation: list[dict[str, Any]], report: Path | None = None,
                    extra: list[Path] = ()) -> None:
        """The ablation table (metric ``<step>/<column>``, step = its position) and the report."""
        metrics = [(f"{row['step']}/{c}", row[c], i) for i, row in enumerate(ablation)
                   for c in ABLATION_COLUMNS if c in row]
        if ablation:
            metrics += [(c, ablation[-1][c], 0) for c in ABLATION_COLUMNS if c in ablation[-1]]
        files = [p for p in [report, *extra] if p is not None and Path(p).is_file()]
        self._run(f"pipeline-{name}", {"postprocess": name, "steps": ",".join(r["step"] for r in ablation)},
                  metrics, files)


def open_tracker(cfg) -> Tracker:
    t = cfg.tracking
    return Tracker(t.mlflow_uri, t.experiment or f"vreid-{cfg.name}", t.timeout_s)

"""Ray Tune sweeps: better-or-equal than defaults, a YAML the post-processing job accepts,
restore after an interrupted sweep, and bad input."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pause_points import PausePoint

from vreid.config import PostprocessConfig, RunConfig, load_config
from vreid.tune.sweep import SweepError, apply_params, run_sweep

sys.path.insert(0, str(Path(__file__).parent))
from test_postprocess_pipeline import _city  # noqa: E402

BASE = {"ensemble": {"attribute_model": "m"},
        "steps": [{"step": "camera_bias"}, {"step": "rerank", "k1": 20, "k2": 3, "lambda_value": 0.3},
                  {"step": "attribute_constraint", "delta_type": 0.0, "delta_color": 0.0}]}
SPACE = {"rerank.k1": {"type": "int", "low": 3, "high": 24}, "rerank.k2": {"type": "int", "low": 1, "high": 4},
         "rerank.lambda_value": {"type": "float", "low": 0.1, "high": 0.9},
         "attribute_constraint.delta_color": {"type": "float", "low": 0.0, "high": 1.0},
         "camera_bias": {"type": "switch"},
         "rerank.level": {"type": "choice", "values": ["auto", "image"]}}  # strings: the plot's str dtype


def _cfg(tmp_path, **tune):
    return RunConfig.model_validate({"run_dir": str(tmp_path / "run"), "postprocess": BASE,
                                     "tune": {"num_samples": 6, "max_concurrent_trials": 2, **tune,
                                              "space": tune.get("space", SPACE)}})


def test_sweep_beats_defaults_and_writes_yaml(tmp_path, ray_session):
    cfg = _cfg(tmp_path)
    out = run_sweep(cfg, _city())
    assert out["best_score"] >= out["default_score"]
    assert out["num_trials"] == 6
    best = load_config(Path(out["out_dir"]) / "best_postprocess.yaml", model=PostprocessConfig)
    assert best == out["best_config"]
    assert (Path(out["out_dir"]) / "trials.csv").stat().st_size > 0
    assert (Path(out["out_dir"]) / "scores.png").read_bytes()[:4] == b"\x89PNG"
    # the postprocess job's loader accepts it, and it scores what the sweep said
    from vreid.postprocess.pipeline import run_postprocess

    assert run_postprocess(_city(), best, with_ablation=False).final["mAP"] == pytest.approx(out["best_score"])


def test_apply_params_switches_and_sets():
    base = PostprocessConfig.model_validate(BASE)
    cfg = apply_params(base, {"rerank.k1": 7, "camera_bias": False})
    assert [s.step for s in cfg.steps] == ["rerank", "attribute_constraint"] and cfg.steps[0].k1 == 7


@pytest.mark.parametrize("space,match", [
    ({"rerank.k1": {"type": "int", "low": 9, "high": 3}}, "inverted range"),
    ({"rerank.k1": {"type": "int", "low": 3, "high": 3}}, "empty or inverted range"),
    ({"rerank.lambda_value": {"type": "float", "low": 0.5, "high": 2}}, "value 2.0 is outside what the step accepts"),
    ({"tracklet.beta": {"type": "float", "low": 0, "high": 1}}, "names no step of the pipeline"),
    ({"rerank.k3": {"type": "int", "low": 1, "high": 3}}, "has no parameter 'k3'"),
    ({"warp.k": {"type": "int", "low": 1, "high": 3}}, "'warp' is not a post-processing step"),
])
def test_bad_spaces(tmp_path, space, match):
    with pytest.raises((SweepError, ValueError), match=match):
        run_sweep(_cfg(tmp_path, space=space), _city())


def test_k_larger_than_the_split(tmp_path, ray_session):
    with pytest.raises(ValueError, match="needs k=300 neighbours"):
        run_sweep(_cfg(tmp_path, space={"rerank.k1": {"type": "int", "low": 200, "high": 300}}), _city())


def test_no_ground_truth(tmp_path):
    inputs = _city()
    inputs.query.pids[:] = -1
    with pytest.raises(SweepError, match="no ground truth"):
        run_sweep(_cfg(tmp_path), inputs)


def test_all_trials_failing_writes_no_best(tmp_path, ray_session):
    inputs = _city()
    inputs.query.camids[0] = 99  # a camera the gallery never saw: per-camera whitening cannot run
    cfg = _cfg(tmp_path, num_samples=2, space={"camera_bias.method": {"type": "choice", "values": ["whitening"]}})
    with pytest.raises(SweepError, match="every trial failed; the first error: .*camera"):
        run_sweep(cfg, inputs)
    assert not list((tmp_path / "run").rglob("best_postprocess.yaml"))


SWEEP_DRIVER = """
import pickle, sys, ray
from vreid.config import RunConfig
from vreid.tune.sweep import run_sweep
ray.init(num_cpus=1, include_dashboard=False)
run_sweep(RunConfig.model_validate_json(open(sys.argv[1]).read()), pickle.load(open(sys.argv[2], "rb")))
"""


def _finished_on_record(exp: Path) -> int:
    """Trials the sweep's saved experiment state (what Tuner.restore reads) lists as finished."""
    states = sorted(exp.glob("experiment_state-*.json"))  # the name carries the driver's start time
    if not states:
        return 0
    try:
        trials = json.loads(states[-1].read_text())["trial_data"]
    except (json.JSONDecodeError, KeyError):  # the driver is rewriting it in place: not yet on record
        return 0
    return sum(json.loads(t[0])["status"] == "TERMINATED" for t in trials)


def test_restore_after_interrupted_sweep(tmp_path, ray_session):
    """A sweep killed with its driver (SIGKILL) after two of eight trials resumes: Tuner.restore
    keeps the finished trials, runs the other six, and writes the best YAML once, at the end.
    The kill lands while the third trial waits at its pause point and the saved state is whole,
    never by racing the sweep."""
    import os
    import time

    cfg = _cfg(tmp_path, num_samples=8, max_concurrent_trials=1, search="random")
    (tmp_path / "inputs.pkl").write_bytes(pickle.dumps(_city()))
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    exp = tmp_path / "run" / "tune" / cfg.tune.name
    with PausePoint("tune.trial") as point:
        proc = subprocess.Popen([sys.executable, "-c", SWEEP_DRIVER, str(tmp_path / "cfg.json"),
                                 str(tmp_path / "inputs.pkl")], start_new_session=True,
                                env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0"})  # state saved every step
        try:
            for _ in range(2):
                point.next().release()
            point.next()  # the third trial waits here until its driver is killed
            # The driver copies its experiment state to the run's storage in place (a background
            # thread), so a kill could cut a copy short. Freeze the driver's processes; kill them
            # only while the record holds both finished trials completely, else let them go on.
            deadline = time.monotonic() + 300  # a failure guard only
            while time.monotonic() < deadline:
                os.killpg(proc.pid, signal.SIGSTOP)
                if _finished_on_record(exp) >= 2:
                    break
                os.killpg(proc.pid, signal.SIGCONT)
                time.sleep(0.1)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (exp / "best_postprocess.yaml").exists()
    before = {p.parent.name: p.read_text() for p in exp.glob("*/result.json") if p.read_text().strip()}
    assert len(before) == _finished_on_record(exp) == 2
    out = run_sweep(cfg, _city())
    assert out["num_trials"] == 8
    assert json.loads((exp / "summary.json").read_text())["num_trials"] == 8
    results = {p.parent.name: p.read_text() for p in exp.glob("*/result.json")}
    assert len(results) == 8 and all(len(r.strip().splitlines()) == 1 for r in results.values()), \
        "every trial reported once"
    assert all(results[name] == text for name, text in before.items()), "the finished trials were not redone"
    assert yaml.safe_load((exp / "best_postprocess.yaml").read_text())["steps"]


def test_pipeline_reuses_its_sweep_and_starts_over_for_other_models(tmp_path, ray_session, monkeypatch):
    import vreid.pipeline as pipeline
    import vreid.postprocess.actor as actor

    cfg = _cfg(tmp_path, num_samples=2)
    out = tmp_path / "run" / "tune" / "postprocess"
    monkeypatch.setattr(actor, "load_inputs", lambda *args, **kwargs: _city())
    monkeypatch.setattr(pipeline, "_tune_key", lambda c: "weights-A")
    pipeline.tuned_postprocess(cfg, None)
    assert json.loads((out / "summary.json").read_text())["key"] == "weights-A"
    stamp = (out / "summary.json").stat().st_mtime_ns
    pipeline.tuned_postprocess(cfg, None)  # same models and settings: the finished sweep is reused
    assert (out / "summary.json").stat().st_mtime_ns == stamp
    (out / "left-by-sweep-A").write_text("")
    monkeypatch.setattr(pipeline, "_tune_key", lambda c: "weights-B")
    best = pipeline.tuned_postprocess(cfg, None)  # other weights: a new sweep, not a restore of A's
    summary = json.loads((out / "summary.json").read_text())
    assert summary["key"] == "weights-B" and summary["num_trials"] == 2
    assert not (out / "left-by-sweep-A").exists()
    assert best == load_config(out / "best_postprocess.yaml", model=PostprocessConfig)

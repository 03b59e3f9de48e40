"""Jobs print bad input (any vreid InputError, raised in the driver or in a Ray task / actor) as one
``error:`` block naming the input and exit with status 2, without a Python traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vreid.cli import INPUT_ERROR_STATUS, run_job
from vreid.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _job(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, f"jobs/{script}.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def _one_error_block(out: str, err: str) -> list[str]:
    """The lines of the single ``error:`` block (the last lines of stderr)."""
    assert "Traceback" not in out + err, err
    lines = err.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(starts) == 1, err
    return lines[starts[0]:]


def test_job_on_bad_input_prints_one_error_block(tmp_path):
    """A missing dataset root used to print a traceback ending in the right message."""
    proc = _job("extract", "--config", "configs/tiny.yaml", "--set", f"run_dir={tmp_path / 'run'}",
                "--set", "data.format=aic", "--set", f"data.root={tmp_path / 'no-dataset'}")
    assert proc.returncode == INPUT_ERROR_STATUS, proc.stderr
    assert _one_error_block(proc.stdout, proc.stderr) == [f"error: {tmp_path / 'no-dataset'}: dataset root not found"]


def test_config_error_is_one_block(capsys):
    from vreid.cli import job_config, job_parser

    args = job_parser("test").parse_args(["--config", "configs/tiny.yaml", "--set", "seed=abc"])
    with pytest.raises(SystemExit) as exit_:
        run_job(lambda: job_config(args))
    assert exit_.value.code == INPUT_ERROR_STATUS
    block = _one_error_block("", capsys.readouterr().err)
    assert block[0] == "error: configs/tiny.yaml: invalid configuration" and block[1].startswith("  seed: ")
    assert len(block) == 2


def test_input_error_raised_in_a_ray_actor(tiny_city, tmp_path, capsys, ray_session):
    """The post-processing actor finds no trained model: the job's error is the actor's message,
    not Ray's wrapper with the remote traceback."""
    from vreid.postprocess.actor import postprocess_run

    cfg = load_config("configs/tiny.yaml", [f"run_dir={tmp_path / 'run'}", f"data.root={tiny_city}"])
    with pytest.raises(SystemExit) as exit_:
        run_job(lambda: postprocess_run(cfg))
    assert exit_.value.code == INPUT_ERROR_STATUS
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'run' / 'models' / 'bot'}: no complete trained model here (missing _SUCCESS.json)\n"


def test_other_errors_keep_their_traceback():
    with pytest.raises(ZeroDivisionError):
        run_job(lambda: 1 / 0)

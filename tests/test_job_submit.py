"""Jobs submitted to a real Ray head, the way users run them on a cluster
(`ray job submit --working-dir . -- python jobs/<job>.py ...`): through the CLI and through
`ray.job_submission.JobSubmissionClient`, with token authentication on.

The head is a separate `ray start --head --block` process tree with its own ports, its own
temp dir under /tmp and its own auth token. It is stopped by signalling that process (which
tears down the processes it started) and by killing whatever of its tree survives: never
`ray stop`, which would also kill the session's `ray_session` instance and any other Ray on
the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ray_env import REPO, head_start_cmd, ray_cli, ray_env, temp_root, write_token

# The jobs, as `python <args>` run from the repository root (the uploaded working dir).
# "{out}" is replaced by a per-test output folder; `files` are glob patterns under it that
# must match after the job succeeded; `log` is a line the job prints.
JOBS = {
    "synth": dict(
        args=["jobs/synth.py", "--preset", "tiny", "--out", "{out}/city"],
        files=["city/_SUCCESS.json", "city/gt/*", "city/name_query.txt", "city/train_label.xml"],
        log="synthetic city 'tiny'",
        timeout_s=300,
    ),
    "pipeline": dict(
        args=["jobs/pipeline.py", "--config", "configs/tiny.yaml",
              "--set", "run_dir={out}/run", "--set", "data.root={out}/city"],
        files=["run/results/final*/track2.txt", "run/results/final*/metrics.json"],
        log="results: ",
        timeout_s=1500,
    ),
}
# The job that test_submit_cli_and_sdk submits: switch to "pipeline" to run the main job there.
SUBMIT_JOB = "synth"

# Not uploaded with the working dir (besides everything .gitignore lists, which Ray honours).
WORKING_DIR_EXCLUDES = [".git"]
HEAD_START_TIMEOUT_S = 240
POLL_S = 0.5


def _http(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


@dataclass
class Head:
    proc: subprocess.Popen
    temp_dir: Path
    dashboard_port: int
    token: str
    env: dict[str, str]
    log: Path
    children: set = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def log_tail(self, n: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        logs = self.temp_dir / "ray" / "session_latest" / "logs"
        for name in ("raylet.out", "dashboard.err", "dashboard_agent.log"):
            if (logs / name).exists():
                text += f"\n--- {name}\n" + (logs / name).read_text(errors="replace")[-n:]
        return text[-3 * n:]

    def client(self):
        from ray.job_submission import JobSubmissionClient

        # This pytest process may hold another Ray instance (the ray_session fixture) with its
        # own auth mode and cached token: pass this head's token explicitly.
        return JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {self.token}"})


def _start_head() -> Head:
    temp_dir = temp_root("vrj")  # unix socket paths under it must stay short
    token, token_file = write_token(temp_dir)
    # the jobs import the uploaded working dir, not this tree: no PYTHONPATH added
    env = ray_env(token_file, repo_on_path=False)
    cmd, _, dash = head_start_cmd(temp_dir / "ray", num_cpus=2)
    log = temp_dir / "head.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    head = Head(proc, temp_dir, dash, token, env, log)
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while True:
        _remember_children(head)
        if proc.poll() is not None:
            _stop_head(head)
            raise RuntimeError(f"ray start --head exited with {proc.returncode}:\n{head.log_tail()}")
        try:
            status, _ = _http(f"{head.address}/api/jobs/", token)
            if status == 200:
                return head
        except OSError:
            pass
        if time.monotonic() > deadline:
            _stop_head(head)
            raise TimeoutError(f"Ray head not up in {HEAD_START_TIMEOUT_S} s:\n{head.log_tail()}")
        time.sleep(POLL_S)


def _remember_children(head: Head) -> None:
    import psutil

    try:
        head.children.update(psutil.Process(head.proc.pid).children(recursive=True))
    except psutil.Error:
        pass


def _stop_head(head: Head) -> None:
    """Stop only this head: SIGTERM to `ray start --block` (its handler kills the GCS, raylet,
    dashboard and agents it started; the raylet takes its workers), then SIGKILL whatever of
    the process tree or of this temp dir is left."""
    import psutil

    _remember_children(head)
    if head.proc.poll() is None:
        head.proc.send_signal(signal.SIGTERM)
        try:
            head.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.proc.kill()
            head.proc.wait(timeout=10)
    procs = set(head.children)
    marker = str(head.temp_dir)
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in (p.info["cmdline"] or [])):
                procs.add(p)
        except psutil.Error:
            pass
    procs.discard(psutil.Process())
    _, alive = psutil.wait_procs(list(procs), timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)
    shutil.rmtree(head.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head():
    try:
        head = _start_head()
    except RuntimeError:
        # A head that died while starting (on a loaded machine the raylet gives up after 15 s
        # waiting for its dashboard agent; or a chosen free port was taken meanwhile): once more.
        head = _start_head()
    try:
        yield head
    finally:
        _stop_head(head)


def _job(name: str, out: Path) -> dict:
    spec = JOBS[name]
    return {**spec, "argv": [sys.executable] + [a.format(out=out) for a in spec["args"]]}


def _check_outputs(job: dict, out: Path) -> None:
    for pattern in job["files"]:
        assert list(out.glob(pattern)), f"no {pattern} under {out}: {sorted(p.name for p in out.rglob('*'))[:50]}"


def _wait(client, job_id: str, timeout_s: float):
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout_s
    while True:
        info = client.get_job_info(job_id)
        if info.status.is_terminal():
            break
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            pytest.fail(f"job {job_id} not finished in {timeout_s} s ({info.status}):\n"
                        f"{client.get_job_logs(job_id)[-4000:]}")
        time.sleep(POLL_S)
    assert info.status == JobStatus.SUCCEEDED, (
        f"job {job_id}: {info.status} {info.message}\n{client.get_job_logs(job_id)[-6000:]}")
    return info


# ---------------------------------------------------------------------------------------------


def test_head_is_loopback_and_token_protected(ray_head):
    import psutil

    listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == ray_head.dashboard_port}
    assert listening == {"127.0.0.1"}, listening
    assert _http(f"{ray_head.address}/api/jobs/")[0] == 401
    assert _http(f"{ray_head.address}/api/jobs/", "0" * 64)[0] == 403
    assert _http(f"{ray_head.address}/api/jobs/", ray_head.token)[0] == 200


def test_submit_cli_and_sdk(ray_head, tmp_path):
    from ray.job_submission import JobStatus

    client = ray_head.client()
    t0 = time.monotonic()
    # 1. The SDK: submitted first and polled at the end, so that both jobs run side by side.
    sdk_out = tmp_path / "sdk"
    sdk_job = _job(SUBMIT_JOB, sdk_out)
    sdk_id = client.submit_job(
        entrypoint=shlex.join(sdk_job["argv"]),
        runtime_env={"working_dir": str(REPO), "excludes": WORKING_DIR_EXCLUDES},
        submission_id=f"vreid-sdk-{secrets.token_hex(4)}",
        metadata={"test": "test_job_submit"},
    )

    # 2. The CLI, exactly as on a cluster: upload the repository as working dir (the package
    #    is content-addressed: the SDK's upload is reused), stream the logs, exit 0 on success.
    #    The head's PATH is not this venv's: the entrypoint names the interpreter.
    cli_out = tmp_path / "cli"
    job = _job(SUBMIT_JOB, cli_out)
    cli_id = f"vreid-cli-{secrets.token_hex(4)}"
    res = subprocess.run(
        [ray_cli(), "job", "submit", "--address", ray_head.address, "--submission-id", cli_id,
         "--working-dir", ".", "--runtime-env-json", json.dumps({"excludes": WORKING_DIR_EXCLUDES}),
         "--log-style", "record", "--", *job["argv"]],
        cwd=REPO, env=ray_head.env, capture_output=True, text=True, timeout=job["timeout_s"])
    cli_s = time.monotonic() - t0
    assert res.returncode == 0, f"ray job submit exited {res.returncode}:\n{res.stdout[-6000:]}\n{res.stderr[-4000:]}"
    assert job["log"] in res.stdout, res.stdout[-4000:]
    assert client.get_job_status(cli_id) == JobStatus.SUCCEEDED
    assert job["log"] in client.get_job_logs(cli_id)
    _check_outputs(job, cli_out)

    info = _wait(client, sdk_id, sdk_job["timeout_s"])
    sdk_s = time.monotonic() - t0
    logs = client.get_job_logs(sdk_id)
    assert sdk_job["log"] in logs, logs[-4000:]
    assert info.metadata == {"test": "test_job_submit"}
    assert info.driver_exit_code == 0
    _check_outputs(sdk_job, sdk_out)
    jobs = {j.submission_id: j.status for j in client.list_jobs()}
    assert jobs[cli_id] == jobs[sdk_id] == JobStatus.SUCCEEDED
    print(f"\n{SUBMIT_JOB}: CLI job done after {cli_s:.1f} s, SDK job after {sdk_s:.1f} s")


@pytest.mark.skipif(not (REPO / "jobs" / "pipeline.py").exists(), reason="jobs/pipeline.py not written yet")
@pytest.mark.timeout(2 * JOBS["pipeline"]["timeout_s"] + HEAD_START_TIMEOUT_S + 120)
def test_pipeline_job_twice_skips_completed_stages(ray_head, tmp_path):
    client = ray_head.client()
    job = _job("pipeline", tmp_path)
    runtime_env = {"working_dir": str(REPO), "excludes": WORKING_DIR_EXCLUDES}

    def submit(tag: str) -> tuple[float, str]:
        job_id = client.submit_job(entrypoint=shlex.join(job["argv"]), runtime_env=runtime_env,
                                   submission_id=f"vreid-pipeline-{tag}-{secrets.token_hex(4)}")
        info = _wait(client, job_id, job["timeout_s"])
        logs = client.get_job_logs(job_id)
        assert job["log"] in logs
        return (info.end_time - info.start_time) / 1000.0, logs

    first_s, _ = submit("first")
    _check_outputs(job, tmp_path)
    run = tmp_path / "run"
    complete = {p: p.stat().st_mtime_ns for d in ("models", "features") for p in (run / d).rglob("*") if p.is_file()}
    assert complete, f"no trained models / feature stores under {run}"
    second_s, logs = submit("second")
    _check_outputs(job, tmp_path)
    rewritten = [str(p) for p, mtime in complete.items() if not p.exists() or p.stat().st_mtime_ns != mtime]
    assert not rewritten, f"a rerun rewrote complete outputs: {rewritten[:10]}"
    for model in ("bot", "attr"):  # the models of configs/tiny.yaml: nothing retrained or re-extracted
        assert f"model {model}: already trained" in logs, logs[-4000:]
    assert logs.count(": complete for checkpoint ") == 4, "two stores (test, validation) per model skipped"
    assert "stage tune: sweep already complete" in logs
    print(f"\npipeline job: first {first_s:.1f} s, rerun {second_s:.1f} s")

"""cluster.yaml: valid for Ray's cluster launcher (the JSON schema shipped in the ray wheel and
Ray's own config preparation + validation, as `ray up` runs them before any cloud call), with a
loopback-only dashboard, token authentication on, a CPU head, GPU workers that scale from zero,
and setup commands that install this package."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"


def _schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _ray_validate(config: dict) -> dict:
    """What `ray up` does to the config before talking to the cloud provider: merge the
    provider's defaults, merge setup commands, fill per-type worker bounds, then validate
    (JSON schema + cross-field checks). No network access."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _commands(cmds: list[str]) -> list[tuple[dict[str, str], list[str]]]:
    """Each simple command of a list of shell lines as (leading VAR=value assignments, argv)."""
    out = []
    for line in cmds:
        for part in line.replace("&&", ";").replace("||", ";").split(";"):
            argv = shlex.split(part)
            env = {}
            while argv and "=" in argv[0] and not argv[0].startswith("-"):
                key, value = argv.pop(0).split("=", 1)
                env[key] = value
            if argv:
                out.append((env, argv))
    return out


def _options(argv: list[str]) -> dict[str, str | None]:
    """--key=value / --key value / --flag options of a command line."""
    opts: dict[str, str | None] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            if "=" in arg:
                key, value = arg.split("=", 1)
                opts[key] = value
            elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                opts[arg] = argv[i + 1]
                i += 1
            else:
                opts[arg] = None
        i += 1
    return opts


def _ray_start(cmds: list[str]) -> tuple[dict[str, str], dict[str, str | None]]:
    starts = [(env, argv) for env, argv in _commands(cmds) if argv[:2] == ["ray", "start"]]
    assert len(starts) == 1, f"expected exactly one `ray start` in {cmds}"
    env, argv = starts[0]
    return env, _options(argv[2:])


def _head_and_gpu_types(config: dict) -> tuple[dict, dict[str, dict]]:
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    return head, workers


# ---------------------------------------------------------------------------------------------


def test_matches_ray_json_schema():
    schema = _schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(_load()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path)) or '<top>'}: {e.message}" for e in errors)


def test_passes_ray_config_preparation_and_validation():
    prepared = _ray_validate(_load())
    assert prepared["provider"]["type"] == "aws" and prepared["provider"]["region"] == "us-west-2"
    head, workers = _head_and_gpu_types(prepared)
    # The head never counts as a worker type; every worker type is bounded by the global max.
    assert head["max_workers"] == 0
    assert all(t["max_workers"] <= prepared["max_workers"] for t in workers.values())
    assert prepared["idle_timeout_minutes"] > 0


def test_head_dashboard_on_loopback_and_token_auth_on():
    config = _load()
    text = json.dumps(config)  # the data, not the comments
    env, opts = _ray_start(config["head_start_ray_commands"])
    assert "--head" in opts
    assert opts.get("--dashboard-host") == "127.0.0.1", "dashboard must be reached through `ray dashboard` (SSH)"
    assert "0.0.0.0" not in text
    assert opts.get("--port") == "6379"
    assert opts.get("--autoscaling-config") == "~/ray_bootstrap_config.yaml"
    assert opts.get("--num-gpus") == "0", "the head takes no GPU work"
    # Token authentication: on for head and workers, never disabled, one token on every node.
    worker_env, worker_opts = _ray_start(config["worker_start_ray_commands"])
    assert worker_opts.get("--address") == "$RAY_HEAD_IP:6379"
    assert env.get("RAY_AUTH_MODE") == "token" and worker_env.get("RAY_AUTH_MODE") == "token"
    assert "RAY_AUTH_MODE=disabled" not in text.replace(" ", "") and "RAY_AUTH_MODE" in text
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert "docker" not in config or not config["docker"]


def test_cpu_head_and_gpu_workers_scale_from_zero():
    config = _load()
    head, workers = _head_and_gpu_types(config)
    assert head["resources"].get("GPU", 0) == 0
    assert head["node_config"]["InstanceType"].startswith(("m", "c", "r")), "head is a CPU instance"
    gpu = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu, "a worker type must declare GPU resources"
    for name, t in gpu.items():
        assert t["min_workers"] == 0, name
        assert 1 <= t["max_workers"] <= config["max_workers"], name
        assert t["node_config"]["InstanceType"].startswith(("g", "p")), f"{name}: not a GPU instance type"
    assert isinstance(config["idle_timeout_minutes"], (int, float)) and config["idle_timeout_minutes"] > 0


def test_setup_commands_install_this_package():
    config = _load()
    prepared = _ray_validate(config)
    mounts = config["file_mounts"]
    # Every local source of a file mount exists (relative to the repository root, where
    # `ray up` runs); the user's token file is theirs to create.
    for remote, local in mounts.items():
        if not local.startswith("~"):
            assert (REPO / local).exists(), f"file_mounts {remote}: {local} does not exist"
    repo_dirs = {str(Path(remote).parent) for remote, local in mounts.items()
                 if (REPO / local).resolve() == (REPO / "pyproject.toml").resolve()}
    assert len(repo_dirs) == 1, "pyproject.toml must be mounted so the package can be installed"
    remote_repo = repo_dirs.pop()
    assert any((REPO / local).resolve() == (REPO / "vreid").resolve() for local in mounts.values())

    def installs_vreid(cmds: list[str], extra: str | None) -> bool:
        cd = None
        for _, argv in _commands(cmds):
            if argv[0] == "cd":
                cd = argv[1]
            elif Path(argv[0]).name in ("pip", "pip3") and "install" in argv:
                targets = [a for a in argv[argv.index("install") + 1:] if not a.startswith("-")]
                for t in targets:
                    path, _, extras = t.partition("[")
                    if path == "." and cd is not None:
                        path = cd
                    if path.rstrip("/") == remote_repo and (extra is None or extra in extras):
                        return True
        return False

    assert installs_vreid(prepared["head_setup_commands"], None), prepared["head_setup_commands"]
    assert installs_vreid(prepared["worker_setup_commands"], "gpu"), prepared["worker_setup_commands"]


def _set(config: dict, dotted: str, value) -> dict:
    config = copy.deepcopy(config)
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[last] = value
    return config


@pytest.mark.parametrize("dotted, value, schema_rejects, match", [
    ("max_wokers", 8, True, "'max_wokers' was unexpected"),                         # unknown key
    ("idle_timeout_minutes", "ten", True, "'ten' is not of type 'number'"),         # wrong type
    ("available_node_types.gpu_worker.min_workers", "0", True, "'0' is not of type 'integer'"),
    ("available_node_types.gpu_worker.resources", {"CPU": 8, "GPU": 0.5}, True,     # fractional
     "0.5 is not of type 'integer'"),
    ("head_node_type", "cpu_head", False, "head_node_type"),                        # no such type
    ("available_node_types.gpu_worker.min_workers", 9, False, "max_workers"),       # > max_workers
])
def test_broken_copies_fail_validation(dotted, value, schema_rejects, match):
    broken = _set(_load(), dotted, value)
    if schema_rejects:
        with pytest.raises(jsonschema.ValidationError, match=match):
            jsonschema.validate(broken, _schema())
    with pytest.raises((jsonschema.ValidationError, ValueError), match=match):
        _ray_validate(broken)


def test_broken_yaml_file_fails(tmp_path):
    """A copy of the file with a misspelt key, read back the way `ray up` reads it."""
    text = CLUSTER_YAML.read_text().replace("\nidle_timeout_minutes:", "\nidle_timeout_minute:", 1)
    assert text != CLUSTER_YAML.read_text()
    broken = tmp_path / "cluster.yaml"
    broken.write_text(text)
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        _ray_validate(yaml.safe_load(broken.read_text()))

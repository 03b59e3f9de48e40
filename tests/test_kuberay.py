"""kubernetes/: every pod template embedded in the KubeRay RayCluster / RayJob is a valid
Kubernetes PodTemplate (the schemas of kubernetes-validate, strict: unknown fields fail), and the
manifests match what the project asks for: the in-tree autoscaler, a CPU head, GPU workers from
zero, a CPU group, resources that fit configs/aic21.yaml, an entrypoint whose script and config
exist and validate, outputs on the shared volume, one image built from kubernetes/Dockerfile at
the pinned Ray version, and Ray's auth token from one Secret everywhere."""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import ray
import yaml

from vreid.config import load_config

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "kubernetes"
K8S_VERSION = "1.37.0"  # the newest schemas kubernetes-validate ships


def _load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def _templates() -> dict[str, dict]:
    cluster, job = _load("raycluster.yaml"), _load("rayjob.yaml")
    out = {"head": cluster["spec"]["headGroupSpec"]["template"]}
    out.update({f"worker:{g['groupName']}": g["template"] for g in cluster["spec"]["workerGroupSpecs"]})
    out["submitter"] = job["spec"]["submitterPodTemplate"]
    return out


def _validate_template(name: str, template: dict) -> None:
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
                                  "template": template}, K8S_VERSION, strict=True)


def _quantity(q) -> float:
    """cpu '500m' / '8', memory '32Gi' -> a number (cores / bytes)."""
    q = str(q)
    units = {"m": 1e-3, "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40}
    for unit, factor in units.items():
        if q.endswith(unit):
            return float(q[: -len(unit)]) * factor
    return float(q)


def _container(template: dict) -> dict:
    containers = template["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.mark.parametrize("name", list(_templates()))
def test_pod_templates_match_the_kubernetes_schemas(name):
    _validate_template(name, _templates()[name])


def test_schema_validation_rejects_broken_templates():
    head = _templates()["head"]
    broken = copy.deepcopy(head)
    broken["spec"]["containers"][0]["resources"]["limitz"] = broken["spec"]["containers"][0]["resources"].pop("limits")
    with pytest.raises(kubernetes_validate.ValidationError, match="limitz"):
        _validate_template("head", broken)
    broken = copy.deepcopy(head)
    broken["spec"]["containers"][0]["ports"][0]["containerPort"] = "6379"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_template("head", broken)


def test_shared_volume_claim_is_valid_and_read_write_many():
    pvc = _load("shared-volume.yaml")
    kubernetes_validate.validate(pvc, K8S_VERSION, strict=True)
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


def test_cpu_head_gpu_group_from_zero_cpu_group_in_tree_autoscaler():
    spec = _load("raycluster.yaml")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in _container(head["template"])["resources"]["limits"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = [g for g in groups.values() if "nvidia.com/gpu" in _container(g["template"])["resources"]["limits"]]
    cpu = [g for g in groups.values() if g not in gpu]
    assert len(gpu) == 1 and cpu
    g = gpu[0]
    assert g["minReplicas"] == 0 and g.get("replicas", 0) == 0 and g["maxReplicas"] >= 1
    assert int(_container(g["template"])["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    for c in cpu:
        assert c["rayStartParams"].get("num-gpus") == "0"


def test_resources_fit_what_the_gpu_config_asks_for():
    cfg = load_config(REPO / "configs" / "aic21.yaml")
    spec = _load("raycluster.yaml")["spec"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = groups["gpu"]
    limits = _container(gpu["template"])["resources"]["limits"]
    pod_cpu, pod_gpu = _quantity(limits["cpu"]), int(limits["nvidia.com/gpu"])
    assert float(gpu["rayStartParams"]["num-cpus"]) == pod_cpu  # Ray offers what the pod has
    total_gpu = pod_gpu * gpu["maxReplicas"]
    for m in cfg.models:
        assert m.scaling.use_gpu, m.name
        assert m.scaling.cpus_per_worker <= pod_cpu and m.scaling.gpus_per_worker <= pod_gpu, m.name
        assert m.scaling.num_workers * m.scaling.gpus_per_worker <= total_gpu, m.name
    e = cfg.extract
    assert e.cpus_per_actor <= pod_cpu and e.num_gpus_per_actor <= pod_gpu
    assert e.actors * e.num_gpus_per_actor <= total_gpu
    # CPU work (the post-process actor takes 1 CPU, Tune trials cpus_per_trial) fits the CPU pods
    for name in ("cpu",):
        cpus = float(groups[name]["rayStartParams"]["num-cpus"])
        assert cpus >= max(1.0, cfg.tune.cpus_per_trial * cfg.tune.max_concurrent_trials)
    for c in [_container(t) for t in _templates().values()]:
        r = c["resources"]
        for key in r["requests"]:
            assert _quantity(r["requests"][key]) <= _quantity(r["limits"][key]), (c["name"], key)


def _workdir() -> str:
    return re.search(r"^WORKDIR\s+(\S+)", (K8S / "Dockerfile").read_text(), re.M).group(1)


def test_rayjob_entrypoint_runs_the_pipeline_with_a_valid_config_on_the_shared_volume():
    job = _load("rayjob.yaml")["spec"]
    assert job["clusterSelector"]["ray.io/cluster"] == _load("raycluster.yaml")["metadata"]["name"]
    argv = shlex.split(job["entrypoint"])
    assert argv[0] == "python"
    workdir = _workdir()

    def local(path: str) -> Path:
        assert path.startswith(workdir + "/"), f"{path} is not in the image's {workdir}"
        return REPO / path.removeprefix(workdir + "/")

    assert local(argv[1]) == REPO / "jobs" / "pipeline.py" and local(argv[1]).is_file()
    config = local(argv[argv.index("--config") + 1])
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    cfg = load_config(config, overrides)
    # outputs and data on the volume every Ray pod mounts, or the feature stores on S3
    cluster = _templates()
    mounts = [{m["mountPath"]: m["name"] for m in _container(t)["volumeMounts"]}
              for name, t in cluster.items() if name != "submitter"]
    claims = [{v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in t["spec"]["volumes"]}
              for name, t in cluster.items() if name != "submitter"]
    shared = _load("shared-volume.yaml")["metadata"]["name"]
    for path in [cfg.run_dir, cfg.data.root, *(x.root for x in cfg.data.extra_train)]:
        for m, c in zip(mounts, claims):
            mount = next((p for p in m if path.startswith(p.rstrip("/") + "/")), None)
            assert mount is not None and c[m[mount]] == shared, f"{path} is not on the shared volume"
    assert cfg.store_root.startswith("s3://") or any(cfg.store_root.startswith(p) for p in mounts[0])


def test_one_image_from_the_dockerfile_at_the_pinned_ray_version():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    images = {_container(t)["image"] for t in _templates().values()}
    assert len(images) == 1
    repo, _, tag = images.pop().rpartition(":")
    assert repo.split("/")[-1] == "vreid" and tag == version
    docker = (K8S / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+rayproject/ray:(\S+)", docker, re.M).group(1)
    assert base.split("-")[0] == ray.__version__ and "gpu" in base  # CUDA for the GPU group
    assert f"ray[default,train,tune,data]=={ray.__version__}" in docker
    assert re.search(r'pip install .*-e "\.\[gpu', docker)
    pins = {m.group(1) for m in re.finditer(r"==(\d+\.\d+\.\d+)", (REPO / "cluster.yaml").read_text())}
    assert pins == {ray.__version__}  # the VM launcher and Kubernetes run the same Ray


def test_auth_token_from_one_secret_in_every_ray_process():
    cluster = _load("raycluster.yaml")
    envs = [_container(t)["env"] for t in _templates().values()] + [cluster["spec"]["autoscalerOptions"]["env"]]
    refs = set()
    for env in envs:
        by_name = {e["name"]: e for e in env}
        assert by_name["RAY_AUTH_MODE"]["value"] == "token"
        ref = by_name["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert not ref.get("optional", False)
        refs.add((ref["name"], ref["key"]))
        assert "value" not in by_name["RAY_AUTH_TOKEN"]  # never the token itself in a manifest
    assert refs == {("vreid-ray-auth", "token")}

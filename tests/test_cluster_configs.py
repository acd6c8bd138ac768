"""The cluster configs agree with the code they launch."""

import os
import re
import shlex
from importlib import metadata

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "cluster")


def _load(path: str) -> dict:
    with open(os.path.join(CLUSTER, path)) as handle:
        return yaml.safe_load(handle)


def test_every_yaml_parses():
    found = [os.path.join(d, f) for d, _, fs in os.walk(CLUSTER) for f in fs if f.endswith((".yaml", ".yml"))]
    assert len(found) >= 2
    for path in found:
        with open(path) as handle:
            assert isinstance(yaml.safe_load(handle), dict), path


def test_launcher_installs_the_project_and_scales_gpu_workers():
    config = _load("launcher/aws-gpu.yaml")
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["max_workers"] > t["min_workers"] for t in gpu_types)  # they autoscale
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0  # a CPU head
    assert config["file_mounts"] == {"~/xai-batch": "."}
    setup = " && ".join(config["setup_commands"])
    assert "-m venv .venv" in setup and "pip install" in setup and "-e ." in setup
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "xai-batch/.venv/bin:$PATH" in head
    assert "xai-batch/.venv/bin:$PATH" in " ".join(config["worker_start_ray_commands"])


def test_rayjob_runs_the_entrypoint_on_gpu_workers_with_our_ray():
    job = _load("kuberay/rayjob.yaml")
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    entry = shlex.split(job["spec"]["entrypoint"])
    assert entry[:2] == ["python", "jobs/explain.py"] and os.path.isfile(os.path.join(ROOT, entry[1]))
    for option in ("--out", "--checkpoint"):  # cluster paths must be URIs every pod reaches
        assert "://" in entry[entry.index(option) + 1]
    assert "://" in entry[2]
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == metadata.version("ray")
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    workers = [g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]]
    assert all(int(w["resources"]["limits"]["nvidia.com/gpu"]) >= 1 for w in workers)
    assert {head["image"], *(w["image"] for w in workers)} == {head["image"]}
    with open(os.path.join(CLUSTER, "kuberay", "Dockerfile")) as handle:
        dockerfile = handle.read()
    workdir = re.search(r"^WORKDIR (\S+)", dockerfile, re.M).group(1)
    assert head["workingDir"] == workdir and all(w["workingDir"] == workdir for w in workers)
    base = re.search(r"^FROM rayproject/ray:([\d.]+)-py(\d)(\d+)", dockerfile, re.M)
    assert base.group(1) == metadata.version("ray")
    assert "COPY --chown=ray:users jobs ./jobs" in dockerfile and "RUN pip install --no-cache-dir ." in dockerfile


def test_local_scripts_bind_to_loopback_and_use_the_venv():
    with open(os.path.join(CLUSTER, "local", "start.sh")) as handle:
        start = handle.read()
    for flag in ("--node-ip-address 127.0.0.1", "--dashboard-host 127.0.0.1", 'export PATH="$(dirname "$RAY"):$PATH"'):
        assert flag in start
    assert os.access(os.path.join(CLUSTER, "local", "stop.sh"), os.X_OK)

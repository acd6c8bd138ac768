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
    assert len(found) >= 3
    for path in found:
        with open(path) as handle:
            documents = list(yaml.safe_load_all(handle))
        assert documents and all(isinstance(document, dict) for document in documents), path


def _audit_command_line(words: list[str]) -> list[str]:
    """The audit options after the nightly script's SOURCE and AUDITS, parsed by the real command."""
    from xai_batch.cli import submit_audit  # the audit's options, paths unchecked: they live on the cluster

    script = words.index("cluster/nightly/nightly-audit.sh")
    source, audits, *options = words[script + 1:]
    assert os.path.isabs(source) and os.path.isabs(audits)
    with submit_audit.make_context("audit", [source, "--out", audits + "/2026-11-27", *options]) as context:
        return context.params


def test_nightly_cronjob_creates_a_rayjob_that_runs_the_nightly_script():
    with open(os.path.join(CLUSTER, "kuberay", "nightly-audit.yaml")) as handle:
        documents = {document["kind"]: document for document in yaml.safe_load_all(handle)}
    cron = documents["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and len(cron["schedule"].split()) == 5
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == documents["ServiceAccount"]["metadata"]["name"]
    assert documents["RoleBinding"]["roleRef"]["name"] == documents["Role"]["metadata"]["name"]
    assert {"create"} <= set(documents["Role"]["rules"][0]["verbs"]) and documents["Role"]["rules"][0]["resources"] == ["rayjobs"]
    command = pod["containers"][0]["command"]
    template = yaml.safe_load(documents["ConfigMap"]["data"][os.path.basename(command[-1])])
    assert command[:3] == ["kubectl", "create", "-f"] and pod["volumes"][0]["configMap"]["name"] == documents["ConfigMap"]["metadata"]["name"]
    assert template["kind"] == "RayJob" and template["metadata"]["generateName"]  # a new name each night
    words = shlex.split(template["spec"]["entrypoint"])  # Ray runs the entrypoint through a shell
    params = _audit_command_line(words)
    assert [str(c) for c in params["fail_on"]] == ["errors>0", "misclassified>50", "changed>20"]
    cluster = template["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == metadata.version("ray")
    pods = [cluster["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in cluster["workerGroupSpecs"])]
    for spec in pods:  # every Ray pod sees /data, where images, model and audits live
        assert spec["containers"][0]["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
        assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "xai-batch-data"
    with open(os.path.join(CLUSTER, "kuberay", "Dockerfile")) as handle:
        assert "COPY --chown=ray:users cluster/nightly ./cluster/nightly" in handle.read()


def test_crontab_line_runs_the_nightly_script_with_valid_options():
    with open(os.path.join(CLUSTER, "nightly", "crontab")) as handle:
        lines = [line for line in handle.read().splitlines() if line and not line.startswith(("#", "MAILTO"))]
    [line] = lines
    fields = line.split(None, 5)
    assert len(fields[:5]) == 5 and all(re.fullmatch(r"[\d*/,-]+", field) for field in fields[:5])
    words = shlex.split(fields[5])
    words = words[: words.index(">")]  # the conditions are quoted; the first bare '>' is the log's redirection
    params = _audit_command_line(words)
    assert [str(c) for c in params["fail_on"]] == ["errors>0", "misclassified>50", "changed>20"]
    assert os.access(os.path.join(CLUSTER, "nightly", "nightly-audit.sh"), os.X_OK)


def test_launcher_installs_the_project_and_scales_gpu_workers():
    config = _load("launcher/aws-gpu.yaml")
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["max_workers"] > t["min_workers"] for t in gpu_types)  # they autoscale
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0  # a CPU head
    setup = " && ".join(config["setup_commands"])
    assert "-m venv .venv" in setup and "pip install" in setup and "-e ." in setup
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "xai-batch/.venv/bin:$PATH" in head
    assert "xai-batch/.venv/bin:$PATH" in " ".join(config["worker_start_ray_commands"])


def test_launcher_ships_only_what_the_nodes_install_and_starts_ray_with_the_token():
    config = _load("launcher/aws-gpu.yaml")
    mounts = config["file_mounts"]
    shipped = {local.removeprefix("./") for remote, local in mounts.items() if remote.startswith("~/xai-batch/")}
    assert shipped == {"pyproject.toml", "README.md", "xai_batch", "jobs"}  # named, not the whole checkout
    assert all(remote == f"~/xai-batch/{local.removeprefix('./')}" for remote, local in mounts.items()
               if remote.startswith("~/xai-batch/"))
    assert mounts["~/.ray/auth_token"] == "~/.ray/auth_token" and len(mounts) == len(shipped) + 1
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [command for command in config[key] if " start " in command]
        assert starts and all(command.startswith("RAY_AUTH_MODE=token ") for command in starts), key
        assert "chmod 600 ~/.ray/auth_token" in config[key]


def _take_the_token_from_the_secret(pods: list[dict]) -> None:
    """Every container has token authentication on, its token from the one Secret, none written here."""
    for spec in pods:
        for container in spec["containers"]:
            env = {variable["name"]: variable for variable in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token", container["name"]
            assert "value" not in env["RAY_AUTH_TOKEN"]  # no literal token in the manifest
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "xai-batch-ray-token",
                                                                          "key": "auth_token"}


def _ray_pods(rayjob_spec: dict) -> list[dict]:
    """The pod specs a RayJob starts: the submitter's, the head's and each worker group's."""
    cluster = rayjob_spec["rayClusterSpec"]
    return [rayjob_spec["submitterPodTemplate"]["spec"], cluster["headGroupSpec"]["template"]["spec"],
            *(group["template"]["spec"] for group in cluster["workerGroupSpecs"])]


def test_kuberay_clusters_and_their_submitters_carry_the_token_from_a_secret():
    with open(os.path.join(CLUSTER, "kuberay", "nightly-audit.yaml")) as handle:
        documents = {document["kind"]: document for document in yaml.safe_load_all(handle)}
    nightly = yaml.safe_load(documents["ConfigMap"]["data"]["rayjob.yaml"])
    for job in (_load("kuberay/rayjob.yaml"), nightly):
        _take_the_token_from_the_secret(_ray_pods(job["spec"]))
        assert job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["name"] == "ray-job-submitter"
    for name in ("rayjob.yaml", "nightly-audit.yaml"):  # each says how to make the Secret it needs
        with open(os.path.join(CLUSTER, "kuberay", name)) as handle:
            assert "kubectl create secret generic xai-batch-ray-token" in handle.read()


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
    for flag in ("--node-ip-address 127.0.0.1", "--dashboard-host 127.0.0.1", 'export PATH="$(dirname "$RAY"):$PATH"',
                 "export RAY_AUTH_MODE=token"):
        assert flag in start
    assert os.access(os.path.join(CLUSTER, "local", "stop.sh"), os.X_OK)

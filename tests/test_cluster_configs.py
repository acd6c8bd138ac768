"""The cluster configs agree with the code they launch."""

import os
import re
import shlex
import stat
import subprocess
import sys
from importlib import metadata

import pytest
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
    created = re.search(r"kubectl create -f (\S+) -o name", _submitter_script(pod)).group(1)
    [mount] = pod["containers"][0]["volumeMounts"]
    assert os.path.dirname(created) == mount["mountPath"]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == documents["ConfigMap"]["metadata"]["name"]
    template = yaml.safe_load(documents["ConfigMap"]["data"][os.path.basename(created)])
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


def _nightly_pod() -> tuple[dict, dict]:
    """The nightly manifest's documents by kind, and the CronJob's Job spec."""
    with open(os.path.join(CLUSTER, "kuberay", "nightly-audit.yaml")) as handle:
        documents = {document["kind"]: document for document in yaml.safe_load_all(handle)}
    return documents, documents["CronJob"]["spec"]["jobTemplate"]["spec"]


def _submitter_script(pod: dict) -> str:
    """The shell script the CronJob's one container runs."""
    [container] = pod["containers"]
    assert container["command"] == ["sh", "-c"], container
    return container["args"][0]


def test_crontab_line_runs_the_nightly_script_with_valid_options():
    with open(os.path.join(CLUSTER, "nightly", "crontab")) as handle:
        lines = [line for line in handle.read().splitlines() if line and not line.startswith(("#", "MAILTO"))]
    [line] = lines
    fields = line.split(None, 5)
    assert len(fields[:5]) == 5 and all(re.fullmatch(r"[\d*/,-]+", field) for field in fields[:5])
    words = shlex.split(fields[5])
    params = _audit_command_line(words)
    assert [str(c) for c in params["fail_on"]] == ["errors>0", "misclassified>50", "changed>20"]
    assert os.access(os.path.join(CLUSTER, "nightly", "nightly-audit.sh"), os.X_OK)


def test_crontab_keeps_the_nightly_log_private():
    """The log is the script's AUDIT_LOG in a folder of the user's own, not a fixed name in /tmp that cron
    writes 0644 (any user reads it, or makes it first as a link to a file of the crontab owner's)."""
    with open(os.path.join(CLUSTER, "nightly", "crontab")) as handle:
        [line] = [line for line in handle.read().splitlines() if line and not line.startswith(("#", "MAILTO"))]
    assert "/tmp" not in line and ">" not in line.replace("'errors,misclassified>50,changed>20'", "")
    words = shlex.split(line.split(None, 5)[5])
    [log] = [word.split("=", 1)[1] for word in words if word.startswith("AUDIT_LOG=")]
    assert log.startswith("$HOME/")
    assert words.index(f"AUDIT_LOG={log}") < words.index("cluster/nightly/nightly-audit.sh")


def _nightly(tmp_path, env: dict, *options: str) -> subprocess.CompletedProcess:
    """cluster/nightly/nightly-audit.sh for real, the real xai-batch as its command, on an empty AUDITS."""
    (tmp_path / "images").mkdir(exist_ok=True)
    full = {k: v for k, v in os.environ.items() if k not in ("RAY_JOB_ADDRESS", "RAY_ADDRESS", "AUDIT_LOG")}
    full.update(XAI_BATCH=os.path.join(os.path.dirname(sys.executable), "xai-batch"), AUDIT_DATE="2026-11-27",
                **env)
    return subprocess.run([os.path.join(CLUSTER, "nightly", "nightly-audit.sh"), str(tmp_path / "images"),
                           str(tmp_path / "audits"), *options], env=full, capture_output=True, text=True, timeout=120)


def test_nightly_script_logs_privately_and_prints_only_a_failing_night(tmp_path):
    log = tmp_path / "home" / ".local" / "state" / "xai-batch" / "nightly-audit.log"
    quiet = _nightly(tmp_path, {"AUDIT_LOG": str(log)}, "--help")  # the real audit command, succeeding
    assert quiet.returncode == 0 and quiet.stdout == quiet.stderr == "", quiet.stdout + quiet.stderr
    assert "audit of " in log.read_text() and "Usage: xai-batch audit" in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and stat.S_IMODE(log.parent.stat().st_mode) == 0o700

    victim = tmp_path / "victim"
    victim.write_text("the crontab owner's file\n")
    log.unlink()
    log.symlink_to(victim)  # a log made for us is replaced, never written through
    failed = _nightly(tmp_path, {"AUDIT_LOG": str(log)}, "--fail-on", "nonsense")  # a usage error: exit 2
    assert failed.returncode == 2 and failed.stderr == "", failed.stdout + failed.stderr
    assert failed.stdout == log.read_text()  # cron mails this night's log, and only on failure
    assert failed.stdout.startswith(f"audit of {tmp_path / 'images'} into {tmp_path / 'audits'}/2026-11-27")
    assert "--fail-on" in failed.stdout and not log.is_symlink() and victim.read_text() == "the crontab owner's file\n"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_nightly_script_refuses_a_log_folder_others_may_write_in(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    refused = _nightly(tmp_path, {"AUDIT_LOG": str(shared / "nightly-audit.log")})
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"the log folder {shared} is another user's, or others may write in it" in refused.stderr
    assert list(shared.iterdir()) == [] and not (tmp_path / "audits").exists()  # refused before the audit


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


def _start(tmp_path, token_file, mode: int | None = None) -> subprocess.CompletedProcess:
    """cluster/local/start.sh for real up to its last line, with RAY=echo so that no Ray starts."""
    if mode is not None:
        token_file.write_text("ab" * 32)
        token_file.chmod(mode)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    env.update(HOME=str(tmp_path), RAY_AUTH_TOKEN_PATH=str(token_file), RAY="/bin/echo")
    return subprocess.run([os.path.join(CLUSTER, "local", "start.sh")], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o660, 0o610], ids=oct)
def test_start_refuses_a_token_file_open_to_others(tmp_path, mode):
    token_file = tmp_path / "auth_token"
    started = _start(tmp_path, token_file, mode)
    assert started.returncode == 2, started.stdout + started.stderr
    assert started.stderr == (f"start.sh: the token file {token_file} is open to its group or others, who could "
                              f"read or replace the cluster's token; refusing to start: chmod 600 {token_file}, or "
                              "remove it to have a new one written (others may have read this one)\n")
    assert started.stdout == ""  # Ray was never started


def test_start_refuses_another_users_token_file(tmp_path):
    if os.getuid() == 0:  # root can make one; anyone else takes a file root owns
        token_file = tmp_path / "auth_token"
        token_file.write_text("ab" * 32)
        token_file.chmod(0o600)
        os.chown(token_file, 65534, 65534)
    else:
        token_file = "/etc/passwd"
    started = _start(tmp_path, token_file)
    assert started.returncode == 2 and started.stdout == "", started.stdout + started.stderr
    assert started.stderr.startswith(f"start.sh: the token file {token_file} belongs to another user")


def test_start_uses_a_private_token_file_and_writes_a_new_one_private(tmp_path):
    token_file = tmp_path / "auth_token"
    started = _start(tmp_path, token_file, 0o600)
    assert started.returncode == 0 and started.stderr == "", started.stderr
    assert started.stdout.startswith("start --head --node-ip-address 127.0.0.1")
    written = tmp_path / "new" / "auth_token"
    started = _start(tmp_path, written)
    assert started.returncode == 0 and started.stdout.startswith("start --head"), started.stderr
    assert stat.S_IMODE(written.stat().st_mode) == 0o600 and stat.S_IMODE(written.parent.stat().st_mode) == 0o700
    assert re.fullmatch(r"[0-9a-f]{64}", written.read_text())


def _kuberay_images() -> list[str]:
    """Every container image the KubeRay manifests name, the nightly RayJob's in its ConfigMap included."""
    documents, _ = _nightly_pod()
    specs = [_load("kuberay/rayjob.yaml"), yaml.safe_load(documents["ConfigMap"]["data"]["rayjob.yaml"]),
             *documents.values()]
    found: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            found.extend(c["image"] for key in ("containers", "initContainers") for c in node.get(key, []))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(specs)
    return found


def test_kuberay_images_are_pinned_to_full_versions():
    """No moving tag (bitnami/kubectl:1.34 was one): our own image at its version, kubectl in it from
    Kubernetes' release image at a full version (or a digest), the Ray base at Ray's."""
    images = _kuberay_images()
    assert len(images) >= 7 and set(images) == {"REGISTRY/xai-batch:0.1.0"}
    with open(os.path.join(CLUSTER, "kuberay", "Dockerfile")) as handle:
        dockerfile = handle.read()
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert all(re.search(r"(:v?\d+\.\d+\.\d+(-[\w.-]+)?|@sha256:[0-9a-f]{64})$", base) for base in bases), bases
    kubectl = re.search(r"^FROM (registry\.k8s\.io/kubectl:v\d+\.\d+\.\d+\S*) AS (\w+)$", dockerfile, re.M)
    assert kubectl and re.search(rf"^COPY --from={kubectl.group(2)} /bin/kubectl /usr/local/bin/kubectl$",
                                 dockerfile, re.M)


FAKE_KUBECTL = """#!/bin/sh
# kubectl as the nightly submitter uses it: `create` answers as FAKE_CREATE says, each `get` the next line of
# FAKE_STATES ('!' for an API error); every call is logged.
echo "$*" >> "$FAKE_CALLS"
case $1 in
create) [ "$FAKE_CREATE" = ok ] || { echo "error: the server could not find the requested resource" >&2; exit 1; }
        echo rayjob.ray.io/xai-batch-audit-x7k2p ;;
get)    line=$(head -n 1 "$FAKE_STATES"); sed -i 1d "$FAKE_STATES"
        [ -n "$line" ] && [ "$line" != "!" ] || { echo "error: connection refused" >&2; exit 1; }
        printf %s "$line" ;;
esac
"""


@pytest.mark.parametrize("create, states, succeeds", [
    ("fails", [], False),  # no RayJob: the Job fails, so the night still alerts
    ("ok", ["Initializing/", "!", "Running/RUNNING", "Complete/SUCCEEDED"], True),  # an API blip is waited out
    ("ok", ["Running/RUNNING", "Complete/FAILED"], False),  # the driver exited non-zero (3: --fail-on)
    ("ok", ["Running/RUNNING", "Complete/STOPPED"], False),
    ("ok", ["Running/RUNNING", "Failed/RUNNING"], False),  # KubeRay gave up on it (its deadline)
])
def test_nightly_submitter_fails_its_job_when_the_night_fails(tmp_path, create, states, succeeds):
    """The CronJob's script, run by a shell, against a kubectl that answers as KubeRay would (the
    API server is not at hand), with `sleep` returning at once. Its Job fails whenever the night did:
    one alert on failed Jobs covers a RayJob never created and a RayJob that failed."""
    documents, job = _nightly_pod()
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and job["backoffLimit"] == 0  # a failure is final: never a second audit
    rayjob = yaml.safe_load(documents["ConfigMap"]["data"]["rayjob.yaml"])
    assert 0 < rayjob["spec"]["activeDeadlineSeconds"] < job["activeDeadlineSeconds"] < 24 * 3600
    assert job["template"]["metadata"]["labels"] == rayjob["metadata"]["labels"] == {"app": "xai-batch-audit"}
    assert documents["CronJob"]["spec"]["jobTemplate"]["metadata"]["labels"] == {"app": "xai-batch-audit"}
    verbs = set(documents["Role"]["rules"][0]["verbs"])
    assert {"create", "get"} <= verbs and not verbs & {"delete", "patch", "update"}

    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "kubectl").write_text(FAKE_KUBECTL)
    (tools / "sleep").write_text("#!/bin/sh\n")
    for tool in tools.iterdir():
        tool.chmod(0o755)
    (tmp_path / "states").write_text("".join(f"{state}\n" for state in states))
    env = {"PATH": f"{tools}:{os.environ['PATH']}", "FAKE_CREATE": create, "FAKE_STATES": str(tmp_path / "states"),
           "FAKE_CALLS": str(tmp_path / "calls")}
    done = subprocess.run(["sh", "-c", _submitter_script(pod)], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode == 0) == succeeds, done.stdout + done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == "create -f /rayjob/rayjob.yaml -o name"
    assert len(calls) == 1 + len(states)  # it asked until the RayJob ended, and no further
    assert all(call.startswith("get rayjob.ray.io/xai-batch-audit-x7k2p -o jsonpath=") for call in calls[1:])
    if states:
        assert done.stdout.rstrip().endswith(f"ended: {states[-1]} (deployment/Ray job)")

"""Joining a running ``ray start --head`` cluster with ``--address``."""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest

from helpers import assert_verified
from xai_batch.manifest import read_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A real one-node cluster from cluster/local/start.sh on free loopback ports.

    Started with ``--block`` in its own process group and stopped by signalling
    that group: ``ray stop`` would also stop the test session's own Ray.
    """
    temp = tmp_path_factory.mktemp("rayhead")
    port = _free_port()
    dashboard = _free_port()
    env = dict(os.environ, RAY_PORT=str(port), RAY_DASHBOARD_PORT=str(dashboard), RAY_NUM_CPUS="2",
               RAY=os.path.join(os.path.dirname(sys.executable), "ray"), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_AUTH_TOKEN_PATH=str(temp / "auth_token"))  # not there yet: start.sh writes the head a new one
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE"):
        env.pop(name, None)
    # Every port of its own: the session's Ray (ray_session) already holds the default agent ports,
    # and a head whose job agent cannot bind refuses submissions ("No available agent").
    agent_ports = [f"--{name}={_free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")]
    extra = ["--temp-dir", str(temp), "--resources", '{"xai_test_head": 1}', "--disable-usage-stats", *agent_ports,
             "--block"]
    process = subprocess.Popen([os.path.join(ROOT, "cluster/local/start.sh"), *extra], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (_listening(port) and _listening(dashboard)):
            assert process.poll() is None and time.monotonic() < deadline, "ray start --head did not come up"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", env, f"http://127.0.0.1:{dashboard}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_explain_joins_a_running_head(head, shapes_data, shapes_model, tmp_path):
    address, env, _ = head
    source = tmp_path / "one"
    source.mkdir()
    shutil.copy(os.path.join(shapes_data["holdout"], "square", "square_0000.png"), source / "sq.png")
    done = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "xai-batch"), "explain", str(source), "--out",
         str(tmp_path / "out"), "--checkpoint", shapes_model, "--num-samples", "20", "--address", address,
         "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((tmp_path / "out" / "job.json").read_text())
    assert record["runs"][-1]["ray"]["cluster_resources"].get("xai_test_head") == 1.0  # it ran on that cluster
    assert read_manifest(str(tmp_path / "out")).column("status").to_pylist() == ["ok"]
    assert_verified(str(tmp_path / "out"), str(source))


def _post_job(dashboard: str, headers: dict) -> int:
    """The HTTP status of a raw Jobs API submission with ``headers``."""
    request = urllib.request.Request(f"{dashboard}/api/jobs/", data=json.dumps({"entrypoint": "true"}).encode(),
                                     headers={"Content-Type": "application/json", **headers}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_the_head_refuses_a_job_without_its_token(head, tmp_path):
    """start.sh turned token authentication on and wrote the head a token only its owner reads."""
    _, env, dashboard = head
    token_file = env["RAY_AUTH_TOKEN_PATH"]
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    with open(token_file) as handle:
        token = handle.read()
    assert re.fullmatch(r"[0-9a-f]{64}", token)  # 256 random bits
    assert _post_job(dashboard, {}) == 401
    assert _post_job(dashboard, {"Authorization": "Bearer " + "0" * 64}) == 403

    command = [os.path.join(os.path.dirname(sys.executable), "xai-batch"), "jobs", "--address", dashboard, "list"]
    without = subprocess.run(command, env={**env, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "no-token")},
                             capture_output=True, text=True, timeout=120)
    assert without.returncode == 1 and "Traceback" not in without.stderr
    assert without.stderr.startswith(f"Error: the Ray Jobs API at {dashboard} requires the cluster's token")
    wrong = subprocess.run(command, env={**env, "RAY_AUTH_TOKEN": "0" * 64}, capture_output=True, text=True,
                           timeout=120)
    assert wrong.returncode == 1 and "refused the token" in wrong.stderr
    accepted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert accepted.returncode == 0, accepted.stderr


def test_submit_and_plain_ray_job_submit(head, shapes_data, shapes_model, tmp_path):
    """`xai-batch submit --wait` and Ray's own `ray job submit` against a token-auth head."""
    _, env, dashboard = head
    source = tmp_path / "two"
    source.mkdir()
    for name in ("disc/disc_0000.png", "triangle/triangle_0001.png"):
        shutil.copy(os.path.join(shapes_data["holdout"], name), source / os.path.basename(name))
    bin_dir = os.path.dirname(sys.executable)
    client_env = {k: v for k, v in env.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    submitted = subprocess.run(
        [os.path.join(bin_dir, "xai-batch"), "submit", "--address", dashboard, "--wait", "explain", str(source),
         "--out", str(tmp_path / "submitted"), "--checkpoint", shapes_model, "--num-samples", "20",
         "--no-progress"],
        env=client_env, capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert re.search(r"^submitted raysubmit_\w+ to " + re.escape(dashboard), submitted.stdout, re.M)
    assert "2 images: 2 explained, 0 errors" in submitted.stdout  # the job's own output, streamed
    assert submitted.stdout.rstrip().endswith("succeeded")
    assert_verified(str(tmp_path / "submitted"), str(source))

    plain = subprocess.run(
        [os.path.join(bin_dir, "ray"), "job", "submit", "--address", dashboard, "--working-dir", ROOT, "--",
         "python", "jobs/explain.py", str(source), "--out", str(tmp_path / "plain"), "--checkpoint",
         shapes_model, "--num-samples", "20", "--no-progress"],
        env={**client_env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=600,
    )
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert_verified(str(tmp_path / "plain"), str(source))
    a, b = read_manifest(str(tmp_path / "submitted")), read_manifest(str(tmp_path / "plain"))
    assert a.column("mask").to_pylist() == b.column("mask").to_pylist()


def test_submit_audit_exits_as_the_audit_did(head, shapes_data, shapes_model, tmp_path):
    """`xai-batch submit --wait audit`: jobs/audit.py on the cluster; its exit 3 reaches the scheduler."""
    _, env, dashboard = head
    source = tmp_path / "audited"
    for name, folder in (("square/square_0000.png", "square"), ("square/square_0001.png", "cat")):
        (source / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(shapes_data["holdout"], name), source / folder / os.path.basename(name))
    client_env = {k: v for k, v in env.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    submitted = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "xai-batch"), "submit", "--address", dashboard, "--wait",
         "audit", str(source), "--out", str(tmp_path / "audit"), "--checkpoint", shapes_model,
         "--num-samples", "20", "--no-faithfulness", "--no-stability", "--no-progress",
         "--fail-on", "misclassified,changed"],
        env=client_env, capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
    )
    assert submitted.returncode == 3, submitted.stdout + submitted.stderr
    assert "findings: errors 0, misclassified 1" in submitted.stdout and "failed: misclassified>0" in submitted.stdout
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert [f["path"] for f in audit["findings"]["misclassified"]] == ["cat/square_0001.png"]
    assert audit["failed"] == ["misclassified>0"]
    assert_verified(str(tmp_path / "audit"), str(source))


def test_jobs_verbs_and_a_failing_job(head, tmp_path):
    _, env, dashboard = head
    client_env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    xai_batch = os.path.join(os.path.dirname(sys.executable), "xai-batch")

    def run(*args):
        return subprocess.run([xai_batch, *args], env=client_env, capture_output=True, text=True, timeout=300)

    failed = run("submit", "--address", dashboard, "--wait", "explain", "/no/such/folder", "--out",
                 str(tmp_path / "o"), "--num-samples", "4")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Invalid value for 'SOURCE'" in failed.stdout and failed.stdout.rstrip().endswith("failed")
    job_id = re.search(r"submitted (raysubmit_\w+)", failed.stdout).group(1)
    listed = run("jobs", "--address", dashboard, "list")
    assert listed.returncode == 0 and job_id in listed.stdout and "FAILED" in listed.stdout
    status = run("jobs", "--address", dashboard, "status", job_id)
    assert status.returncode == 0 and f"{job_id}  FAILED" in status.stdout
    logs = run("jobs", "--address", dashboard, "logs", job_id)
    assert "Invalid value for 'SOURCE'" in logs.stdout
    stop = run("jobs", "--address", dashboard, "stop", job_id)
    assert stop.returncode == 0 and "had already ended" in stop.stdout
    unknown = run("jobs", "--address", dashboard, "status", "raysubmit_nope")
    assert unknown.returncode == 1 and unknown.stderr.startswith("Error: Ray Jobs API at ")

    unwaited = run("submit", "--address", dashboard, "explain", "/no/such/folder", "--out", str(tmp_path / "o2"),
                   "--num-samples", "4")
    assert unwaited.returncode == 0, unwaited.stdout + unwaited.stderr
    hint = re.search(r"^follow it with: xai-batch (.*)$", unwaited.stdout, re.M).group(1)
    followed = run(*shlex.split(hint), "--follow")  # the command it prints is one that works
    assert followed.returncode == 0 and "Invalid value for 'SOURCE'" in followed.stdout, followed.stderr


def test_unreachable_cluster_is_a_quick_one_line_error(tmp_path):
    port = _free_port()  # nothing listens there
    xai_batch = os.path.join(os.path.dirname(sys.executable), "xai-batch")
    done = subprocess.run([xai_batch, "jobs", "--address", f"http://127.0.0.1:{port}", "list"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr == (f"Error: no Ray cluster answers at http://127.0.0.1:{port} (Connection refused); "
                           "start one (cluster/local/start.sh) or pass the right --address / RAY_ADDRESS\n")


def test_relative_paths_are_refused_for_a_remote_cluster(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from xai_batch.cli import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    result = CliRunner().invoke(cli, ["submit", "--address", "http://10.0.0.5:8265", "explain", "photos",
                                      "--out", "/shared/out"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for 'SOURCE': relative path 'photos' would not exist on the cluster" in result.output
    missing = CliRunner().invoke(cli, ["submit", "--address", "http://10.0.0.5:8265", "explain", "s3://b/photos",
                                       "--out", "s3://b/out", "--checkpoint", "nope.pt"])
    assert missing.exit_code == 2 and "Invalid value for '--checkpoint': 'nope.pt' is not a file" in missing.output


def test_two_node_cluster_shares_the_work(three_shapes, shapes_model, tmp_path):
    """Two raylets on this machine (ray.cluster_utils.Cluster), each with its own custom resource."""
    out = str(tmp_path / "out")
    driver = textwrap.dedent(f"""
        import json, logging, ray
        from ray.cluster_utils import Cluster
        from xai_batch import ExplainConfig, run_explain
        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 2, "resources": {{"head_node": 1}}}})
        cluster.add_node(num_cpus=1, resources={{"second_node": 1}})
        ray.init(address=cluster.address, logging_level=logging.ERROR)
        result = run_explain(ExplainConfig(source={three_shapes!r}, out={out!r},
                                           checkpoint={shapes_model!r}, num_samples=32, batch_size=8,
                                           actors=2), progress=False)
        nodes = {{n["NodeID"]: sorted(n["Resources"]) for n in ray.nodes() if n["Alive"]}}
        print("NODES", json.dumps(nodes))
        ray.shutdown()
        cluster.shutdown()
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every address on loopback
    process = subprocess.Popen([sys.executable, "-c", driver], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=600)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert process.returncode == 0, stderr[-3000:]
    nodes = json.loads(stdout.split("NODES ", 1)[1])
    by_resource = {next(r for r in resources if r.endswith("_node")): node for node, resources in nodes.items()}
    run = json.loads(open(os.path.join(out, "job.json")).read())["runs"][-1]
    placed = {replica["node_id"] for replica in run["ray"]["replicas"]}
    assert placed == {by_resource["head_node"], by_resource["second_node"]}  # one replica on each node
    worked = run["ray"]["chunks_by_node"]
    assert worked[by_resource["head_node"]] > 0 and worked[by_resource["second_node"]] > 0
    assert sum(worked.values()) == 3 * 4  # 32 samples in calls of 8
    assert_verified(out, three_shapes)


def test_a_torchscript_checkpoint_ships_with_its_json_and_keeps_its_prefix(tmp_path):
    """A job runs a TorchScript file only as the user named it: torchscript:FILE travels as such."""
    from xai_batch.distributed.jobs_client import stage_working_dir

    (tmp_path / "model.pt").write_bytes(b"archive")
    (tmp_path / "model.pt.json").write_text('{"class_names": ["a", "b"]}')
    staging = tmp_path / "staging"
    staging.mkdir()
    assert stage_working_dir(str(staging), f"torchscript:{tmp_path / 'model.pt'}") == "torchscript:checkpoints/model.pt"
    assert (staging / "checkpoints" / "model.pt").read_bytes() == b"archive"
    assert (staging / "checkpoints" / "model.pt.json").exists()
    assert stage_working_dir(str(tmp_path / "again"), "torchvision:resnet50") == "torchvision:resnet50"

"""Joining a running ``ray start --head`` cluster with ``--address``."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import assert_verified
from xai_batch.manifest import read_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def head(tmp_path_factory):
    """A real one-node cluster from cluster/local/start.sh on free loopback ports.

    Started with ``--block`` in its own process group and stopped by signalling
    that group: ``ray stop`` would also stop the test session's own Ray.
    """
    temp = tmp_path_factory.mktemp("rayhead")
    port = _free_port()
    env = dict(os.environ, RAY_PORT=str(port), RAY_DASHBOARD_PORT=str(_free_port()), RAY_NUM_CPUS="2",
               RAY=os.path.join(os.path.dirname(sys.executable), "ray"), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    env.pop("RAY_ADDRESS", None)
    extra = ["--temp-dir", str(temp), "--resources", '{"xai_test_head": 1}', "--disable-usage-stats", "--block"]
    process = subprocess.Popen([os.path.join(ROOT, "cluster/local/start.sh"), *extra], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not _listening(port):
            assert process.poll() is None and time.monotonic() < deadline, "ray start --head did not come up"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", env
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


def test_explain_joins_a_running_head(head, shapes_data, trained, tmp_path):
    address, env = head
    source = tmp_path / "one"
    source.mkdir()
    shutil.copy(os.path.join(shapes_data["holdout"], "square", "square_0000.png"), source / "sq.png")
    done = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "xai-batch"), "explain", str(source), "--out",
         str(tmp_path / "out"), "--checkpoint", trained.checkpoint, "--num-samples", "20", "--address", address,
         "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((tmp_path / "out" / "job.json").read_text())
    assert record["runs"][-1]["ray"]["cluster_resources"].get("xai_test_head") == 1.0  # it ran on that cluster
    assert read_manifest(str(tmp_path / "out")).column("status").to_pylist() == ["ok"]
    assert_verified(str(tmp_path / "out"), str(source))

"""The cluster's token: read only from a file that is the user's own and private, and never sent in clear.

``connected`` is driven in a fresh Python (the ``joins`` fixture): in this process the session's Ray may
already be up, and then ``connected`` joins nothing and checks nothing. There an audit hook stops each
connection the call tries to open (``ConnectBlocked``) but those to the test's own loopback listener,
so a call that is not refused shows where it would have connected, and no case touches the network or
starts Ray.
"""

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading

import pytest
from click.testing import CliRunner

from xai_batch.cli import cli
from xai_batch.distributed.cluster import auth_token
from xai_batch.errors import ConfigError, XaiBatchError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "ab" * 32
REMOTE = "10.255.255.1:6379"  # another machine's GCS, as far as the address says


@pytest.fixture
def token_env(monkeypatch, tmp_path):
    """No token from this machine's environment or home: each test says where its token is."""
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_USE_TLS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def _token_file(path, mode: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TOKEN + "\n")
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o602, 0o606, 0o610, 0o601], ids=oct)
def test_a_token_file_open_to_group_or_others_is_refused(token_env, tmp_path, mode):
    path = _token_file(tmp_path / "auth_token", mode)
    token_env.setenv("RAY_AUTH_TOKEN_PATH", path)
    with pytest.raises(XaiBatchError) as refused:
        auth_token()
    assert not isinstance(refused.value, ConfigError)  # the file, not an option, is wrong: exit 1
    assert str(refused.value) == (f"the token file {path} is open to its group or others (mode {mode:04o}), so "
                                  f"they can read or replace the cluster's token: chmod 600 {path}")


def test_the_default_token_file_is_checked_too(token_env, tmp_path):
    path = _token_file(tmp_path / "home" / ".ray" / "auth_token", 0o644)
    with pytest.raises(XaiBatchError, match=f"chmod 600 {path}$"):
        auth_token()
    os.chmod(path, 0o600)
    assert auth_token() == TOKEN


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_token_file_is_read(token_env, tmp_path, mode):
    token_env.setenv("RAY_AUTH_TOKEN_PATH", _token_file(tmp_path / "auth_token", mode))
    assert auth_token() == TOKEN


def test_a_token_file_of_another_user_is_refused(token_env, tmp_path):
    if os.getuid() == 0:  # root can make one; anyone else takes a file root owns
        path = _token_file(tmp_path / "auth_token", 0o600)
        os.chown(path, 65534, 65534)
    else:
        path = "/etc/passwd"
    token_env.setenv("RAY_AUTH_TOKEN_PATH", path)
    with pytest.raises(XaiBatchError) as refused:
        auth_token()
    owner = os.stat(path).st_uid
    assert str(refused.value) == (f"the token file {path} belongs to another user (uid {owner}), who can read or "
                                  "replace the cluster's token: copy it to a file of your own, chmod 600 that file "
                                  "and point RAY_AUTH_TOKEN_PATH at it")


def test_no_file_or_a_token_in_the_environment_needs_no_check(token_env, tmp_path):
    token_env.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))
    assert auth_token() is None
    token_env.setenv("RAY_AUTH_TOKEN_PATH", _token_file(tmp_path / "auth_token", 0o644))
    token_env.setenv("RAY_AUTH_TOKEN", "cd" * 32)  # the file is not read, so not judged
    assert auth_token() == "cd" * 32


@pytest.fixture(scope="module")
def listener():
    """A real TCP server on the loopback that takes each connection and closes it: reachable, no cluster."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # closed: the module's tests are done
                return
            connection.close()

    threading.Thread(target=serve, daemon=True).start()
    yield "127.0.0.1:{}".format(server.getsockname()[1])
    server.close()


def test_jobs_refuses_an_open_token_file_before_sending_it(token_env, tmp_path, listener):
    path = _token_file(tmp_path / "auth_token", 0o640)
    token_env.setenv("RAY_AUTH_TOKEN_PATH", path)
    result = CliRunner().invoke(cli, ["jobs", "--address", f"http://{listener}", "list"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output == (f"Error: the token file {path} is open to its group or others (mode 0640), so they "
                             f"can read or replace the cluster's token: chmod 600 {path}\n")


def test_an_embedded_ray_gets_a_new_token_only_its_owner_reads(token_env, tmp_path):
    from xai_batch.distributed.cluster import _write_private_token

    _write_private_token()
    written = tmp_path / "home" / ".ray" / "auth_token"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600 and stat.S_IMODE(written.parent.stat().st_mode) == 0o700
    token = auth_token()
    assert token == written.read_text() and re.fullmatch(r"[0-9a-f]{64}", token)
    _write_private_token()
    assert auth_token() == token  # one that is there is kept


@pytest.mark.parametrize("setting", [{"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_TOKEN": TOKEN},
                                     {"RAY_AUTH_TOKEN_PATH": "/nonexistent/auth_token"}])
def test_no_token_is_written_when_one_is_named_or_none_is_wanted(token_env, tmp_path, setting):
    from xai_batch.distributed.cluster import _write_private_token

    for name, value in setting.items():
        token_env.setenv(name, value)
    _write_private_token()
    assert not (tmp_path / "home" / ".ray").exists()


@pytest.mark.slow
def test_an_embedded_ray_is_new_and_leaves_no_token_others_can_read(tmp_path):
    """A real embedded Ray (``connected(None)``) in a fresh home, under the usual umask 022, with which
    Ray's own new token would be 0644; and in a Ray temp folder where a past ``ray start`` left the address
    of a cluster since gone (``ray.init()`` would try to join it, and fail)."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths go under it
    try:
        os.mkdir(os.path.join(temp, "ray"))
        with open(os.path.join(temp, "ray", "ray_current_cluster"), "w") as recorded:
            recorded.write(f"127.0.0.1:{_free_port()}")
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_AUTH_MODE")}
        env.update(HOME=str(tmp_path), PYTHONPATH=ROOT, RAY_TMPDIR=temp)
        code = ("import os, ray\nfrom xai_batch.distributed.cluster import connected\nos.umask(0o022)\n"
                "with connected(None):\n    print(int(ray.cluster_resources()['CPU']))\n")
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0 and int(done.stdout.split()[-1]) >= 1, done.stderr[-3000:]
    written = tmp_path / ".ray" / "auth_token"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600 and re.fullmatch(r"[0-9a-f]{64}", written.read_text())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


DRIVER = """
import json, os, sys, threading, time
import ray  # imported first: only the call's own connections are watched
from xai_batch.distributed import cluster


class ConnectBlocked(Exception):
    \"\"\"A connection the call tried to open, stopped before it left the process.\"\"\"


def block(event, args):
    if event == "socket.connect" and watching and list(args[1]) != allowed:
        raise ConnectBlocked(str(args[1]))


def watchdog():
    \"\"\"A call still joining after 20 s (one that went on to ray.init) ends the run, its case said so.\"\"\"
    while True:
        time.sleep(0.5)
        if watching and time.monotonic() - began > 20:
            ended = [*results, {"outcome": "TimeoutError: still joining after 20 s", "ray": None}]
            print(json.dumps(ended + [{"outcome": "not run", "ray": None}] * (len(cases) - len(ended))), flush=True)
            os._exit(0)


cases = json.loads(sys.argv[1])
host, port = sys.argv[2].split(":")
allowed = [host, int(port)]  # the test's loopback listener: reachable, and no cluster
results, watching, began = [], False, 0.0
sys.addaudithook(block)
threading.Thread(target=watchdog, daemon=True).start()
for case in cases:
    os.environ.update(case["env"])
    began, watching = time.monotonic(), True
    try:
        with cluster.connected(case["address"], **case["options"]):
            outcome = "joined"
    except Exception as error:
        outcome = type(error).__name__ + ": " + str(error)
    watching = False
    for name in case["env"]:
        del os.environ[name]
    results.append({"outcome": outcome, "ray": ray.is_initialized()})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def joins(tmp_path_factory, listener):
    """What ``connected`` did with each case, in a fresh Python on this tree's package."""
    folder = tmp_path_factory.mktemp("tokens")
    private = _token_file(folder / "private", 0o600)
    loopback = f"127.0.0.1:{_free_port()}"
    cases = {
        "remote, plain gRPC": (REMOTE, {}, {"RAY_AUTH_TOKEN_PATH": private}),
        "remote, RAY_AUTH_TOKEN": (REMOTE, {}, {"RAY_AUTH_TOKEN": TOKEN}),
        "remote, insecure": (REMOTE, {"insecure": True}, {"RAY_AUTH_TOKEN_PATH": private}),
        "remote, TLS": (REMOTE, {}, {"RAY_AUTH_TOKEN_PATH": private, "RAY_USE_TLS": "1"}),
        "remote, no token": (REMOTE, {}, {"RAY_AUTH_TOKEN_PATH": str(folder / "none")}),
        "remote, a Ray job's driver": (None, {}, {"RAY_AUTH_TOKEN": TOKEN, "RAY_ADDRESS": REMOTE,
                                                  "RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}),  # as Ray's job supervisor sets
        "loopback": (loopback, {}, {"RAY_AUTH_TOKEN_PATH": private}),
        "RAY_ADDRESS, remote": (None, {}, {"RAY_AUTH_TOKEN_PATH": private, "RAY_ADDRESS": REMOTE}),
        "open token file, remote": (REMOTE, {}, {"RAY_AUTH_TOKEN_PATH": _token_file(folder / "open", 0o644)}),
        "open token file, a reachable address": (listener, {}, {"RAY_AUTH_TOKEN_PATH": str(folder / "open")}),
        "open token file, auto": ("auto", {}, {"RAY_AUTH_TOKEN_PATH": str(folder / "open")}),
    }
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_USE_TLS")}
    env.update(HOME=str(folder), PYTHONPATH=ROOT)
    argument = json.dumps([{"address": a, "options": o, "env": e} for a, o, e in cases.values()])
    done = subprocess.run([sys.executable, "-c", DRIVER, argument, listener], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    return dict(zip(cases, results)) | {"loopback address": loopback, "open": str(folder / "open")}


@pytest.mark.parametrize("case", ["remote, plain gRPC", "remote, RAY_AUTH_TOKEN", "RAY_ADDRESS, remote",
                                  "open token file, remote"])
def test_a_token_is_not_sent_over_plain_grpc_to_another_machine(joins, case):
    result = joins[case]
    assert result["outcome"] == (  # refused before any connection, the reachability check's included
        f"ConfigError: {REMOTE} is Ray's plain gRPC (no TLS) to another machine, so the cluster's token would "
        "cross the network unencrypted: run the driver on the cluster's head (--address 127.0.0.1:6379) or submit "
        "it as a job (xai-batch submit, over https:// or an SSH tunnel), turn on Ray's TLS (RAY_USE_TLS=1 with "
        "RAY_TLS_SERVER_CERT, RAY_TLS_SERVER_KEY and RAY_TLS_CA_CERT), or pass --insecure to send it anyway")
    assert not result["ray"]


@pytest.mark.parametrize("case", ["remote, insecure", "remote, TLS", "remote, no token", "remote, a Ray job's driver"])
def test_tls_an_explicit_insecure_no_token_or_a_job_s_own_cluster_go_on(joins, case):
    """Not refused: the call goes on to the reachability check, whose connection is the first it opens.
    A driver Ray started in its cluster (a KubeRay RayJob's) joins at the head's IP, not the loopback."""
    assert joins[case] == {"outcome": f"ConnectBlocked: ('{REMOTE.split(':')[0]}', 6379)", "ray": False}


def test_a_token_goes_to_a_gcs_on_the_loopback(joins):
    host, port = joins["loopback address"].split(":")
    assert joins["loopback"] == {"outcome": f"ConnectBlocked: ('{host}', {port})", "ray": False}


@pytest.mark.parametrize("case", ["open token file, a reachable address", "open token file, auto"])
def test_joining_refuses_an_open_token_file_before_ray_starts(joins, case):
    path = joins["open"]
    assert joins[case] == {"outcome": f"XaiBatchError: the token file {path} is open to its group or others (mode "
                                      f"0644), so they can read or replace the cluster's token: chmod 600 {path}",
                           "ray": False}

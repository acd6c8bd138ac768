"""Connecting to Ray: an embedded local instance, or a running cluster.

Two addresses name a cluster: its GCS (``host:6379``), which drivers join
with ``ray.init``, and its dashboard (``http://host:8265``), which serves
the Job Submission API. Both are checked with a short TCP connect first, so
a cluster that does not answer is a one-line error within seconds, not a
minute of Ray's retries. Both send the cluster's token when one is at hand:
heads started with ``cluster/local/start.sh`` or the shipped cluster configs
require it.

The token is one bearer secret for the whole cluster, sent as it is, and only
to the address the user named for that cluster (``--address``, else
``RAY_ADDRESS``): nothing here sends it anywhere else. So it never crosses the
network in clear unless the user says so: to another machine it goes over
``https://`` or, to a GCS, over Ray's TLS (``RAY_USE_TLS=1``); plain HTTP or
plain gRPC to another machine is refused before any connection unless the
caller passes ``insecure`` (``--insecure``), a job's driver that Ray started
inside its own cluster excepted. A token kept in a file is used
only when that file is the user's own and nobody else can read or change it
(``chmod 600``), as ``cluster/local/start.sh`` also demands.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import socket
import stat
import urllib.parse
from collections.abc import Iterator

from xai_batch.errors import ConfigError, XaiBatchError

__all__ = [
    "ClusterUnreachable",
    "DEFAULT_DASHBOARD",
    "connected",
    "auth_token",
    "check_grpc_token_transport",
    "check_join",
    "check_reachable",
    "check_token_transport",
    "dashboard_address",
    "has_auth_token",
    "is_local",
]

log = logging.getLogger(__name__)

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
CONNECT_TIMEOUT_S = 5.0
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", ""})
RAY_JOB_DRIVER_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor in each driver it starts


class ClusterUnreachable(XaiBatchError):
    """The Ray cluster at the given address did not answer."""


@contextlib.contextmanager
def connected(address: str | None, insecure: bool = False, quiet: bool = False) -> Iterator[None]:
    """Use the Ray this process is already connected to, else connect.

    ``address=None`` joins ``RAY_ADDRESS`` when it is set, else starts an
    embedded local Ray that is shut down on exit (never the cluster a past
    ``ray start`` recorded in Ray's temp folder, which may be long gone);
    ``"auto"`` or ``host:port`` joins a running ``ray start --head``. Joining a cluster sends its token:
    one bound for another machine over plain gRPC is refused before any
    connection (``check_grpc_token_transport``; ``insecure`` sends it anyway),
    and one from a file others can read or write before Ray starts
    (``auth_token``). An embedded Ray gets a new token written owner-only
    when none is at hand (``_write_private_token``), not Ray's own 0644 one.
    ``quiet`` keeps Ray's own logs and the workers' output out of the
    caller's (a notebook cell's): errors still come back as exceptions.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target is not None:
        if target != "auto":
            check_join(target, insecure)
            check_reachable(target)
        auth_token()  # judges the token file before Ray reads and sends it
        _enable_token_auth_if_available()
    else:
        _write_private_token()
    log.info("starting Ray (%s)", target or "embedded local instance")
    options: dict = {"logging_level": logging.ERROR, "log_to_driver": False} if quiet else \
        {"logging_level": logging.WARNING}
    if target is None:
        options["include_dashboard"] = False
    ray.init(address=target or "local", **options)
    try:
        yield
    finally:
        ray.shutdown()


def check_join(address: str | None, insecure: bool = False) -> None:
    """Refuse, before any connection or any work, the join :func:`connected` would refuse for how it sends
    the token (``check_grpc_token_transport``): what a command asks before it starts."""
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target not in (None, "auto") and has_auth_token():
        check_grpc_token_transport(target, insecure)


def check_reachable(address: str) -> None:
    """Raise ``ClusterUnreachable`` unless ``address``'s host:port accepts a TCP connection."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
    raise ClusterUnreachable(
        f"no Ray cluster answers at {address} ({reason}); start one (cluster/local/start.sh) "
        "or pass the right --address / RAY_ADDRESS"
    )


def dashboard_address(address: str | None) -> str:
    """The Job Submission API's URL: ``--address``, else ``RAY_ADDRESS``, else the local default."""
    chosen = address or os.environ.get("RAY_ADDRESS") or DEFAULT_DASHBOARD
    if "://" not in chosen:
        chosen = f"http://{chosen}"
    return chosen


def is_local(address: str) -> bool:
    """Whether ``address`` names this machine's loopback (jobs there see this machine's files)."""
    host, _ = _host_port(address)
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        return False


def check_token_transport(address: str, insecure: bool) -> None:
    """Refuse to send the token in clear to another machine unless ``insecure``.

    A Jobs API URL that is ``https://`` or on the loopback (an SSH tunnel, or
    ``kubectl port-forward``) keeps the token off the network in clear.
    """
    if urllib.parse.urlsplit(address).scheme == "http" and not is_local(address) and not insecure:
        raise ConfigError(
            f"{address} is plain HTTP to another machine, so the cluster's token would cross the network "
            "unencrypted: reach the dashboard over https://, or through an SSH tunnel or `kubectl port-forward` "
            "(then --address http://127.0.0.1:8265), or pass --insecure to send it anyway"
        )


def check_grpc_token_transport(address: str, insecure: bool) -> None:
    """Refuse to send the token over plain gRPC to another machine's GCS unless ``insecure``.

    ``ray.init`` joins a GCS (``host:6379``) over Ray's gRPC, which carries
    the token in clear unless Ray's TLS is on (``RAY_USE_TLS=1``, with
    ``RAY_TLS_SERVER_CERT``, ``RAY_TLS_SERVER_KEY`` and ``RAY_TLS_CA_CERT``
    on every node and driver). A GCS on the loopback keeps it on this
    machine. A driver that Ray's job supervisor started (a submitted job, a
    KubeRay RayJob's entrypoint) joins its own cluster at the address Ray
    gave it, the head's own IP: the cluster's nodes already exchange the
    token over that network as the cluster is set up, so it is not refused.
    """
    if insecure or _grpc_tls() or is_local(address) or RAY_JOB_DRIVER_VARIABLE in os.environ:
        return
    raise ConfigError(
        f"{address} is Ray's plain gRPC (no TLS) to another machine, so the cluster's token would cross the "
        "network unencrypted: run the driver on the cluster's head (--address 127.0.0.1:6379) or submit it "
        "as a job (xai-batch submit, over https:// or an SSH tunnel), turn on Ray's TLS (RAY_USE_TLS=1 with "
        "RAY_TLS_SERVER_CERT, RAY_TLS_SERVER_KEY and RAY_TLS_CA_CERT), or pass --insecure to send it anyway"
    )


def has_auth_token() -> bool:
    """Whether a token is at hand to send (``auth_token`` would return one), its file not yet judged.

    The transport checks ask this first, so that plain HTTP or gRPC to
    another machine is refused before any connection; ``auth_token`` judges
    the file once the cluster answers, before the token is sent.
    """
    return _read_token()[0] is not None


def auth_token() -> str | None:
    """The cluster token from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``.

    A token read from a file is a secret only while the file is: on POSIX,
    a file that belongs to another user, or that its group or others may
    read or write, is refused with a one-line ``XaiBatchError`` naming the
    fix (``chmod 600 FILE``) rather than used. A file that is missing,
    cannot be read or is empty means no token (None).
    """
    token, path, status = _read_token()
    if token is not None and path is not None and status is not None:
        _check_token_file(path, status)
    return token


def _read_token() -> tuple[str | None, str | None, os.stat_result | None]:
    """The token at hand, the file it came from (None for ``RAY_AUTH_TOKEN``) and that file's status.

    The status is the opened file's (``fstat``), not whatever is at the path
    by the time it is judged.
    """
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip(), None, None
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip() or None, path, os.fstat(handle.fileno())
    except OSError:
        return None, None, None


def _write_private_token() -> None:
    """Give a new embedded Ray a token only its owner can read, before Ray writes one anyone can.

    ``ray.init()`` starting a local Ray with token authentication (Ray's
    default while ``RAY_AUTH_MODE`` is unset) and no token at hand writes a
    new one to ``~/.ray/auth_token`` with the process's umask, so usually
    0644: readable by every user, and refused by ``auth_token`` and
    ``cluster/local/start.sh`` afterwards. Written here first (0600, in a
    folder made 0700; ``O_EXCL``, so never through a link nor over a file),
    Ray reads it instead. Nothing is written when a token is at hand, when
    ``RAY_AUTH_TOKEN_PATH`` names a file (Ray's to find) or when token
    authentication is off.
    """
    if (os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or os.environ.get("RAY_AUTH_TOKEN")
            or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        return
    path = os.path.expanduser("~/.ray/auth_token")
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # a token (or an empty file) is there already: auth_token and Ray judge it
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_hex(32))
    log.info("wrote a new cluster token to %s (owner-only)", path)


def _check_token_file(path: str, status: os.stat_result) -> None:
    """Raise ``XaiBatchError`` unless the token file is the user's own and private to them (POSIX only).

    Windows has no owner id to compare and reports synthetic mode bits, so
    there the file's ACL is left to the user.
    """
    if not hasattr(os, "getuid"):
        return
    if status.st_uid != os.getuid():
        raise XaiBatchError(
            f"the token file {path} belongs to another user (uid {status.st_uid}), who can read or replace "
            "the cluster's token: copy it to a file of your own, chmod 600 that file and point "
            "RAY_AUTH_TOKEN_PATH at it"
        )
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o077:
        raise XaiBatchError(
            f"the token file {path} is open to its group or others (mode {mode:04o}), so they can read or "
            f"replace the cluster's token: chmod 600 {path}"
        )


def _grpc_tls() -> bool:
    """Whether Ray's gRPC, the GCS address's protocol, is set to run over TLS here."""
    return os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")


def _host_port(address: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(address if "://" in address else f"tcp://{address}")
    default = 8265 if parsed.scheme in ("http", "https") else 6379
    return parsed.hostname or "127.0.0.1", parsed.port or default


def _enable_token_auth_if_available() -> None:
    """Have ``ray.init`` send the token, when there is one.

    ``ray.init(address=...)`` sends a token only when ``RAY_AUTH_MODE=token``
    was set before Ray read its configuration. Ray's own helper sets it and
    reloads the configuration, and leaves an explicit ``RAY_AUTH_MODE``
    (``disabled``, say) alone. It is private API; the Job Submission client
    (``distributed/jobs_client.py``) passes the token in its public ``headers`` instead.
    """
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)

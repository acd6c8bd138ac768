"""Connecting to Ray: an embedded local instance, or a running cluster.

Two addresses name a cluster: its GCS (``host:6379``), which drivers join
with ``ray.init``, and its dashboard (``http://host:8265``), which serves
the Job Submission API. Both are checked with a short TCP connect first, so
a cluster that does not answer is a one-line error within seconds, not a
minute of Ray's retries. Both send the cluster's token when one is at hand:
heads started with ``cluster/local/start.sh`` or the shipped cluster configs
require it. The token is a bearer secret sent as it is, so it goes to another
machine over plain HTTP only when the user says ``--insecure``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import urllib.parse
from collections.abc import Iterator

from xai_batch.errors import ConfigError, XaiBatchError

__all__ = [
    "ClusterUnreachable",
    "DEFAULT_DASHBOARD",
    "connected",
    "auth_token",
    "check_reachable",
    "check_token_transport",
    "dashboard_address",
    "is_local",
]

log = logging.getLogger(__name__)

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
CONNECT_TIMEOUT_S = 5.0
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", ""})


class ClusterUnreachable(XaiBatchError):
    """The Ray cluster at the given address did not answer."""


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[None]:
    """Use the Ray this process is already connected to, else connect.

    ``address=None`` joins ``RAY_ADDRESS`` when it is set, else starts an
    embedded local Ray that is shut down on exit; ``"auto"`` or ``host:port``
    joins a running ``ray start --head``.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target is not None:
        if target != "auto":
            check_reachable(target)
            if auth_token() and not is_local(target) and not _grpc_tls():
                log.warning("the cluster's token goes to %s unencrypted (Ray's gRPC without TLS): join from "
                            "a machine on a trusted network, or set RAY_USE_TLS=1 with Ray's TLS settings", target)
        _enable_token_auth_if_available()
    log.info("starting Ray (%s)", target or "embedded local instance")
    options: dict = {"logging_level": logging.WARNING}
    if target is None:
        options["include_dashboard"] = False
    ray.init(address=target, **options)
    try:
        yield
    finally:
        ray.shutdown()


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


def auth_token() -> str | None:
    """The cluster token from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


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

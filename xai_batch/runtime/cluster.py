"""Connecting to Ray: an embedded local instance, or a running cluster."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import ray

__all__ = ["connected"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[None]:
    """Use the Ray this process is already connected to, else connect.

    ``address=None`` joins ``RAY_ADDRESS`` when it is set, else starts an
    embedded local Ray that is shut down on exit; ``"auto"`` or ``host:port``
    joins a running ``ray start --head``.
    """
    if ray.is_initialized():
        yield
        return
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target is not None:
        _use_token_if_available()
    log.info("starting Ray (%s)", target or "embedded local instance")
    options: dict = {"logging_level": logging.WARNING}
    if target is None:
        options["include_dashboard"] = False
    ray.init(address=target, **options)
    try:
        yield
    finally:
        ray.shutdown()



def _use_token_if_available() -> None:
    """Send the cluster token when one is at hand (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``).

    Heads started with ``ray start`` in Ray 2.60 require a token, but
    ``ray.init(address=...)`` only sends one when ``RAY_AUTH_MODE=token`` was
    set before Ray read its config. Ray's own helper sets it and reloads the
    config; it respects an explicit ``RAY_AUTH_MODE`` (e.g. ``disabled``).
    """
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)

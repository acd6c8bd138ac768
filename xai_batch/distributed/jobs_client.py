"""Ray jobs: submitting ``jobs/explain.py`` or ``jobs/audit.py`` to a cluster, and the other verbs.

A submission ships a staging folder as the job's ``working_dir``: this
checkout's ``xai_batch/`` and ``jobs/`` (a few hundred KB, so what runs is
exactly the code you have, local edits included, with no wheel to build) and,
when ``--checkpoint`` is a local file, the checkpoint itself, so a remote
cluster needs nothing from this machine. The cluster's own Python provides
the pinned dependencies: start the head from the project's venv. Ray puts
the working_dir first on the job's ``PYTHONPATH``, so the shipped package wins
over any installed one.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from xai_batch.errors import XaiBatchError, one_line
from xai_batch.storage import checkpoint_file
from xai_batch.model_files import sidecar_path
from xai_batch.distributed.cluster import (
    ClusterUnreachable,
    auth_token,
    check_reachable,
    check_token_transport,
    dashboard_address,
    has_auth_token,
)

__all__ = ["JobsClient", "Submission", "stage_working_dir", "project_root", "FINAL_STATES"]

FINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")
SHIPPED = ("xai_batch", "jobs")
STAGED_CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class Submission:
    job_id: str
    address: str
    entrypoint: str


def project_root() -> str:
    """The checkout holding this ``xai_batch`` package and its ``jobs/`` entrypoints."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # xai_batch/, above distributed/
    root = os.path.dirname(package)
    if not os.path.isfile(os.path.join(root, "jobs", "explain.py")):
        raise XaiBatchError(
            f"no jobs/explain.py next to the xai_batch package in {root}: "
            "xai-batch submit ships a source checkout (see the README's set-up)"
        )
    return root


def stage_working_dir(staging: str, checkpoint: str | None) -> str | None:
    """Fill ``staging`` with the code to ship (and a local checkpoint, with the JSON beside a model file).

    Returns the checkpoint argument as the job must see it: relative to the
    working_dir for a shipped local file (a ``torchscript:`` prefix kept),
    else unchanged (a URI, torchvision's weights by name, or None).
    """
    root = project_root()
    for name in SHIPPED:
        shutil.copytree(os.path.join(root, name), os.path.join(staging, name),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    stored = checkpoint_file(checkpoint) if checkpoint is not None else None
    if stored is None or "://" in stored:
        return checkpoint
    folder = os.path.join(staging, STAGED_CHECKPOINTS)
    os.makedirs(folder, exist_ok=True)
    shutil.copy2(stored, os.path.join(folder, os.path.basename(stored)))
    if os.path.isfile(sidecar_path(stored)):
        shutil.copy2(sidecar_path(stored), os.path.join(folder, os.path.basename(sidecar_path(stored))))
    prefix = checkpoint.removesuffix(stored)  # torchscript:, where the user said so
    return f"{prefix}{STAGED_CHECKPOINTS}/{os.path.basename(stored)}"


class JobsClient:
    """Ray's ``JobSubmissionClient`` for one cluster, with errors in one line.

    The cluster's token (``auth_token``, which refuses a token file others
    can read) goes only to this client's address, in its requests' headers.
    ``insecure`` allows sending it to another machine over plain HTTP (see
    ``check_token_transport``).
    """

    def __init__(self, address: str | None, insecure: bool = False) -> None:
        self.address = dashboard_address(address)
        if has_auth_token():
            check_token_transport(self.address, insecure)  # before any connection
        check_reachable(self.address)
        token = auth_token()  # its file judged before the token is sent
        from ray.job_submission import JobSubmissionClient

        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            self._client = JobSubmissionClient(self.address, headers=headers)
        except Exception as exc:
            raise self._refusal(exc, ClusterUnreachable(
                f"the Ray Jobs API at {self.address} refused us: {one_line(exc, keep='first')}")) from exc

    def submit(self, script: str, args: Sequence[str], checkpoint: str | None) -> Submission:
        """Submit ``python jobs/SCRIPT ARGS`` with this checkout (and checkpoint) shipped."""
        with tempfile.TemporaryDirectory(prefix="xai-batch-job-") as staging:
            shipped_checkpoint = stage_working_dir(staging, checkpoint)
            full = [*args, *(["--checkpoint", shipped_checkpoint] if shipped_checkpoint else [])]
            entrypoint = shlex.join(["python", f"jobs/{script}", *full])
            job_id = self._call(self._client.submit_job, entrypoint=entrypoint,
                                runtime_env={"working_dir": staging})
        return Submission(job_id, self.address, entrypoint)

    def wait(self, job_id: str, echo: Callable[[str], None]) -> str:
        """Stream the job's logs until it ends; return its final status."""

        async def tail() -> None:
            async for lines in self._client.tail_job_logs(job_id):
                echo(lines)

        asyncio.run(tail())
        return self.status(job_id)

    def status(self, job_id: str) -> str:
        return str(self._call(self._client.get_job_status, job_id).value)

    def exit_code(self, job_id: str) -> int | None:
        """The job driver's exit status, once it has ended (None if Ray does not know it)."""
        return getattr(self.info(job_id), "driver_exit_code", None)

    def info(self, job_id: str):
        return self._call(self._client.get_job_info, job_id)

    def logs(self, job_id: str) -> str:
        return self._call(self._client.get_job_logs, job_id)

    def stop(self, job_id: str) -> bool:
        return self._call(self._client.stop_job, job_id)

    def list(self) -> list:
        return self._call(self._client.list_jobs)

    def _call(self, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            raise self._refusal(exc, XaiBatchError(
                f"Ray Jobs API at {self.address}: {one_line(exc, keep='first')}")) from exc

    def _refusal(self, exc: Exception, otherwise: XaiBatchError) -> XaiBatchError:
        """A token the cluster wants and was not given, or refused, in words; else ``otherwise``."""
        from ray.exceptions import AuthenticationError

        if not isinstance(exc, AuthenticationError):
            return otherwise
        if str(exc).startswith("Authentication required"):
            return XaiBatchError(
                f"the Ray Jobs API at {self.address} requires the cluster's token: put it in RAY_AUTH_TOKEN, "
                "or in the file RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (cluster/local/start.sh writes it there)")
        return XaiBatchError(f"the Ray Jobs API at {self.address} refused the token we sent: it is not this "
                             "cluster's (see RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)")

"""One run at a time into an output: a lease in ``OUT/.xai-batch.lock``.

Two runs into the same ``--out`` at once would mix configurations, lose a
``job.json`` record or, with ``--overwrite``, delete each other's parts. A run
therefore holds a lease on its output while it runs: a small JSON file naming
its host, process and run, renewed every ``RENEW_SECONDS``. A second run
finds it and refuses, naming the first. A lease whose holder is gone is taken
over: on the same host when its process no longer exists, on any host when
it has not been renewed for ``STALE_SECONDS`` (the holder was killed with
its machine).

On a local disk a new lease is created whole or not at all (a hard link of
the written file, which fails where one exists), so of two runs starting
together exactly one gets it. An object store has no create-if-absent in
pyarrow's file systems, and taking over a gone holder's lease is a
replacement anywhere: there the lease is written and read back, and a run
that reads another's lease refuses, so only two runs starting within moments
of each other could both pass. The lease is removed when the run ends, and
only by the run that holds it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from xai_batch.errors import XaiBatchError
from xai_batch.storage import locate

__all__ = ["LOCK_FILE", "OutputLock", "OutputInUse", "RENEW_SECONDS", "STALE_SECONDS"]

LOCK_FILE = ".xai-batch.lock"
RENEW_SECONDS = 30.0
STALE_SECONDS = 300.0  # ten renewals missed


class OutputInUse(XaiBatchError):
    """Another run holds the output's lease."""


@dataclass(frozen=True)
class _Lease:
    host: str
    pid: int
    run_id: str
    renewed: float  # seconds since the epoch

    def gone(self, now: float) -> bool:
        """Whether the holder is gone: its process on this host no longer runs, or it stopped renewing."""
        if now - self.renewed > STALE_SECONDS:
            return True
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's live process
            return False
        return False


class OutputLock:
    """The lease on ``out`` for the run ``run_id``, as a context manager: taken on entry, released on exit.

    Entry raises :class:`OutputInUse` when another live run holds it. While
    held, a daemon thread renews it.
    """

    def __init__(self, out: str, run_id: str) -> None:
        self.out = out
        self.location = locate(out).child(LOCK_FILE)
        self.run_id = run_id
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> OutputLock:
        self._take()
        self._renewer = threading.Thread(target=self._renew, name="xai-batch-lease", daemon=True)
        self._renewer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        if self._mine():
            self.location.filesystem.delete_file(self.location.path)

    def _lease(self) -> _Lease:
        return _Lease(socket.gethostname(), os.getpid(), self.run_id, time.time())

    def _read(self) -> _Lease | None:
        try:
            return _Lease(**json.loads(self.location.read_bytes()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):  # half written or foreign: no live holder can be named
            return _Lease("?", -1, "?", 0.0)

    def _mine(self) -> bool:
        held = self._read()
        return held is not None and (held.host, held.pid, held.run_id) == (socket.gethostname(), os.getpid(), self.run_id)

    def _take(self) -> None:
        self.location.filesystem.create_dir(self.location.path.rsplit("/", 1)[0], recursive=True)
        held = self._read()
        if held is not None and not held.gone(time.time()):
            raise self._refusal(held)
        if held is None and self.location.on_disk:
            self._create_local()
            return
        self._write()  # a gone holder's lease, or an object store: write, then check it is ours
        if not self._mine():
            raise self._refusal(self._read() or self._lease())

    def _create_local(self) -> None:
        """Create the lease whole or not at all: written aside, then hard-linked into place."""
        path = self.location.path
        aside = f"{path}.{uuid.uuid4().hex[:8]}"
        with open(aside, "w") as handle:
            json.dump(asdict(self._lease()), handle)
        try:
            os.link(aside, path)
        except FileExistsError:
            raise self._refusal(self._read() or self._lease()) from None
        finally:
            os.remove(aside)

    def _write(self) -> None:
        with self.location.atomic_writer() as stream:
            stream.write(json.dumps(asdict(self._lease())).encode())

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            if self._mine():
                self._write()

    def _refusal(self, held: _Lease) -> OutputInUse:
        ago = max(0, round(time.time() - held.renewed))
        return OutputInUse(
            f"{self.out} is in use by another run (run {held.run_id}, process {held.pid} "
            f"on {held.host}, its lease renewed {ago} s ago): wait for it to end; if it is gone, its lease is taken "
            f"over after {STALE_SECONDS:.0f} s, or remove {self.location.target}")

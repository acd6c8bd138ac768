"""One run at a time into an output: a lease in ``OUT/.xai-batch.lock``.

Two runs into the same ``--out`` at once would mix configurations, lose a
``job.json`` record or, with ``--overwrite``, delete each other's parts. A run
therefore holds a lease on its output while it runs: a small JSON file naming
its host, process and run, rewritten every ``RENEW_SECONDS``. A second run
finds it and refuses, naming the first. A lease whose holder is gone is taken
over: on the same host when its process no longer exists, on any host when
it has not been renewed for ``STALE_SECONDS`` (the holder was killed with
its machine).

How old a lease is, is judged by the storage's clock alone: the lease file's
modification time against that of a file written there just now. The
holder's and the taker's clocks never meet, so a skewed clock can neither
keep a dead lease alive nor age a live one.

On a local disk (a shared file system included) every step that decides who
holds the lease is an exclusive creation:

- a new lease is written aside and hard-linked into place, which fails
  where one exists, so of two runs starting together exactly one gets it;
- a gone holder's lease is taken over by whoever first creates a marker
  named after that very lease (its content and modification time), and who
  then finds the lease unchanged; of two runs taking over the same lease,
  the second finds the marker there, or the lease already another's, and refuses.

An object store has no create-if-absent in pyarrow's file systems: there the
lease is written and read back, and two runs starting within moments of each
other could both pass. Either way a holder never writes on without its lease:
the renewal reads it first, and a run that finds another's lease there has
lost it (a pause past ``STALE_SECONDS``, say) and stops (:class:`LeaseLost`);
the manifest's writer confirms the lease before each part it writes
(:func:`confirm_lease`). The lease is removed when the run ends, and only by
the run that holds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from xai_batch.errors import XaiBatchError
from xai_batch.storage import Location, locate

__all__ = ["LOCK_FILE", "OutputLock", "OutputInUse", "LeaseLost", "confirm_lease", "RENEW_SECONDS", "STALE_SECONDS"]

LOCK_FILE = ".xai-batch.lock"
RENEW_SECONDS = 30.0
STALE_SECONDS = 300.0  # ten renewals missed
MAX_LEASE_BYTES = 4096  # a lease is a few fields; a larger file is read no further


class OutputInUse(XaiBatchError):
    """Another run holds the output's lease."""


class LeaseLost(XaiBatchError):
    """Another run took this run's lease over: this run writes nothing more into the output."""


@dataclass(frozen=True)
class _Lease:
    host: str
    pid: int
    run_id: str
    renewed: float  # the holder's clock, seconds since the epoch: shown, never compared with another clock


@dataclass(frozen=True)
class _Held:
    """A lease as found: what it says, and when the storage last saw it written."""

    lease: _Lease
    mtime_ns: int
    digest: str  # of its bytes: with ``mtime_ns``, which lease this is (a takeover's marker is named by it)


class OutputLock:
    """The lease on ``out`` for the run ``run_id``, as a context manager: taken on entry, released on exit.

    Entry raises :class:`OutputInUse` when another live run holds it. While
    held, a daemon thread renews it; :meth:`check` raises :class:`LeaseLost`
    once that thread has found the lease taken over.
    """

    def __init__(self, out: str, run_id: str) -> None:
        self.out = out
        self.location = locate(out).child(LOCK_FILE)
        self.run_id = run_id
        self.lost: _Lease | None = None  # the lease found in place of ours
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

    def check(self) -> None:
        """Raise :class:`LeaseLost` if another run has taken this run's lease over (as the renewal or
        :meth:`holds` last found)."""
        if self.lost is not None:
            raise _lost(self.out, self.run_id, self.lost)

    def holds(self) -> bool:
        """Whether this run holds the lease now: read from the storage, not remembered."""
        if self.lost is None:
            held = self._read()
            if held is None or held.lease.run_id != self.run_id:
                self.lost = held.lease if held is not None else _Lease("?", -1, "?", 0.0)
        return self.lost is None

    def _lease(self) -> _Lease:
        return _Lease(socket.gethostname(), os.getpid(), self.run_id, time.time())

    def _read(self) -> _Held | None:
        return _read_lease(self.location)

    def _mine(self) -> bool:
        held = self._read()
        return held is not None and (held.lease.host, held.lease.pid, held.lease.run_id) == (
            socket.gethostname(), os.getpid(), self.run_id)

    def _take(self) -> None:
        folder = self.location.path.rsplit("/", 1)[0]
        self.location.filesystem.create_dir(folder, recursive=True)
        held = self._read()
        if held is not None and not self._gone(held):
            raise self._refusal(held)
        if not self.location.on_disk:  # an object store: write, then check it is ours
            self._write()
            if not self._mine():
                raise self._refusal(self._read())
        elif held is None:
            self._create_local()
        else:
            self._take_over_local(held)

    def _gone(self, held: _Held) -> bool:
        """Whether ``held``'s holder is gone: its process on this host no longer runs, or the storage has not
        seen its lease renewed for ``STALE_SECONDS``."""
        if self._storage_now_ns() - held.mtime_ns > STALE_SECONDS * 1e9:
            return True
        if held.lease.host != socket.gethostname() or held.lease.pid <= 0:  # 0 and -1 would name process groups
            return False
        try:
            os.kill(held.lease.pid, 0)
        except ProcessLookupError:
            return True
        except (PermissionError, OverflowError, ValueError):  # another user's live process; a foreign pid
            return False
        return False

    def _storage_now_ns(self) -> int:
        """The storage's clock: the modification time of a hidden file written beside the lease just now."""
        probe = self.location.path.rsplit("/", 1)[0] + f"/.xai-batch.clock-{uuid.uuid4().hex[:12]}"
        filesystem = self.location.filesystem
        with filesystem.open_output_stream(probe) as stream:
            stream.write(b"")
        try:
            return int(filesystem.get_file_info(probe).mtime_ns)
        finally:
            with contextlib.suppress(OSError):
                filesystem.delete_file(probe)

    def _create_local(self) -> None:
        """Create the lease whole or not at all: written aside, then hard-linked into place."""
        path = self.location.path
        aside = f"{path}.{uuid.uuid4().hex[:8]}"
        with open(aside, "w") as handle:
            json.dump(asdict(self._lease()), handle)
        try:
            os.link(aside, path)
        except FileExistsError:
            raise self._refusal(self._read()) from None
        finally:
            os.remove(aside)

    def _take_over_local(self, held: _Held) -> None:
        """Replace the gone holder's lease ``held``, if no other run is replacing it or has: the marker named
        after ``held`` is created by one run only, and that run replaces the lease only if it is still ``held``."""
        marker = f"{self.location.path}.takeover-{held.digest}-{held.mtime_ns}"
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise OutputInUse(f"{self.out} is being taken over by another run (its marker {marker} is there): "
                              "wait for it, or remove the marker if no run is starting") from None
        try:
            now = self._read()
            if now is None:  # its holder ended meanwhile and removed it
                self._create_local()
            elif now != held:
                raise self._refusal(now)
            else:
                self._write()
        finally:
            os.remove(marker)

    def _write(self) -> None:
        with self.location.atomic_writer() as stream:
            stream.write(json.dumps(asdict(self._lease())).encode())

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            if not self.holds():
                return
            self._write()

    def _refusal(self, held: _Held | None) -> OutputInUse:
        if held is None:  # gone between two reads: the next try will tell
            return OutputInUse(f"{self.out} is in use by another run that was starting or ending: try again")
        ago = max(0, round((self._storage_now_ns() - held.mtime_ns) / 1e9))
        lease = held.lease
        return OutputInUse(
            f"{self.out} is in use by another run (run {lease.run_id}, process {lease.pid} "
            f"on {lease.host}, its lease renewed {ago} s ago): wait for it to end; if it is gone, its lease is taken "
            f"over after {STALE_SECONDS:.0f} s, or remove {self.location.target}")


def confirm_lease(out: str, run_id: str) -> None:
    """Raise :class:`LeaseLost` unless run ``run_id`` holds ``out``'s lease: what a writer asks before each part."""
    held = _read_lease(locate(out).child(LOCK_FILE))
    if held is None or held.lease.run_id != run_id:
        raise _lost(out, run_id, held.lease if held is not None else None)


def _read_lease(location: Location) -> _Held | None:
    """The lease at ``location``, or None where there is none."""
    try:
        data = location.read_bytes(MAX_LEASE_BYTES)
        _, mtime_ns = location.stat()
    except FileNotFoundError:
        return None
    except OSError:  # a link out of the output, or too large: no live holder can be named
        return _Held(_Lease("?", -1, "?", 0.0), 0, "")
    try:
        fields = json.loads(data)
        lease = _Lease(str(fields["host"]), int(fields["pid"]), str(fields["run_id"]), float(fields["renewed"]))
    except (ValueError, TypeError, KeyError):  # half written or foreign
        lease = _Lease("?", -1, "?", 0.0)
    return _Held(lease, mtime_ns, hashlib.sha256(data).hexdigest()[:16])


def _lost(out: str, run_id: str, found: _Lease | None) -> LeaseLost:
    now = "no lease" if found is None else f"the lease of run {found.run_id} (process {found.pid} on {found.host})"
    return LeaseLost(f"run {run_id} lost its lease on {out}: {now} is there instead, so another run took it over "
                     "(this one was paused or cut off past its lease): it stops, its rows so far are kept")

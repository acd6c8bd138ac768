"""Writing the manifest: atomic part files, each stamped with the run that wrote it.

Parts are written as results arrive, each to a hidden temporary name and
then renamed, so readers never see half a file.
"""

from __future__ import annotations

import datetime
import re
import time
import uuid
from collections.abc import Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from xai_batch.manifest.lock import confirm_lease
from xai_batch.manifest.schema import MANIFEST_DIR, SCHEMA
from xai_batch.storage import Location, locate

__all__ = ["ManifestWriter", "write_part", "new_run_id", "is_own_part", "TEMPORARY_PREFIX"]

OWN_PART = re.compile(r"part-[0-9A-Za-z.-]+\.parquet")  # what runs, reuse and compaction name their parts
TEMPORARY_PREFIX = ".tmp-"  # a part (or any file) being written: :meth:`~xai_batch.storage.Location.atomic_writer`


def is_own_part(name: str) -> bool:
    """Whether a file name in the manifest folder is one of the part files xai-batch writes."""
    return OWN_PART.fullmatch(name) is not None


def new_run_id() -> str:
    """A unique id that sorts by start time (UTC, to the microsecond)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:6]}"


class ManifestWriter:
    """Buffers rows and writes them as atomic part files, stamped with ``run_id``.

    A part is written when ``rows_per_part`` rows are buffered or
    ``seconds_per_part`` have passed since the last one, so a long job's
    finished images are on disk long before it ends. With ``leased``, the
    run's lease on ``out`` is confirmed before each part
    (:func:`~xai_batch.manifest.lock.confirm_lease`): a run whose lease was
    taken over writes nothing more.
    """

    def __init__(
        self, out: str, run_id: str, rows_per_part: int = 256, seconds_per_part: float = 30.0, leased: bool = False
    ) -> None:
        self.out = out
        self.leased = leased
        self.folder = locate(out).child(MANIFEST_DIR)
        self.folder.make_dirs()
        self.rows_per_part = rows_per_part
        self.seconds_per_part = seconds_per_part
        self.run_id = run_id
        self._buffer: list[Mapping] = []
        self._parts = 0
        self._last_flush = time.monotonic()
        self.rows_written = 0
        self.seconds_writing = 0.0

    def add(self, rows: Iterable[Mapping], seconds: float | None = None) -> int:
        """Buffer ``rows`` (stamped with the run id and, if given, ``seconds``); returns their number."""
        extra = {"run_id": self.run_id} if seconds is None else {"run_id": self.run_id, "seconds": seconds}
        added = [{**row, **extra} for row in rows]
        self._buffer.extend(added)
        due = time.monotonic() - self._last_flush >= self.seconds_per_part
        if len(self._buffer) >= self.rows_per_part or (due and self._buffer):
            self.flush()
        return len(added)

    def add_each(self, groups: Iterable[Iterable[Mapping]], seconds: Iterable[float | None]) -> int:
        """``add`` for each group of rows with its own seconds (one call for a batch of images)."""
        return sum(self.add(rows, spent) for rows, spent in zip(groups, seconds))

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        started = time.perf_counter()
        if self.leased:
            confirm_lease(self.out, self.run_id)
        write_part(self.folder, f"part-{self.run_id}-{self._parts:05d}.parquet",
                   pa.Table.from_pylist(self._buffer, schema=SCHEMA))
        self.seconds_writing += time.perf_counter() - started
        self._parts += 1
        self.rows_written += len(self._buffer)
        self._buffer = []

    def writing(self) -> float:
        """The seconds spent writing parts so far."""
        return self.seconds_writing

    def close(self) -> int:
        """Write what is buffered; returns the rows written in all."""
        self.flush()
        return self.rows_written


def write_part(folder: Location, name: str, table: pa.Table) -> None:
    """One part file, written under a hidden name and renamed, so no reader sees half of it."""
    with folder.child(name).atomic_writer() as stream:
        pq.write_table(table, stream)

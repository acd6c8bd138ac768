"""The Parquet manifest: its schema, its writer and its reader.

A manifest is a folder of part files (one Parquet dataset) with one row per
image, explained label and method, or one ``status='error'`` row per image
and method that could not explain it. Parts are written as results arrive, each to a hidden
temporary name and then renamed, so readers never see half a file.

Every row carries the ``run_id`` of the run that wrote it, and run ids sort
in time. When a resumed run redoes an image (its file changed, or it failed
before), the new rows supersede the old: the current rows of a path and
method are those of the latest run that wrote them, so a run that adds a
method leaves the other methods' rows current. ``read_manifest`` returns
only those.
"""

from __future__ import annotations

import datetime
import io
import time
import uuid
from collections.abc import Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from PIL import Image

from xai_batch.storage import Location, locate

__all__ = [
    "SCHEMA",
    "MANIFEST_DIR",
    "ManifestWriter",
    "write_part",
    "read_manifest",
    "new_run_id",
    "encode_segments",
    "decode_segments",
    "encode_mask",
    "decode_mask",
    "encode_heatmap",
    "decode_heatmap",
]

MANIFEST_DIR = "manifest"

SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("sha256", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("model_id", pa.string()),
        pa.field("pred_index", pa.int32()),
        pa.field("pred_name", pa.string()),
        pa.field("pred_prob", pa.float32()),
        pa.field("topk_index", pa.list_(pa.int32())),
        pa.field("topk_prob", pa.list_(pa.float32())),
        pa.field("explained_index", pa.int32()),
        pa.field("explained_name", pa.string()),
        pa.field("explained_prob", pa.float32()),
        pa.field("method", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("num_samples", pa.int32()),
        pa.field("num_segments", pa.int32()),
        pa.field("segments", pa.binary()),
        pa.field("weights", pa.list_(pa.float64())),
        pa.field("intercept", pa.float64()),
        pa.field("score", pa.float64()),
        pa.field("local_pred", pa.float64()),
        pa.field("mask", pa.binary()),
        pa.field("heatmap", pa.binary()),
        pa.field("deletion_auc", pa.float64()),
        pa.field("insertion_auc", pa.float64()),
        pa.field("deletion_auc_random", pa.float64()),
        pa.field("insertion_auc_random", pa.float64()),
        pa.field("stability", pa.float64()),
        pa.field("on_object", pa.float64()),
        pa.field("on_object_random", pa.float64()),
        pa.field("pointing_hit", pa.bool_()),
        pa.field("pointing_random", pa.float64()),
        pa.field("config_hash", pa.string()),
        pa.field("engine", pa.string()),
        pa.field("seconds", pa.float32()),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)


def encode_segments(segments: np.ndarray) -> bytes:
    """Segment map as a 16-bit grayscale PNG (pixel value = segment id)."""
    if segments.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"{int(segments.max()) + 1} segments do not fit a 16-bit PNG")
    return _png(Image.fromarray(segments.astype(np.uint16)))


def decode_segments(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image).astype(np.int64)


def encode_mask(mask: np.ndarray) -> bytes:
    """Explanation mask as an 8-bit grayscale PNG (0 none, 1 for, 2 against)."""
    return _png(Image.fromarray(mask.astype(np.uint8), mode="L"))


def decode_mask(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image, dtype=np.uint8)


def encode_heatmap(heatmap: np.ndarray) -> bytes:
    """A [0, 1] heatmap as an 8-bit grayscale PNG (value = round(255 * heat))."""
    return _png(Image.fromarray(np.round(np.clip(heatmap, 0, 1) * 255).astype(np.uint8), mode="L"))


def decode_heatmap(data: bytes) -> np.ndarray:
    """The heatmap back in [0, 1], to within 1/510."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image, dtype=np.float32) / 255


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def new_run_id() -> str:
    """A unique id that sorts by start time (UTC, to the microsecond)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:6]}"


class ManifestWriter:
    """Buffers rows and writes them as atomic part files, stamped with ``run_id``.

    A part is written when ``rows_per_part`` rows are buffered or
    ``seconds_per_part`` have passed since the last one, so a long job's
    finished images are on disk long before it ends.
    """

    def __init__(
        self, out: str, run_id: str, rows_per_part: int = 256, seconds_per_part: float = 30.0
    ) -> None:
        self.folder = locate(out).child(MANIFEST_DIR)
        self.folder.make_dirs()
        self.rows_per_part = rows_per_part
        self.seconds_per_part = seconds_per_part
        self.run_id = run_id
        self._buffer: list[Mapping] = []
        self._parts = 0
        self._last_flush = time.monotonic()
        self.rows_written = 0

    def add(self, rows: Iterable[Mapping], seconds: float | None = None) -> int:
        """Buffer ``rows`` (stamped with the run id and, if given, ``seconds``); returns their number."""
        extra = {"run_id": self.run_id} if seconds is None else {"run_id": self.run_id, "seconds": seconds}
        added = [{**row, **extra} for row in rows]
        self._buffer.extend(added)
        due = time.monotonic() - self._last_flush >= self.seconds_per_part
        if len(self._buffer) >= self.rows_per_part or (due and self._buffer):
            self.flush()
        return len(added)

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        write_part(self.folder, f"part-{self.run_id}-{self._parts:05d}.parquet",
                   pa.Table.from_pylist(self._buffer, schema=SCHEMA))
        self._parts += 1
        self.rows_written += len(self._buffer)
        self._buffer = []

    def close(self) -> int:
        """Write what is buffered; returns the rows written in all."""
        self.flush()
        return self.rows_written


def write_part(folder: Location, name: str, table: pa.Table) -> None:
    """One part file, written under a hidden name and renamed, so no reader sees half of it."""
    with folder.child(name).atomic_writer() as stream:
        pq.write_table(table, stream)


def read_manifest(out: str, current: bool = True) -> pa.Table:
    """The manifest under ``out`` (a path or URI), sorted by path, method and label.

    With ``current`` (the default) only each path and method's rows from the
    latest run that wrote them; otherwise every row ever written. Rows from
    before methods were recorded read as LIME's. Hidden files (temporary
    parts of a killed job) are ignored.
    """
    folder = locate(out).child(MANIFEST_DIR)
    if not folder.is_dir():
        return SCHEMA.empty_table()
    dataset = ds.dataset(folder.path, filesystem=folder.filesystem, format="parquet", schema=SCHEMA,
                         ignore_prefixes=[".", "_"])
    table = dataset.to_table()
    column = table.schema.get_field_index("method")
    table = table.set_column(column, SCHEMA.field("method"), pc.fill_null(table["method"], "lime"))
    if current and table.num_rows:
        latest = table.group_by(["path", "method"]).aggregate([("run_id", "max")])
        keys = table.select(["path", "method", "run_id"]).append_column(
            "row", pa.array(range(table.num_rows), pa.int64()))
        joined = keys.join(latest, ["path", "method"])  # joins cannot carry list columns: join the keys, take the rows
        table = table.take(joined.filter(pc.equal(joined["run_id"], joined["run_id_max"]))["row"])
    return table.sort_by([("path", "ascending"), ("method", "ascending"), ("explained_index", "ascending"),
                          ("run_id", "ascending")])

"""Reading the manifest: the current rows, or every row ever written.

Every row carries the ``run_id`` of the run that wrote it, and run ids sort
in time. When a resumed run redoes an image (its file changed, or it failed
before), the new rows supersede the old: the current rows of a path and
method are those of the latest run that wrote them, so a run that adds a
method leaves the other methods' rows current. ``read_manifest`` returns
only those.

A part file that cannot be read (cut short by a crash or a full disk) is
named in a :class:`ManifestError` rather than surfacing as pyarrow's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from xai_batch.errors import XaiBatchError, one_line
from xai_batch.manifest.schema import MANIFEST_DIR, SCHEMA
from xai_batch.methods import LIME
from xai_batch.storage import Location, locate

__all__ = ["read_manifest", "ManifestError"]

_KEYS = ("path", "method", "explained_index", "run_id")  # what picking and sorting the current rows need


class ManifestError(XaiBatchError):
    """A manifest that cannot be read: the damaged part is named, and what to do about it."""


def read_manifest(out: str, current: bool = True, columns: Sequence[str] | None = None) -> pa.Table:
    """The manifest under ``out`` (a path or URI), sorted by path, method and label.

    With ``current`` (the default) only each path and method's rows from the
    latest run that wrote them; otherwise every row ever written. Rows from
    before methods were recorded read as LIME's. Hidden files (temporary
    parts of a killed job) are ignored. ``columns`` reads only those (and
    the few the current rows are picked by), so a caller that needs a
    manifest's bookkeeping does not load its segment maps and masks.
    """
    folder = locate(out).child(MANIFEST_DIR)
    wanted = list(SCHEMA.names) if columns is None else list(columns)
    if not folder.is_dir():
        return SCHEMA.empty_table().select(wanted)
    dataset = ds.dataset(folder.path, filesystem=folder.filesystem, format="parquet", schema=SCHEMA,
                         ignore_prefixes=[".", "_"])
    read = [name for name in SCHEMA.names if name in wanted or name in _KEYS]
    try:
        table = dataset.to_table(columns=read)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ManifestError(_damaged(folder, dataset.files, exc)) from None
    column = table.schema.get_field_index("method")
    table = table.set_column(column, SCHEMA.field("method"), pc.fill_null(table["method"], LIME))
    if current and table.num_rows:
        latest = table.group_by(["path", "method"]).aggregate([("run_id", "max")])
        keys = table.select(["path", "method", "run_id"]).append_column(
            "row", pa.array(range(table.num_rows), pa.int64()))
        joined = keys.join(latest, ["path", "method"])  # joins cannot carry list columns: join the keys, take the rows
        table = table.take(joined.filter(pc.equal(joined["run_id"], joined["run_id_max"]))["row"])
    table = table.sort_by([(key, "ascending") for key in _KEYS])
    return table.select(wanted)


def _damaged(folder: Location, files: list[str], error: BaseException) -> str:
    """Which part files cannot be read, and what to do: one line."""
    bad = []
    for path in files:
        try:
            with folder.filesystem.open_input_file(path) as handle:
                pq.read_metadata(handle)
        except (OSError, pa.ArrowInvalid):
            bad.append(path.rsplit("/", 1)[-1])
    if not bad:
        return f"cannot read the manifest in {folder.target}: {one_line(error, keep='first')}"
    return (f"damaged manifest part{'s' if len(bad) > 1 else ''} {', '.join(bad)} in {folder.target} (cut short by "
            "a crash or a full disk?): move it out of the folder and run again to redo its images")

"""Reading the manifest: the current rows, or every row ever written.

Every row carries the ``run_id`` of the run that wrote it, and run ids sort
in time. When a resumed run redoes an image (its file changed, or it failed
before), the new rows supersede the old: the current rows of a path and
method are those of the latest run that wrote them, so a run that adds a
method leaves the other methods' rows current. ``read_manifest`` returns
only those.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from xai_batch.manifest.schema import MANIFEST_DIR, SCHEMA
from xai_batch.methods import LIME
from xai_batch.storage import locate

__all__ = ["read_manifest"]


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
    table = table.set_column(column, SCHEMA.field("method"), pc.fill_null(table["method"], LIME))
    if current and table.num_rows:
        latest = table.group_by(["path", "method"]).aggregate([("run_id", "max")])
        keys = table.select(["path", "method", "run_id"]).append_column(
            "row", pa.array(range(table.num_rows), pa.int64()))
        joined = keys.join(latest, ["path", "method"])  # joins cannot carry list columns: join the keys, take the rows
        table = table.take(joined.filter(pc.equal(joined["run_id"], joined["run_id_max"]))["row"])
    return table.sort_by([("path", "ascending"), ("method", "ascending"), ("explained_index", "ascending"),
                          ("run_id", "ascending")])

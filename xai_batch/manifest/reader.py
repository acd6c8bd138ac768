"""Reading the manifest: its current rows, in groups of whole images whose size does not grow with it.

Every row carries the ``run_id`` of the run that wrote it, and run ids sort
in time. When a resumed run redoes an image (its file changed, or it failed
before), the new rows supersede the old: the current rows of a path and
method are those of the latest run that wrote them, so a run that adds a
method leaves the other methods' rows current.

A manifest of a million images is ~6 GB of Arrow, so readers never hold it
whole. :func:`current_groups` goes through it as groups of about
``GROUP_ROWS`` rows, each holding every row of its paths (sorted by path,
method and label), so what is decided per image — the current rows, one
image's methods and labels, the same image in another manifest — is decided
within a group. A small manifest is one group, read directly; a larger one
is first spread over temporary Parquet files by a hash of the path (under
``TMPDIR``, removed when done), one pass that costs a write and a read of the
columns asked for. pyarrow alone does this, reading through the same
filesystems as every other part of the tool (DuckDB would join out of core
too, but reads object stores only through its own extension, which cannot be
downloaded where a run has no internet).

Rows that are the same row twice (path, method, label and run) are read
once: a compaction stopped between writing its parts and deleting the old
ones leaves such copies, and the manifest reads as before it.

A part file that cannot be read (cut short by a crash or a full disk), or
that is not one xai-batch wrote (a column of another type, a run id no run
has, :func:`part_problem`), is named in a :class:`ManifestError` rather than
read (pyarrow would cast an ``int64`` path to text and count it done, or fail
in its own words), and ``verify --repair`` sets it aside. Every part's schema
is checked where it is read, and every batch's run ids: a run id that sorts
after every real one would keep its rows current for ever.
"""

from __future__ import annotations

import datetime
import math
import os
import tempfile
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from xai_batch.errors import ConfigError, XaiBatchError, one_line
from xai_batch.manifest.schema import ADDED, MANIFEST_DIR, SCHEMA
from xai_batch.methods import LIME
from xai_batch.storage import locate

__all__ = ["read_manifest", "current_groups", "manifest_dataset", "ManifestError", "GROUP_ROWS", "part_problem",
           "schema_problem", "run_id_problem", "ok_rows", "manifest_methods", "chosen_methods"]

GROUP_ROWS = 8192  # rows (all runs) a group holds at most on average: ~50 MB of Arrow with every column
SCAN_ROWS = 8192  # rows read at a time while spreading a manifest over its groups (~50 MB; ~64 rows a group)
_KEYS = ("path", "method", "explained_index", "run_id")  # what picking and sorting the current rows need
RUN_ID = r"^[0-9]{8}T[0-9]{6}\.[0-9]{6}Z-[0-9a-f]{6}$"  # what :func:`~xai_batch.manifest.writer.new_run_id` makes
RUN_ID_AHEAD = datetime.timedelta(days=1)  # the most a run id may be ahead of this clock (another machine's)


class ManifestError(XaiBatchError):
    """A manifest that cannot be read: the damaged part is named, and what to do about it."""


def manifest_dataset(out: str) -> ds.Dataset | None:
    """The Parquet dataset of ``out``'s parts (hidden files, temporary parts, are not in it); None if none."""
    folder = locate(out).child(MANIFEST_DIR)
    if not folder.is_dir():
        return None
    return ds.dataset(folder.path, filesystem=folder.filesystem, format="parquet", schema=SCHEMA,
                      ignore_prefixes=[".", "_"])


def read_manifest(out: str, current: bool = True, columns: Sequence[str] | None = None) -> pa.Table:
    """The manifest under ``out`` (a path or URI) as one table, sorted by path, method and label.

    With ``current`` (the default) only each path and method's rows from the
    latest run that wrote them; otherwise every row ever written. Rows from
    before methods were recorded read as LIME's. ``columns`` reads only
    those. The table holds the whole manifest: for small runs, tests and
    notebooks; the commands go through :func:`current_groups`.
    """
    wanted = list(SCHEMA.names) if columns is None else list(columns)
    dataset = manifest_dataset(out)
    if dataset is None:
        return SCHEMA.empty_table().select(wanted)
    table = _read(dataset, _with_keys(wanted))
    if current:
        table = current_rows(table)
    return table.sort_by([(key, "ascending") for key in _KEYS]).select(wanted)


def current_groups(outs: Sequence[str], columns: Sequence[str] | None = None,
                   group_rows: int = GROUP_ROWS, once: bool = True,
                   columns_each: Sequence[Sequence[str]] | None = None) -> Iterator[list[pa.Table]]:
    """The current rows of each manifest in ``outs``, a group of paths at a time.

    Yields one table per manifest, sorted by path, method and label; the
    tables of one step hold the same paths' rows (every row of each), so two
    manifests are joined by path a group at a time. ``columns`` are read
    (the keys always), or ``columns_each`` names each manifest's. Each manifest is read once; what a step holds is
    bounded by ``group_rows``, whatever the manifests' size. Without
    ``once``, a row that is in the manifest twice is read twice (``verify``
    reports it).
    """
    if columns_each is None:
        columns_each = [list(SCHEMA.names) if columns is None else list(columns)] * len(outs)
    wanted = [list(names) for names in columns_each]
    read = [_with_keys(names) for names in wanted]
    datasets = [manifest_dataset(out) for out in outs]
    sizes = [_count_rows(dataset) for dataset in datasets]
    groups = max(1, math.ceil(max(sizes, default=0) / group_rows))

    def finish(table: pa.Table, number: int) -> pa.Table:
        return current_rows(table, once).sort_by([(key, "ascending") for key in _KEYS]).select(wanted[number])

    def empty(number: int) -> pa.Table:
        return SCHEMA.empty_table().select(read[number])

    if groups == 1:
        yield [finish(_read(dataset, read[number]) if dataset is not None else empty(number), number)
               for number, dataset in enumerate(datasets)]
        return
    with tempfile.TemporaryDirectory(prefix="xai-batch-groups-") as spill:
        spread = [_Spread(dataset, read[number], groups, os.path.join(spill, str(number)))
                  for number, dataset in enumerate(datasets)]
        for group in range(groups):
            yield [finish(spread[number].read(group, empty(number)), number) for number in range(len(datasets))]


def current_rows(table: pa.Table, once: bool = True) -> pa.Table:
    """The rows of ``table`` from the latest run of each path and method; with ``once``, each row once."""
    if table.num_rows == 0:
        return table
    table = table.set_column(table.schema.get_field_index("method"), SCHEMA.field("method"),
                             pc.fill_null(table["method"], LIME))
    keys = table.select(["path", "method", "explained_index", "run_id"]).append_column(
        "row", pa.array(np.arange(table.num_rows), pa.int64()))
    latest = keys.group_by(["path", "method"]).aggregate([("run_id", "max")])
    joined = keys.join(latest, ["path", "method"])  # joins cannot carry list columns: join the keys, take the rows
    joined = joined.filter(pc.equal(joined["run_id"], joined["run_id_max"]))
    if not once:
        return table.take(pa.array(np.sort(joined["row"].to_numpy())))
    once = joined.group_by(["path", "method", "explained_index"], use_threads=False).aggregate([("row", "min")])
    return table.take(pa.array(np.sort(once["row_min"].to_numpy())))


def ok_rows(out: str, methods: tuple[str, ...] = (), columns: list[str] | None = None) -> Iterator[list[dict]]:
    """The manifest's current ``ok`` rows of ``methods`` (default all), a group of images at a time
    (:func:`~xai_batch.manifest.current_groups`); a usage error if there is no manifest or it lacks a
    method asked for."""
    chosen_methods([{"method": method} for method in manifest_methods(out)], methods)
    columns = None if columns is None else list(dict.fromkeys([*columns, "status"]))
    return ([row for row in table.filter(pc.equal(table.column("status"), "ok")).to_pylist()
             if not methods or row["method"] in methods]  # a group may lack a method the manifest has
            for (table,) in current_groups([out], columns))


def manifest_methods(out: str) -> list[str]:
    """The methods with current rows in ``out``, sorted; a usage error if there is no manifest."""
    present: set[str] = set()
    for (table,) in current_groups([out], ["method"]):
        present |= set(table["method"].to_pylist())
    if not present:
        raise ConfigError(f"no manifest under {out!r}: run xai-batch explain first", "out")
    return sorted(present)


def chosen_methods(rows: list[dict], methods: tuple[str, ...]) -> list[dict]:
    """The rows of ``methods`` (all rows when empty); a usage error names a method the manifest lacks."""
    if not methods:
        return rows
    missing = [method for method in methods if not any(row["method"] == method for row in rows)]
    if rows and missing:
        present = ", ".join(sorted({row["method"] for row in rows}))
        raise ConfigError(f"the manifest has no {missing[0]} explanations (it has {present})", "methods")
    return [row for row in rows if row["method"] in methods]


def _with_keys(columns: Sequence[str]) -> list[str]:
    """``columns`` and the keys, in the schema's order."""
    return [name for name in SCHEMA.names if name in columns or name in _KEYS]


def _read(dataset: ds.Dataset, columns: list[str]) -> pa.Table:
    """Every part's rows, each part checked (:func:`_checked_parts`)."""
    return pa.Table.from_batches(list(_batches(dataset, columns)), pa.schema([SCHEMA.field(c) for c in columns]))


def _count_rows(dataset: ds.Dataset | None) -> int:
    """Rows in every part, from the parts' footers."""
    if dataset is None:
        return 0
    try:
        return dataset.count_rows()
    except pa.ArrowException as exc:
        raise ManifestError(_damaged(dataset, exc)) from None


def schema_problem(schema: pa.Schema) -> str | None:
    """What makes a part's schema not the manifest's, or None: a column of another type, or one the
    manifest has not. A part from before a column was added (``ADDED``) lacks only it."""
    for field in schema:
        if field.name not in SCHEMA.names:
            return f"a column {field.name!r} the manifest has not"
        if not field.type.equals(SCHEMA.field(field.name).type):
            return f"column {field.name!r} is {field.type}, not {SCHEMA.field(field.name).type}"
    missing = [name for name in SCHEMA.names if name not in schema.names and name not in ADDED]
    return f"no column {missing[0]!r}" if missing else None


def run_id_problem(run_ids: pa.Array | pa.ChunkedArray) -> str | None:
    """What is wrong with a part's run ids, or None: one no run made, or one from the future (a run id that
    sorts after every real one keeps its rows current for ever)."""
    if run_ids.null_count:
        return "a row without a run id"
    valid = pc.match_substring_regex(run_ids, RUN_ID)
    if not pc.all(valid).as_py():
        bad = run_ids.filter(pc.invert(valid))[0].as_py()
        return f"run id {bad[:40]!r} is not one a run makes"
    latest = pc.max(run_ids).as_py()
    ahead = (datetime.datetime.now(datetime.timezone.utc) + RUN_ID_AHEAD).strftime("%Y%m%dT%H%M%S")
    if latest is not None and latest > ahead:
        return f"run id {latest!r} is in the future"
    return None


def part_problem(filesystem, path: str) -> str | None:
    """What makes the part file at ``path`` one the manifest cannot use, or None: unreadable, another schema,
    or run ids no run made. Reads its footer and its run ids."""
    try:
        with filesystem.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            problem = schema_problem(parquet.schema_arrow)
            if problem is None and "run_id" in parquet.schema_arrow.names:
                problem = run_id_problem(parquet.read(columns=["run_id"])["run_id"])
            return problem
    except pa.ArrowException as exc:
        return f"{UNREADABLE} ({one_line(exc, keep='first')})"


UNREADABLE = "not a readable Parquet file"


class _Spread:
    """A manifest's rows spread by group over temporary files: one file per batch read, the groups' rows in
    it one after another, so a single writer is open at a time whatever the number of groups (a writer per
    group held a gigabyte of buffers on a million rows).

    The files are Arrow IPC, not Parquet: reading a group reads a little of
    every file, and an IPC file's footer is a list of offsets, where a
    Parquet footer describes every row group's every column; parsing those
    once per group and file made a million rows' spread cost grow with the
    square of the rows.
    """

    def __init__(self, dataset: ds.Dataset | None, columns: list[str], groups: int, prefix: str) -> None:
        self.files: list[tuple[str, dict[int, range]]] = []  # (file, group -> its record batches in the file)
        self.columns = columns
        if dataset is None:
            return
        schema = pa.schema([SCHEMA.field(name) for name in columns])
        try:
            for number, batch in enumerate(_batches(dataset, columns)):
                group_of = np.fromiter((zlib.crc32(path.encode()) % groups for path in batch["path"].to_pylist()),
                                       np.int64, batch.num_rows)
                order = np.argsort(group_of, kind="stable")
                sorted_batch = pa.Table.from_batches([batch]).take(pa.array(order))
                bounds = np.searchsorted(group_of[order], np.arange(groups + 1))
                name, present, written = f"{prefix}-{number}.arrow", {}, 0
                with pa.ipc.new_file(name, schema) as writer:
                    for group in np.flatnonzero(np.diff(bounds)).tolist():
                        pieces = sorted_batch.slice(bounds[group], bounds[group + 1] - bounds[group]).to_batches()
                        for piece in pieces:
                            writer.write_batch(piece)
                        present[group] = range(written, written + len(pieces))
                        written += len(pieces)
                self.files.append((name, present))
        except pa.ArrowException as exc:
            raise ManifestError(_damaged(dataset, exc)) from None

    def read(self, group: int, empty: pa.Table) -> pa.Table:
        """Every row of ``group``."""
        pieces = []
        for name, present in self.files:
            if group in present:
                with pa.OSFile(name) as handle:
                    reader = pa.ipc.open_file(handle)
                    pieces += [reader.get_batch(index) for index in present[group]]
        return pa.Table.from_batches(pieces, empty.schema) if pieces else empty


def _batches(dataset: ds.Dataset, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The dataset's rows, ``SCAN_ROWS`` at a time, one part after another, each part's schema and each
    batch's run ids checked first. (The dataset's own scanner reads parts ahead, and on a manifest of a
    million rows holds a gigabyte doing so.)"""
    options = ds.ParquetFragmentScanOptions(pre_buffer=False)
    for fragment in dataset.get_fragments():
        name = fragment.path.rsplit("/", 1)[-1]
        try:
            problem = schema_problem(fragment.physical_schema)
            if problem is not None:
                raise ManifestError(_foreign(dataset, name, problem))
            for batch in fragment.to_batches(schema=dataset.schema, columns=columns, batch_size=SCAN_ROWS,
                                             batch_readahead=0, fragment_readahead=0, use_threads=False,
                                             fragment_scan_options=options):
                problem = run_id_problem(batch["run_id"])
                if problem is not None:
                    raise ManifestError(_foreign(dataset, name, problem))
                yield batch
        except pa.ArrowException as exc:
            raise ManifestError(_damaged(dataset, exc)) from None


def _foreign(dataset: ds.Dataset, name: str, problem: str) -> str:
    folder = dataset.files[0].rsplit("/", 1)[0]
    return (f"manifest part {name} in {folder} is not one xai-batch wrote ({problem}): xai-batch verify --repair "
            "sets it aside")


def _damaged(dataset: ds.Dataset, error: BaseException) -> str:
    """Which part files cannot be read, and what to do: one line."""
    bad = []
    for path in dataset.files:
        try:
            with dataset.filesystem.open_input_file(path) as handle:
                pq.read_metadata(handle)
        except pa.ArrowException:
            bad.append(path.rsplit("/", 1)[-1])
    folder = dataset.files[0].rsplit("/", 1)[0] if dataset.files else "the manifest"
    if not bad:
        return f"cannot read the manifest in {folder}: {one_line(error, keep='first')}"
    return (f"damaged manifest part{'s' if len(bad) > 1 else ''} {', '.join(bad)} in {folder} (cut short by "
            "a crash or a full disk?): xai-batch verify --repair sets it aside, and the next run redoes its images")

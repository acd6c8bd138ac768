"""Compaction: the current rows rewritten as few sorted parts, superseded rows dropped.

A dataset explained every night gains a run's parts every night, and the
rows each run supersedes stay in them: reads grow with the history, not the
dataset. :func:`compact` rewrites the current rows (each keeping its run id)
into parts of at most ``part_rows`` rows, each sorted by path, method and
label, and then replaces the old parts. It is safe to stop at any moment:

1. the new parts are written into a hidden folder in the manifest, which
   readers ignore (a compaction stopped here leaves the manifest as it was);
2. they are moved into the manifest one by one (stopped here, a row is in an
   old part and a new one: readers read the same row once);
3. the old parts, and nothing else, are deleted, then the hidden folder.

A compaction rerun after a stop removes what an earlier one left in its
hidden folders and starts again from the rows as they read. It holds the
output's lease, so no run writes into the output while it works.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from xai_batch.manifest.lock import OutputLock
from xai_batch.manifest.reader import current_groups, manifest_dataset
from xai_batch.manifest.schema import MANIFEST_DIR
from xai_batch.manifest.writer import is_own_part, new_run_id, write_part
from xai_batch.storage import locate

__all__ = ["compact", "Compacted", "PART_ROWS", "COMPACTING"]

PART_ROWS = 4096  # rows per compacted part: ~25 MB with every column
COMPACTING = ".compacting-"  # the hidden folders new parts are written into


@dataclass(frozen=True)
class Compacted:
    parts_before: int
    parts_after: int
    rows_before: int  # every row, superseded ones included
    rows_after: int  # the current rows


def compact(out: str, part_rows: int = PART_ROWS, progress=None) -> Compacted:
    """Rewrite ``out``'s manifest as sorted parts of its current rows; ``progress(rows)`` after each part."""
    if part_rows < 1:
        raise ValueError("part_rows must be at least 1")
    run_id = new_run_id()
    folder = locate(out).child(MANIFEST_DIR)
    with OutputLock(out, run_id):
        for leftover in folder.filesystem.get_file_info(pafs.FileSelector(folder.path, allow_not_found=True)):
            if leftover.base_name.startswith(COMPACTING):
                folder.filesystem.delete_dir(leftover.path)
        dataset = manifest_dataset(out)
        if dataset is None:
            return Compacted(0, 0, 0, 0)
        old = [path for path in dataset.files if is_own_part(path.rsplit("/", 1)[-1])]  # only ours are deleted
        rows_before = dataset.count_rows()
        staging = folder.child(f"{COMPACTING}{run_id}")
        staging.make_dirs()
        names: list[str] = []
        for (table,) in current_groups([out]):
            for start in range(0, table.num_rows, part_rows):
                name = f"part-{run_id}-c{len(names):05d}.parquet"
                write_part(staging, name, table.slice(start, part_rows))
                names.append(name)
                if progress is not None:
                    progress(min(part_rows, table.num_rows - start))
        rows_after = sum(pq.read_metadata(staging.child(name).path, filesystem=folder.filesystem).num_rows
                         for name in names)
        for name in names:
            staging.child(name).move_to(folder.child(name))
        for path in old:
            folder.filesystem.delete_file(path)
        staging.delete_dir()
    return Compacted(parts_before=len(old), parts_after=len(names), rows_before=rows_before, rows_after=rows_after)


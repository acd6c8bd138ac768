"""``xai-batch render``: PNG overlays from manifest rows, as Ray tasks, without the model.

The current ``ok`` rows are read a group of images at a time and drawn by
:func:`~xai_batch.distributed.rendering.render_rows`; the driver writes
``overlays.csv``, the index from (path, method, label) to file.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.compute as pc

from xai_batch.analysis.overlays import RenderOptions, overlay_name
from xai_batch.distributed.rendering import render_rows
from xai_batch.manifest import current_groups
from xai_batch.manifest.reader import ok_rows
from xai_batch.storage import join, write_csv

__all__ = ["RenderResult", "run_render", "INDEX"]

INDEX = "overlays.csv"


@dataclass(frozen=True)
class RenderResult:
    to: str
    rendered: int
    errors: int
    index: str


def run_render(
    out: str, to: str | None, options: RenderOptions, source: str | None = None,
    address: str | None = None, progress: bool = True, methods: tuple[str, ...] = (), insecure: bool = False,
) -> RenderResult:
    """Render every current ``ok`` row of ``methods`` (default all) under ``out`` into ``to``
    (default ``OUT/overlays/STYLE``), every method in the same style."""
    to = to or join(out, "overlays", options.style)
    groups = ok_rows(out, methods)
    jobs = ((row, overlay_name(row["path"], row["explained_index"], options.style, row["method"]))
            for rows in groups for row in rows)
    entries = render_rows(jobs, out, source, to, options, address, progress, total=_count_ok(out, methods),
                          insecure=insecure)
    index = join(to, INDEX)
    write_csv(index, entries, ["path", "method", "label", "file", "error"])
    errors = sum(1 for entry in entries if entry["error"])
    return RenderResult(to=to, rendered=len(entries) - errors, errors=errors, index=index)


def _count_ok(out: str, methods: tuple[str, ...]) -> int:
    """The current ok rows of ``methods`` (all when empty): what ``render`` draws."""
    return sum(sum(1 for method in table.filter(pc.equal(table["status"], "ok"))["method"].to_pylist()
                   if not methods or method in methods)
               for (table,) in current_groups([out], ["status", "method"]))

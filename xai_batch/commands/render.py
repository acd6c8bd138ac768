"""``xai-batch render``: PNG overlays from manifest rows, as Ray tasks, without the model.

Each task takes a batch of rows, reads their images from SOURCE (checking
that the file is still the one explained), draws the overlays and writes the
PNGs itself; the driver only reads the manifest, hands out batches and writes
``overlays.csv``, the index from (path, method, label) to file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import ray
from PIL import Image
from tqdm import tqdm

from xai_batch.errors import ConfigError, ImageError, one_line
from xai_batch.images import DEFAULT_MAX_PIXELS, file_bytes, load_image
from xai_batch.manifest.record import load_job_record, recorded_preprocessing
from xai_batch.preprocessing import Preprocessing
from xai_batch.manifest import current_groups, decode_segments
from xai_batch.methods import DEFAULT_METHOD
from xai_batch.analysis.overlays import boundaries, heatmap, hide_rest, side_by_side
from xai_batch.distributed.cluster import connected
from xai_batch.sources import image_root
from xai_batch.storage import Location, join, locate

__all__ = [
    "RenderOptions", "RenderResult", "overlay_name", "render_row", "render_rows", "run_render", "current_rows", "manifest_methods",
    "job_source", "write_csv", "INDEX",
]

INDEX = "overlays.csv"
ROWS_PER_TASK = 32


@dataclass(frozen=True)
class RenderOptions:
    """How to draw: the style, how many superpixels, and whether to caption side-by-side pictures."""

    style: str = "boundaries"
    num_features: int = 5
    positive_only: bool = False
    blind: bool = False


@dataclass(frozen=True)
class RenderResult:
    to: str
    rendered: int
    errors: int
    index: str


def overlay_name(path: str, label: int, style: str, method: str = DEFAULT_METHOD) -> str:
    """A deterministic, safe file name for one row's overlay: no folders, no leading dot.

    Readable (the image's path with '/' as '__', the label, the method) and
    unique (a hash of path, label and method), so two paths that flatten
    alike still get two files.
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.replace("/", "__")).lstrip("._-")[:100] or "image"
    digest = hashlib.sha256(f"{path}\0{label}\0{method}".encode()).hexdigest()[:8]
    return f"{stem}.label{label}.{method}.{style}.{digest}.png"


def render_row(row: dict, image: np.ndarray, options: RenderOptions) -> np.ndarray:
    """One row's overlay as an RGB array."""
    segments = decode_segments(row["segments"])
    weights = np.asarray(row["weights"], np.float64)
    style, k = options.style, options.num_features
    if style == "boundaries":
        return boundaries(image, segments, weights, k, options.positive_only)
    if style == "heatmap":
        return heatmap(image, segments, weights)
    if style == "hide-rest":
        return hide_rest(image, segments, weights, k, positive_only=options.positive_only)
    if style == "side-by-side":
        caption = None if options.blind else f"{row['explained_name']}  {row['explained_prob']:.2f}"
        return side_by_side(image, boundaries(image, segments, weights, k, options.positive_only), caption)
    raise ConfigError(f"unknown style {style!r}", "style")


def _render_batch(jobs: list[tuple[dict, str]], source: Location, to: Location, options: RenderOptions,
                  preprocessing: Preprocessing) -> list[dict]:
    """Draw and write a batch of (row, file name), each picture in the model's frame (``preprocessing``'s);
    one index entry each, with an error instead of a file if need be."""
    entries = []
    for row, name in jobs:
        entry = {"path": row["path"], "method": row["method"], "label": row["explained_index"], "file": name,
                 "error": ""}
        try:
            data = source.child(row["path"]).read_bytes(file_bytes(DEFAULT_MAX_PIXELS))
            if hashlib.sha256(data).hexdigest() != row["sha256"]:
                raise ImageError("the file changed since it was explained; run explain again")
            picture = render_row(row, load_image(data, preprocessing=preprocessing).pixels, options)
            with to.child(name).atomic_writer() as stream:
                stream.write(_encode(picture, name))
        except (OSError, ImageError) as exc:
            entry.update(file="", error=one_line(exc))
        entries.append(entry)
    return entries


def current_rows(out: str, methods: tuple[str, ...] = (), columns: list[str] | None = None) -> Iterator[list[dict]]:
    """The manifest's current ``ok`` rows of ``methods`` (default all), a group of images at a time
    (:func:`~xai_batch.manifest.current_groups`); a usage error if there is no manifest or it lacks a
    method asked for."""
    chosen_methods([{"method": method} for method in manifest_methods(out)], methods)
    columns = None if columns is None else list(dict.fromkeys([*columns, "status"]))
    return (chosen_methods(table.filter(pc.equal(table.column("status"), "ok")).to_pylist(), methods)
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


def job_source(out: str, source: str | None) -> str:
    """The images' folder: ``source`` if given, else the SOURCE recorded in ``out``'s job.json (for a
    listing, the folder it is in)."""
    source = source or load_job_record(out).get("config", {}).get("source")
    if not source:
        raise ConfigError(f"{out!r} has no job.json naming its SOURCE: pass --source", "source")
    return image_root(source)


def render_rows(
    jobs: Iterable[tuple[dict, str]], out: str, source: str | None, to: str, options: RenderOptions,
    address: str | None = None, progress: bool = True, total: int | None = None, insecure: bool = False,
) -> list[dict]:
    """Draw each (row, file name) of the run in ``out`` into ``to`` as Ray tasks; index entries sorted by
    path, method and label.

    The pictures are read from ``source`` (default: the run's SOURCE, :func:`job_source`) and put in
    the frame of the model's preprocessing that job.json records. ``jobs`` are taken as tasks free up,
    so only the rows in flight are held; ``total`` is their number, for the progress bar. ``address``
    and ``insecure`` say which Ray to join, and how (:func:`~xai_batch.distributed.cluster.connected`).
    """
    preprocessing = recorded_preprocessing(load_job_record(out))
    source = job_source(out, source)
    target = locate(to)
    target.make_dirs()
    entries: list[dict] = []
    with connected(address, insecure):
        task = ray.remote(_render_batch)
        source_ref, to_ref = ray.put(locate(source)), ray.put(target)
        bar = tqdm(total=len(jobs) if total is None else total, unit="img", desc="render", disable=not progress,
                   mininterval=0.1 if sys.stderr.isatty() else 15)
        pending: list[ray.ObjectRef] = []
        limit = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))  # bounded in flight
        jobs = iter(jobs)
        while batch := list(itertools.islice(jobs, ROWS_PER_TASK)):
            if len(pending) >= limit:
                entries += _collect(pending, bar)
            pending.append(task.remote(batch, source_ref, to_ref, options, preprocessing))
        while pending:
            entries += _collect(pending, bar)
        bar.close()
    return sorted(entries, key=lambda entry: (entry["path"], entry["method"], entry["label"]))


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as the start of a formula


def spreadsheet_safe(value):
    """``value``, with a text that a spreadsheet would run as a formula prefixed by ``'`` (OWASP's advice).

    Paths and labels come from folder and file names anyone can choose, and
    study teams open these files in spreadsheets. A reader strips one leading
    ``'`` from a text that starts with ``'`` and then one of ``FORMULA_STARTS``
    to get the value back. Numbers are written as they are.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(location: str, rows: list[dict], columns: list[str]) -> None:
    """A CSV file written atomically, at a path or URI, its texts spreadsheet-safe (:func:`spreadsheet_safe`)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: spreadsheet_safe(value) for key, value in row.items()} for row in rows)
    with locate(location).atomic_writer() as stream:
        stream.write(text.getvalue().encode())


def run_render(
    out: str, to: str | None, options: RenderOptions, source: str | None = None,
    address: str | None = None, progress: bool = True, methods: tuple[str, ...] = (), insecure: bool = False,
) -> RenderResult:
    """Render every current ``ok`` row of ``methods`` (default all) under ``out`` into ``to``
    (default ``OUT/overlays/STYLE``), every method in the same style."""
    to = to or join(out, "overlays", options.style)
    groups = current_rows(out, methods)
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


def _collect(pending: list[ray.ObjectRef], bar: tqdm) -> list[dict]:
    """Wait for one batch and take its entries off ``pending``."""
    [done], _ = ray.wait(pending, num_returns=1)
    pending.remove(done)
    entries = ray.get(done)
    bar.update(len(entries))
    return entries


def _encode(picture: np.ndarray, name: str) -> bytes:
    """PNG, or JPEG for a ``.jpg`` name (the report's thumbnails: a tenth of the bytes)."""
    buffer = io.BytesIO()
    if name.endswith(".jpg"):
        Image.fromarray(picture).save(buffer, format="JPEG", quality=85)
    else:
        Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()

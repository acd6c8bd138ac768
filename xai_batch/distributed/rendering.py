"""Overlays drawn as Ray tasks, without the model: the work behind ``render``, ``stimuli`` and ``report``.

Each task takes a batch of (row, file name), reads the row's image from
SOURCE (checking that the file is still the one explained), draws the
overlay (:func:`~xai_batch.analysis.overlays.render_row`) and writes the
picture itself; the driver only hands out batches, a bounded number in
flight, and gathers one index entry per picture.
"""

from __future__ import annotations

import io
import itertools
import sys
from collections.abc import Iterable

import numpy as np
import ray
from PIL import Image
from tqdm import tqdm

from xai_batch.analysis.overlays import RenderOptions, render_row
from xai_batch.distributed.cluster import connected
from xai_batch.errors import ImageError, one_line
from xai_batch.images import explained_pixels
from xai_batch.manifest.record import job_source, load_job_record, recorded_preprocessing
from xai_batch.preprocessing import Preprocessing
from xai_batch.storage import Location, locate

__all__ = ["render_rows", "ROWS_PER_TASK"]

ROWS_PER_TASK = 32


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


def _render_batch(jobs: list[tuple[dict, str]], source: Location, to: Location, options: RenderOptions,
                  preprocessing: Preprocessing) -> list[dict]:
    """Draw and write a batch of (row, file name), each picture in the model's frame (``preprocessing``'s);
    one index entry each, with an error instead of a file if need be."""
    entries = []
    for row, name in jobs:
        entry = {"path": row["path"], "method": row["method"], "label": row["explained_index"], "file": name,
                 "error": ""}
        try:
            picture = render_row(row, explained_pixels(source, row, preprocessing), options)
            with to.child(name).atomic_writer() as stream:
                stream.write(_encode(picture, name))
        except (OSError, ImageError) as exc:
            entry.update(file="", error=one_line(exc))
        entries.append(entry)
    return entries


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

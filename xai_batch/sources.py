"""What SOURCE names: a folder of images, or a file listing them.

A folder is walked (:meth:`~xai_batch.storage.Location.list_files`). A
bucket of a hundred million objects should not be: listing it takes hours,
and an S3 inventory or a data catalogue already says what is in it. So
SOURCE may also be a file that lists the images:

- ``*.parquet``: a ``path`` (or ``key``, as an S3 inventory names it) column;
- ``*.csv``: a header row, then the same column;
- anything else: one path per line (blank lines and ``#`` comments skipped).

Listed paths are relative to the folder the listing is in, ``/``-separated,
and are the manifest's ``path`` values, as the folder's own files would be:
a listing of a folder's images explains into the same manifest as the
folder. As in a folder, only image files count and hidden ones are passed
over; a path listed twice counts once. A listed path that climbs out of the
folder (``..``), is absolute, or is longer than ``MAX_PATH`` is a usage error
naming its line.
"""

from __future__ import annotations

import csv
import io
import os

import pyarrow.parquet as pq

from xai_batch.errors import ConfigError
from xai_batch.images import IMAGE_EXTENSIONS
from xai_batch.storage import join, locate

__all__ = ["discover_images", "image_root", "is_listing", "MAX_PATH"]

MAX_PATH = 4096  # characters in one listed path
COLUMNS = ("path", "key")  # a listing's column of paths, by the first of these names it has


def is_listing(source: str) -> bool:
    """Whether ``source`` is a file listing images (else a folder of them)."""
    return locate(source).is_file()


def image_root(source: str) -> str:
    """The folder the images' paths are relative to: ``source``, or the folder a listing is in."""
    if not is_listing(source):
        return source
    return source.rpartition("/")[0] or "."


def discover_images(source: str) -> list[str]:
    """Image files in ``source`` (a folder, or a listing: a path or URI), as sorted ``/``-separated paths
    relative to :func:`image_root`.

    Hidden files and folders (names starting with ``.``) are skipped. Under a
    local folder, folder symlinks are not followed and file symlinks are, when
    their target lies inside it.
    """
    files = _listed(source) if is_listing(source) else locate(source).list_files()
    return sorted({rel for rel in files if _is_image(rel)})


def _is_image(rel: str) -> bool:
    return os.path.splitext(rel)[1].lower() in IMAGE_EXTENSIONS and not any(
        part.startswith(".") for part in rel.split("/"))


def _listed(source: str) -> list[str]:
    """The paths a listing file names, checked."""
    data = locate(source).read_bytes()
    name = source.rsplit("/", 1)[-1].lower()
    if name.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        column = next((c for c in COLUMNS if c in table.column_names), None)
        if column is None:
            raise ConfigError(f"listing {source!r} has no {' or '.join(COLUMNS)} column", "source")
        entries = (str(value) for value in table[column].to_pylist() if value is not None)
    elif name.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(_text(data, source)))
        column = next((c for c in COLUMNS if c in (reader.fieldnames or ())), None)
        if column is None:
            raise ConfigError(f"listing {source!r} has no {' or '.join(COLUMNS)} column in its header", "source")
        entries = (row[column] or "" for row in reader)
    else:
        entries = (line.strip() for line in _text(data, source).splitlines()
                   if line.strip() and not line.lstrip().startswith("#"))
    return [_checked(entry, number, source) for number, entry in enumerate(entries, 1) if entry]


def _text(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"listing {source!r} is not UTF-8 text", "source") from None


def _checked(entry: str, number: int, source: str) -> str:
    """A listed path, ``/``-separated and inside the listing's folder; a usage error otherwise."""
    rel = entry.replace("\\", "/")
    parts = rel.split("/")
    if len(rel) > MAX_PATH or rel.startswith("/") or "://" in rel or ".." in parts or "\x00" in rel:
        shown = rel if len(rel) <= 80 else rel[:77] + "..."
        raise ConfigError(f"listing {source!r}, entry {number}: {shown!r} is not a path relative to the "
                          f"listing's folder {join(image_root(source), '')!r}", "source")
    return "/".join(part for part in parts if part not in ("", "."))

"""Where inputs and outputs live: local paths, or URIs through ``pyarrow.fs``.

On a cluster, SOURCE and ``--out`` must be storage every node reaches:
``s3://``, ``gs://``, ``hdfs://`` (any URI ``pyarrow.fs.FileSystem.from_uri``
understands), or a path on a shared file system. Everything that reads or
writes a job's files goes through here, so workers open image bytes and write
part files themselves and nothing funnels through the driver.

A plain path keeps the local rules (folder symlinks not followed, file
symlinks only into SOURCE). A URI, ``file://`` included, takes the same code
path an object store does: listing with ``FileSelector``, writing a hidden
temporary object then moving it into place (a rename locally; on object
stores the final object appears whole, when its copy completes).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from xai_batch.errors import StorageError, one_line

__all__ = ["Location", "OutsideLocation", "TooLarge", "TORCHVISION_PREFIX", "TORCHSCRIPT_PREFIX", "locate", "is_uri",
           "is_torchvision", "checkpoint_file", "join", "redact", "carries_credentials", "write_json", "read_json",
           "write_csv", "spreadsheet_safe"]

TORCHVISION_PREFIX = "torchvision:"  # a checkpoint named, not stored: torchvision:resnet50.IMAGENET1K_V2
TORCHSCRIPT_PREFIX = "torchscript:"  # a TorchScript file the user trusts to run its code: torchscript:model.pt

# A URI in running text: a scheme, ``://``, then everything up to white space or a quote.
_URI = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^\s'\"`<>]*)")
# Query parameters whose value is a secret: Azure's client_secret, a SAS sig, an access_key, a session token.
_SECRET_PARAMETER = re.compile(r"(?i)([?&;][^=&;#]*(?:secret|key|token|sig|password|passwd|credential)[^=&;#]*=)"
                               r"[^&;#]*")


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it replaced by ``***``: what every record, page and
    message the tools write or print shows of a URI.

    Two places hold a URI's secrets, and pyarrow reads both:

    - its user information, ``s3://KEY:SECRET@bucket``. Secret keys may hold
      a raw ``/`` (half of AWS's do) or ``@``, so everything from ``://`` to
      the *last* ``@`` goes, wherever the first ``/`` is. An ``@`` after the
      first ``/`` with no ``:`` before it (``s3://bucket/photos/me@home.png``)
      is a path's and stays;
    - its query: a parameter whose name speaks of a secret, key, token, sig,
      password or credential (``abfs://...?client_secret=...``) keeps its name,
      not its value.
    """
    return _URI.sub(_redact_uri, text)


def _redact_uri(match: re.Match) -> str:
    scheme, rest = match.group(1), match.group(2)
    body, mark, query = rest.partition("?")
    if "@" in body:
        userinfo = body[: body.rindex("@")]
        if "@" in body.split("/", 1)[0] or ":" in userinfo:
            body = "***" + body[len(userinfo):]
    return scheme + body + (mark + _SECRET_PARAMETER.sub(r"\1***", "&" + query)[1:] if mark else "")


def carries_credentials(uri: str) -> bool:
    """Whether ``uri`` holds a secret :func:`redact` would hide: what ``submit`` refuses to put in a job."""
    return redact(uri) != uri


def _redacted(document):
    """A JSON-like document with :func:`redact` applied to every text in it."""
    if isinstance(document, str):
        return redact(document)
    if isinstance(document, dict):
        return {key: _redacted(value) for key, value in document.items()}
    if isinstance(document, (list, tuple)):
        return [_redacted(value) for value in document]
    return document


class OutsideLocation(OSError):
    """A relative path that would leave the folder it is joined to (``..``, absolute, empty parts, or a
    symbolic link that leads out of it)."""


class TooLarge(OSError):
    """A file larger than a read allows."""


def is_uri(target: str) -> bool:
    return "://" in target


def is_torchvision(target: str) -> bool:
    """Whether a --checkpoint names torchvision's pretrained weights rather than a file."""
    return target.startswith(TORCHVISION_PREFIX)


def checkpoint_file(target: str) -> str | None:
    """The file or URI a --checkpoint reads: ``torchscript:PATH``'s PATH, None for torchvision's weights by name."""
    if is_torchvision(target):
        return None
    return target.removeprefix(TORCHSCRIPT_PREFIX)


def join(base: str, *parts: str) -> str:
    """``base`` (a path or URI) extended by ``/``-separated parts."""
    if is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)


@dataclass(frozen=True)
class Location:
    """A file or folder on a filesystem: what the user named, resolved.

    Picklable (pyarrow filesystems are), so Ray tasks and actors can take one.
    """

    target: str
    filesystem: pafs.FileSystem
    path: str
    inside: str | None = None  # a child's: the folder it was named in, which its reads may not leave

    @property
    def local(self) -> bool:
        """A plain local path (URIs, even ``file://``, are not)."""
        return not is_uri(self.target)

    @property
    def on_disk(self) -> bool:
        """On a local disk, ``file://`` URIs too (not an object store)."""
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def child(self, *parts: str) -> Location:
        """What ``parts`` (names, or ``/``-separated relative paths) name inside this folder.

        Paths come from listings and manifests a user may not have made, so one
        that would leave the folder is an ``OutsideLocation`` error, never a
        file elsewhere. The text is checked here; what a read reaches through
        symbolic links is checked when it reads (:meth:`read_bytes`).
        """
        for part in parts:
            names = part.split("/")
            if part.startswith("/") or "\x00" in part or any(name in ("", ".", "..") for name in names):
                raise OutsideLocation(f"path {part[:80]!r} is not inside {self.target}")
        return Location(join(self.target, *parts), self.filesystem, "/".join([self.path.rstrip("/"), *parts]),
                        self.inside or self.path)

    def within(self, folder: Location) -> str | None:
        """Where this location lies inside ``folder``: its ``/``-separated path relative to it (``''`` for the
        folder itself), or None when it is elsewhere. Local paths are compared as they really are (links
        resolved), so ``out`` and ``./photos/../out`` are one folder."""
        if type(self.filesystem) is not type(folder.filesystem):
            return None
        if self.on_disk:
            mine, theirs = os.path.realpath(self.path), os.path.realpath(folder.path)
        else:
            mine, theirs = self.path.rstrip("/"), folder.path.rstrip("/")
        if mine == theirs:
            return ""
        prefix = theirs.rstrip("/") + "/"
        return mine[len(prefix):].replace(os.sep, "/") if mine.startswith(prefix) else None

    def _info(self) -> pafs.FileInfo:
        return self.filesystem.get_file_info(self.path)

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def stat(self) -> tuple[int, int]:
        """(size in bytes, modification time in ns) of this file; ``FileNotFoundError`` if there is none."""
        info = self._info()
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"no file at {self.target}")
        return int(info.size), int(info.mtime_ns or 0)

    def read_bytes(self, limit: int | None = None) -> bytes:
        """The file's bytes; a ``TooLarge`` error past ``limit`` bytes, read no further.

        A child's read on a local disk opens the file first and then asks
        where the opened file really is: a symbolic link (of the file, or of
        a folder on its way) that leads out of the folder it was named in is
        an ``OutsideLocation`` error, whether the path came from a walk, a
        listing or a manifest, and nothing can swap the link between the
        check and the read. Only regular files are read (a FIFO is not waited on).
        """
        if self.on_disk and self.inside is not None:
            return _read_inside(self.path, self.inside, limit)
        with self.filesystem.open_input_stream(self.path) as stream:
            data = stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(data) > limit:
            raise TooLarge(f"{self.target} is larger than {limit} bytes")
        return data

    def list_files(self) -> list[str]:
        """Files below this folder, as sorted ``/``-separated paths relative to it.

        Hidden files and folders (a part starting with ``.``) are left out.
        """
        if self.local:
            return sorted(_walk_local(self.path))
        found = []
        base = self.path.rstrip("/") + "/"
        for info in self.filesystem.get_file_info(pafs.FileSelector(self.path, recursive=True)):
            if info.type != pafs.FileType.File or not info.path.startswith(base):
                continue
            rel = info.path[len(base) :]
            if not any(part.startswith(".") for part in rel.split("/")):
                found.append(rel)
        return sorted(found)

    def move_to(self, other: Location) -> None:
        """Rename this file to ``other`` on the same filesystem; on a local disk the rename reaches the
        disk before returning (``fsync`` of the folder)."""
        self.filesystem.move(self.path, other.path)
        if self.on_disk and "/" in other.path:
            _fsync(other.path.rsplit("/", 1)[0] or "/")

    def delete_file(self) -> None:
        self.filesystem.delete_file(self.path)

    def make_dirs(self) -> None:
        self.filesystem.create_dir(self.path, recursive=True)

    def delete_dir(self) -> None:
        if self.is_dir():
            self.filesystem.delete_dir(self.path)

    @contextlib.contextmanager
    def atomic_writer(self) -> Iterator[io.BufferedIOBase]:
        """Write to a hidden temporary file beside this one, then move it into place.

        On a local disk the file's bytes reach the disk before the rename,
        and the rename before returning (``fsync`` of the file, then of its
        folder), so a power cut leaves the old file or the whole new one,
        never an empty one under the new name. An object store's upload is
        atomic already.
        """
        folder, name = self.path.rsplit("/", 1) if "/" in self.path else ("", self.path)
        temporary = f"{folder}/.tmp-{uuid.uuid4().hex[:8]}-{name}" if folder else f".tmp-{name}"
        if folder:
            self.filesystem.create_dir(folder, recursive=True)
        try:
            with self.filesystem.open_output_stream(temporary) as stream:
                yield stream
            if self.on_disk:
                _fsync(temporary)
            self.filesystem.move(temporary, self.path)
            if self.on_disk and folder:
                _fsync(folder)
        except BaseException:
            with contextlib.suppress(Exception):
                self.filesystem.delete_file(temporary)
            raise


def _read_inside(path: str, inside: str, limit: int | None) -> bytes:
    """The regular file at ``path`` if it really lies in the folder ``inside``: opened, then located by its
    descriptor (``/proc/self/fd``; where there is none, by resolving the path just before opening)."""
    real_root = os.path.realpath(inside)
    resolved = os.path.realpath(path)
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with open(descriptor, "rb") as handle:  # closes the descriptor
        opened = f"/proc/self/fd/{descriptor}"
        if os.path.islink(opened):
            resolved = os.readlink(opened)
        if os.path.commonpath([real_root, resolved]) != real_root:
            raise OutsideLocation(f"{path} leads out of {inside} through a symbolic link")
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise OSError(f"{path} is not a regular file")
        if limit is not None and status.st_size > limit:
            raise TooLarge(f"{path} is {status.st_size} bytes, more than {limit}")
        data = handle.read() if limit is None else handle.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise TooLarge(f"{path} is larger than {limit} bytes")
    return data


def _fsync(path: str) -> None:
    """Flush a local file's (or folder's) data and metadata to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def locate(target: str) -> Location:
    """Resolve a local path (made absolute) or a URI to a ``Location``; a URI pyarrow cannot use is a
    ``StorageError`` that names it without its credentials."""
    if is_uri(target):
        try:
            filesystem, path = pafs.FileSystem.from_uri(target)
        except (pa.ArrowException, ValueError, OSError) as exc:
            raise StorageError(f"cannot use {redact(target)!r}: {redact(one_line(exc, keep='first'))}") from None
        return Location(target, filesystem, path)
    absolute = os.path.abspath(target)
    return Location(absolute, pafs.LocalFileSystem(), absolute)


def _walk_local(root: str) -> Iterator[str]:
    """Local files below ``root``: folder symlinks not followed, file symlinks only into ``root``."""
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            if os.path.islink(full) and os.path.commonpath([real_root, os.path.realpath(full)]) != real_root:
                continue
            yield os.path.relpath(full, root).replace(os.sep, "/")


def write_json(target: str, document: dict) -> str:
    """A JSON document written atomically (a reader never sees half of it), credentials in URIs redacted;
    returns where."""
    location = locate(target)
    text = json.dumps(_redacted(document), indent=2, sort_keys=True, default=str) + "\n"
    with location.atomic_writer() as stream:
        stream.write(text.encode("utf-8"))
    return location.target


def read_json(target: str) -> dict | None:
    """The JSON document at ``target``, or None if there is none (or it is not JSON)."""
    try:
        return json.loads(locate(target).read_bytes())
    except (OSError, ValueError):
        return None


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

"""What an output already holds: resuming a run into it, and reusing another run's rows.

A run into an ``out`` that already holds results of the same configuration
resumes: each method's results for an unchanged file are kept, and only what
is missing (a new or changed file, an error, a method added since) is done.
With ``reuse``, rows of the same configuration are first copied from another
output for the images ``out`` lacks, and then count as done the same way.

What is done is held as a :class:`DoneIndex`, not a dict of rows: a 16-byte
digest of the path, and per method the file's sha256, size and modification
time, ~110 bytes an image, so resuming into a million-image output holds
~110 MB, not gigabytes. The size and time let a resumed run pass over a file
it finds unchanged on that evidence, without reading it
(:func:`xai_batch.explaining.steps.decode`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from xai_batch.errors import ConfigError
from xai_batch.manifest.compact import COMPACTING
from xai_batch.manifest.reader import current_groups
from xai_batch.manifest.schema import MANIFEST_DIR, SCHEMA
from xai_batch.manifest.writer import TEMPORARY_PREFIX, is_own_part, new_run_id, write_part
from xai_batch.storage import locate

__all__ = ["resume_state", "discard_manifest", "reuse_rows", "manifest_counts", "DoneIndex", "DoneImage", "path_keys"]

log = logging.getLogger(__name__)

_BOOKKEEPING = ["path", "method", "sha256", "size", "mtime_ns", "status", "config_hash"]  # what resuming decides by
_HELD = ["path", "method", "sha256", "size", "mtime_ns"]  # what the index keeps of a row


def path_keys(paths: Iterable[str]) -> np.ndarray:
    """A 16-byte digest of each path (BLAKE2b): what the driver's per-image state is keyed by."""
    return np.array([hashlib.blake2b(path.encode(), digest_size=16).digest() for path in paths], "S16")


@dataclass(frozen=True)
class DoneImage:
    """What an output holds for one image: per method, the sha256 of the file its rows were made from, and
    the file's (size, modification time in ns) then, None where its rows did not record them."""

    hashes: dict[str, str]
    stamps: dict[str, tuple[int, int] | None]

    def unchanged(self, methods: Sequence[str], stamp: tuple[int, int]) -> bool:
        """Whether every one of ``methods`` is done for a file that still has ``stamp``."""
        return all(method in self.hashes and self.stamps.get(method) == stamp for method in methods)


class DoneIndex:
    """Path -> method -> sha256 of the files an output holds ok rows for, in sorted NumPy arrays.

    ``get(path)`` answers as the dict would (None for a path without any);
    a lookup is a binary search. Two paths whose 16-byte digests collide
    (odds of about 1 in 10^26 at a billion images) would at worst share an
    answer, and the prepare task's sha256 check would still redo the image.
    """

    def __init__(self, keys: np.ndarray, methods: Sequence[str], method_codes: np.ndarray, digests: np.ndarray,
                 stamps: np.ndarray) -> None:
        order = np.lexsort((method_codes, keys))  # stable: of two entries for a path and method, the last wins
        self.keys, self.method_codes, self.digests = keys[order], method_codes[order], digests[order]
        self.stamps = stamps[order]  # (n, 2) int64: size, mtime_ns; -1 where not recorded
        self.methods = list(methods)

    @classmethod
    def of_rows(cls, tables: Iterable[pa.Table]) -> DoneIndex:
        """The index of tables' rows (path, method, sha256), later tables' rows winning."""
        keys, codes, digests, stamps, methods = [], [], [], [], {}
        for table in tables:
            keys.append(path_keys(table["path"].to_pylist()))
            codes.append(np.array([methods.setdefault(m, len(methods)) for m in table["method"].to_pylist()], np.int16))
            digests.append(np.array([digest or "" for digest in table["sha256"].to_pylist()], "S64"))
            stamps.append(np.stack([pc.fill_null(table[column], -1).to_numpy(zero_copy_only=False).astype(np.int64)
                                    for column in ("size", "mtime_ns")], axis=1).reshape(-1, 2))
        if not keys:
            return cls(np.array([], "S16"), [], np.array([], np.int16), np.array([], "S64"), np.zeros((0, 2), np.int64))
        return cls(np.concatenate(keys), list(methods), np.concatenate(codes), np.concatenate(digests),
                   np.concatenate(stamps))

    def merged(self, other: DoneIndex) -> DoneIndex:
        """This index and ``other``'s entries, ``other``'s winning for the same path and method."""
        methods = list(dict.fromkeys([*self.methods, *other.methods]))
        recode = np.array([methods.index(m) for m in other.methods] or [0], np.int16)
        return DoneIndex(np.concatenate([self.keys, other.keys]), methods,
                         np.concatenate([self.method_codes, recode[other.method_codes]]),
                         np.concatenate([self.digests, other.digests]), np.concatenate([self.stamps, other.stamps]))

    def get(self, path: str) -> DoneImage | None:
        key = path_keys([path])[0]
        start, end = np.searchsorted(self.keys, key, "left"), np.searchsorted(self.keys, key, "right")
        if start == end:
            return None
        methods = [self.methods[code] for code in self.method_codes[start:end].tolist()]
        stamps = [None if size < 0 or mtime < 0 else (size, mtime) for size, mtime in self.stamps[start:end].tolist()]
        return DoneImage(dict(zip(methods, (digest.decode() for digest in self.digests[start:end].tolist()))),
                         dict(zip(methods, stamps)))

    def __contains__(self, path: str) -> bool:
        return self.get(path) is not None

    def __len__(self) -> int:
        """The images with an entry."""
        return len(np.unique(self.keys))


def resume_state(out: str, compatible: set[str], overwrite: bool) -> DoneIndex:
    """Path -> method -> sha256 of the results ``out`` already holds good rows for.

    ``compatible`` are this configuration's hashes for every method: rows of
    a method this run does not ask for may stay. Results of another
    configuration are refused, unless ``overwrite`` says to discard them (it
    discards this configuration's too: the run starts over).
    Error rows are not "done": a resumed run retries them. With ``overwrite``
    nothing is read: every part goes (:func:`discard_manifest`).
    """
    if overwrite:
        discard_manifest(out)
        return DoneIndex.of_rows([])
    hashes: set[str] = set()

    def good_rows() -> Iterable[pa.Table]:  # indexed a group at a time: no group is kept
        for (table,) in current_groups([out], _BOOKKEEPING):
            hashes.update(pc.unique(table["config_hash"].drop_null()).to_pylist())
            yield table.filter(pc.equal(table["status"], "ok")).select(_HELD)

    done = DoneIndex.of_rows(good_rows())
    if hashes - compatible:
        raise ConfigError(
            f"{out!r} holds results of another configuration (config_hash "
            f"{', '.join(sorted(hashes - compatible))}); pass --overwrite to start over, or choose another --out",
            "out",
        )
    return done


def discard_manifest(out: str) -> None:
    """Delete the manifest's part files and what xai-batch leaves while writing them (hidden temporary
    files, a stopped compaction's folder), and nothing else.

    Anything else in the manifest folder (a user's notes, drafts, a ``.git``)
    is not ours to delete: it is a usage error naming it, before anything
    is deleted.
    """
    folder = locate(out).child(MANIFEST_DIR)
    entries = folder.filesystem.get_file_info(pafs.FileSelector(folder.path, allow_not_found=True))
    ours, foreign = [], []
    for entry in entries:
        name, is_file = entry.base_name, entry.type == pafs.FileType.File
        if (is_file and (is_own_part(name) or name.startswith(TEMPORARY_PREFIX))) or \
                (entry.type == pafs.FileType.Directory and name.startswith(COMPACTING)):
            ours.append(entry)
        else:
            foreign.append(name + ("" if is_file else "/"))
    if foreign:
        shown = ", ".join(sorted(foreign)[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(f"--overwrite deletes only the manifest's own part files, and {folder.target} also holds "
                          f"{shown}: move what is yours out of it, or choose another --out", "out")
    for entry in ours:
        if entry.type == pafs.FileType.File:
            folder.filesystem.delete_file(entry.path)
        else:
            folder.filesystem.delete_dir(entry.path)


def reuse_rows(out: str, reuse: str, hashes: dict[str, str], paths: list[str]) -> DoneIndex:
    """Copy ``reuse``'s ok rows of this configuration for the images and methods ``out`` holds no row of.

    The rows keep their run ids, older than this run's, so an image whose file
    changed since is redone by the prepare task's hash check and its new rows
    supersede the copies. An image and method with any current row in
    ``out`` is not copied: an ok row there is done already, and an error row
    there is newer than the copy would be and would stay current, so the
    image is retried instead. Returns path -> method -> sha256 of what was copied.
    """
    wanted = np.sort(path_keys(paths))
    folder = locate(out).child(MANIFEST_DIR)
    run_id, copied, found = new_run_id(), 0, []
    for reusable, held in current_groups([reuse, out], columns_each=[SCHEMA.names, ["path", "method"]]):
        present = set(zip(held["path"].to_pylist(), held["method"].to_pylist()))
        listed = np.isin(path_keys(reusable["path"].to_pylist()), wanted)
        keep = [
            status == "ok" and hashes.get(method) == digest and path_listed and (path, method) not in present
            for path, method, status, digest, path_listed in zip(
                reusable["path"].to_pylist(), reusable["method"].to_pylist(), reusable["status"].to_pylist(),
                reusable["config_hash"].to_pylist(), listed.tolist())
        ]
        if not any(keep):
            continue
        rows = reusable.filter(keep).select(SCHEMA.names)
        folder.make_dirs()
        write_part(folder, f"part-{run_id}-reused-{copied:09d}.parquet", rows)
        copied += rows.num_rows
        found.append(rows.select(_HELD))
    log.info("reused %d rows of %s", copied, reuse)
    return DoneIndex.of_rows(found)


def manifest_counts(out: str) -> dict[str, int]:
    """Counts over the current manifest (all runs), as job.json reports them: an image with an error row
    of any method counts as an error."""
    counts = dict.fromkeys(("images", "ok", "error", "rows"), 0)
    for (table,) in current_groups([out], ["path", "status"]):  # an image's rows are in one group
        images = len(pc.unique(table["path"]))
        errors = len(pc.unique(table.filter(pc.equal(table["status"], "error"))["path"]))
        counts["images"] += images
        counts["error"] += errors
        counts["ok"] += images - errors
        counts["rows"] += table.num_rows
    return counts

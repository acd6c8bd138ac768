"""What an output already holds: resuming a run into it, and reusing another run's rows.

A run into an ``out`` that already holds results of the same configuration
resumes: each method's results for an unchanged file are kept, and only what
is missing (a new or changed file, an error, a method added since) is done.
With ``reuse``, rows of the same configuration are first copied from another
output for the images ``out`` lacks, and then count as done the same way.
"""

from __future__ import annotations

import logging

import pyarrow.compute as pc

from xai_batch.errors import ConfigError
from xai_batch.manifest.reader import read_manifest
from xai_batch.manifest.schema import MANIFEST_DIR
from xai_batch.manifest.writer import new_run_id, write_part
from xai_batch.storage import locate

__all__ = ["resume_state", "reuse_rows", "manifest_counts"]

log = logging.getLogger(__name__)

_BOOKKEEPING = ["path", "method", "sha256", "status", "config_hash"]  # what resuming and reusing decide by


def resume_state(out: str, compatible: set[str], overwrite: bool) -> dict[str, dict[str, str]]:
    """Path -> method -> sha256 of the results ``out`` already holds good rows for.

    ``compatible`` are this configuration's hashes for every method: rows of
    a method this run does not ask for may stay. Results of another
    configuration are refused, unless ``overwrite`` says to discard them (it
    discards this configuration's too: the run starts over).
    Error rows are not "done": a resumed run retries them.
    """
    existing = read_manifest(out, columns=_BOOKKEEPING)
    if existing.num_rows == 0:
        return {}
    hashes = set(existing.column("config_hash").drop_null().to_pylist())
    if hashes - compatible:
        if not overwrite:
            raise ConfigError(
                f"{out!r} holds results of another configuration (config_hash "
                f"{', '.join(sorted(hashes - compatible))}); pass --overwrite to start over, or choose another --out",
                "out",
            )
        locate(out).child(MANIFEST_DIR).delete_dir()
        return {}
    if overwrite:
        locate(out).child(MANIFEST_DIR).delete_dir()
        return {}
    return _hashes_by_path(existing.filter(pc.equal(existing.column("status"), "ok")))


def reuse_rows(out: str, reuse: str, hashes: dict[str, str], paths: list[str]) -> dict[str, dict[str, str]]:
    """Copy ``reuse``'s ok rows of this configuration for the images and methods ``out`` holds no row of.

    The rows keep their run ids, older than this run's, so an image whose file
    changed since is redone by the prepare task's hash check and its new rows
    supersede the copies. An image and method with any current row in
    ``out`` is not copied: an ok row there is done already, and an error row
    there is newer than the copy would be and would stay current, so the
    image is retried instead. Returns path -> method -> sha256 of what was copied.
    """
    held = read_manifest(out, columns=["path", "method"])
    present = set(zip(held["path"].to_pylist(), held["method"].to_pylist()))
    candidates = read_manifest(reuse, columns=_BOOKKEEPING)
    wanted = set(paths)
    keep = [
        status == "ok" and hashes.get(method) == digest and path in wanted and (path, method) not in present
        for path, method, status, digest in zip(
            candidates["path"].to_pylist(), candidates["method"].to_pylist(), candidates["status"].to_pylist(),
            candidates["config_hash"].to_pylist())
    ]
    if not any(keep):
        log.info("reused no rows of %s", reuse)
        return {}
    rows = read_manifest(reuse).filter(keep)  # the same rows in the same order, now with every column
    folder = locate(out).child(MANIFEST_DIR)
    folder.make_dirs()
    write_part(folder, f"part-{new_run_id()}-reused.parquet", rows)
    log.info("reused %d rows of %s", rows.num_rows, reuse)
    return _hashes_by_path(rows)


def _hashes_by_path(rows) -> dict[str, dict[str, str]]:
    """Path -> method -> sha256 of the file the rows were made from."""
    found: dict[str, dict[str, str]] = {}
    for row in rows.select(["path", "method", "sha256"]).to_pylist():
        found.setdefault(row["path"], {})[row["method"]] = row["sha256"]
    return found


def manifest_counts(out: str) -> dict[str, int]:
    """Counts over the current manifest (all runs), as job.json reports them."""
    table = read_manifest(out, columns=["path", "status"]).to_pylist()
    errors = {row["path"] for row in table if row["status"] == "error"}
    ok = {row["path"] for row in table} - errors
    return {"images": len(ok | errors), "ok": len(ok), "error": len(errors), "rows": len(table)}

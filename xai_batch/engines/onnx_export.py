"""The ONNX export of a checkpoint's network: done once per checkpoint and software versions, and cached.

The driver exports (or finds the export) before the replicas start, and
ships the model's bytes to them in an :class:`~xai_batch.engines.onnx_engine.OnnxModel`:
one export per run whatever the number of nodes, and replicas that need no
torch. An architecture torch's exporter cannot export is a ``NotExportable``
error, which :func:`~xai_batch.engines.replica_model` answers by running
PyTorch instead, with a warning.

The cache is trusted only as far as it checks out. Beside each model file is a
record of its SHA-256; the exporter reads the file's bytes once, checks them
against the record and hands those same bytes on, so nothing can change
between the check and the load. Cache files are opened without following
symbolic links: an entry that is a link, not a regular file, or not what its
record says (empty, cut short, another model copied over it) is logged and
exported again, replacing it. Files are written whole (a hidden temporary
renamed into place) and readable by their owner only (0600), in a folder
created 0700. A cache folder that is not the user's own, or that group or
others may write into, is not used: the model is exported afresh instead.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import stat
import tempfile
import uuid
from importlib import metadata

import torch

from xai_batch.engines.onnx_engine import OnnxModel
from xai_batch.errors import ModelError, one_line
from xai_batch.models import LoadedCheckpoint, network

__all__ = ["onnx_spec", "onnx_model", "NotExportable"]

log = logging.getLogger(__name__)


def onnx_spec(loaded: LoadedCheckpoint) -> OnnxModel:
    """What an :class:`~xai_batch.engines.onnx_engine.OnnxEngine` runs for the checkpoint: its ONNX bytes
    (:func:`onnx_model`), its classes, its preprocessing and what it answers."""
    return OnnxModel(onnx_model(loaded), len(loaded.class_names), loaded.preprocessing,
                     loaded.outputs == "probabilities")


def onnx_model(loaded: LoadedCheckpoint) -> bytes:
    """The checkpoint as a serialized ONNX model (dynamic batch axis), exported once and cached.

    The cache key is the checkpoint's SHA-256 and the versions of torch and
    ONNX Runtime; the entry is ``<arch>-<key>.onnx`` and its record
    ``<arch>-<key>.onnx.sha256`` (``sha256sum``'s format) in
    ``$XAI_BATCH_CACHE/onnx`` or ``~/.cache/xai-batch/onnx``. The bytes returned
    are the ones checked (or just exported), for ``InferenceSession`` to load.
    A network object handed over in Python is exported afresh for each
    run: its key would be its weights, and its code may have changed.

    The record is written before the model: processes exporting at once write
    the same bytes (the export is deterministic), and one that finds the model
    finds its record already there, so a fresh cache raises no false alarm.
    A cache folder other users could have written into (not this user's, or
    writable by group or others) is not used at all: anyone who can write
    there can plant a model and its record (:func:`_cache_folder`).
    """
    if loaded.file_format == "onnx":  # a model file runs as it came
        return loaded.model_file
    if loaded.module is not None:  # its weights say nothing of its code, which may have changed: never cached
        return _export(loaded)
    versions = f"torch {torch.__version__}, onnxruntime {metadata.version('onnxruntime')}"
    key = hashlib.sha256(f"{loaded.digest} {versions}".encode()).hexdigest()[:20]
    folder = os.path.join(os.environ.get("XAI_BATCH_CACHE", os.path.expanduser("~/.cache/xai-batch")), "onnx")
    name = f"{loaded.arch}-{key}.onnx"
    cache = _cache_folder(folder)
    try:
        cached = None
        if cache is not None:
            try:
                cached = _cached(cache, folder, name)
            except _Untrusted as problem:
                log.warning("not using the cached ONNX export, exporting it again: %s", problem)
        if cached is not None:
            return cached
        serialized = _export(loaded)
        if cache is not None:
            _write_private(cache, name + ".sha256", _record(name, serialized))
            _write_private(cache, name, serialized)
        return serialized
    finally:
        if cache is not None:
            os.close(cache)


def _export(loaded: LoadedCheckpoint) -> bytes:
    """The checkpoint's network exported to ONNX by torch, in a private temporary folder of its own."""
    model = network(loaded)
    with (tempfile.TemporaryDirectory(prefix="xai-batch-export-") as scratch,  # 0700: the exporter writes by name
          contextlib.redirect_stdout(io.StringIO())):  # the exporter narrates its steps
        exported = os.path.join(scratch, "model.onnx")
        try:
            crop = loaded.preprocessing.crop  # the input's size; only the batch axis is dynamic
            torch.onnx.export(model, (torch.zeros(1, 3, crop, crop),), exported, dynamo=True, input_names=["input"],
                              output_names=["logits"], dynamic_shapes=({0: "batch"},), external_data=False)
        except Exception as exc:
            raise NotExportable(f"{loaded.arch} does not export to ONNX: {one_line(exc, keep='first', limit=300)}") from exc
        with open(exported, "rb") as handle:
            return handle.read()


class NotExportable(ModelError):
    """A network torch's ONNX exporter cannot export."""


class _Untrusted(Exception):
    """A cache entry that is there but is not used; the message names the file and why."""


def _cache_folder(folder: str) -> int | None:
    """A descriptor of the cache folder (created 0700 if missing), or None, with a warning, where it cannot
    be trusted: a symbolic link, another user's, or writable by group or others. Entries are then read and
    written through the descriptor, so the folder checked is the folder used."""
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)  # a folder that is there already keeps its mode
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as error:
        why = "is a symbolic link" if error.errno == errno.ELOOP else f"cannot be opened ({error.strerror})"
        log.warning("not using the ONNX export cache: %s %s", folder, why)
        return None
    status = os.fstat(descriptor)
    problem = None
    if hasattr(os, "getuid") and status.st_uid != os.getuid():
        problem = f"it belongs to another user (uid {status.st_uid})"
    elif status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"others can write into it (mode {stat.S_IMODE(status.st_mode):04o})"
    if problem is None:
        return descriptor
    os.close(descriptor)
    log.warning("not using the ONNX export cache %s: %s, so a model planted there could be run; each run "
                "exports the model itself. Set XAI_BATCH_CACHE to a folder of your own (chmod 700)", folder, problem)
    return None


def _cached(cache: int, folder: str, name: str) -> bytes | None:
    """The model file's bytes, read once and matching its record; ``None`` where there is no model file.

    Raises ``_Untrusted`` for a model file or record that is a link, not a
    regular file or unreadable, a missing record, or bytes the record does not
    describe.
    """
    path = os.path.join(folder, name)
    try:
        serialized = _read_regular(cache, name, path)
    except FileNotFoundError:
        return None
    try:
        recorded = _read_regular(cache, name + ".sha256", path + ".sha256")
    except FileNotFoundError:
        raise _Untrusted(f"{path} has no record of its SHA-256 ({path}.sha256)") from None
    if recorded != _record(name, serialized):
        raise _Untrusted(f"{path} ({len(serialized)} bytes) is not the file {path}.sha256 records")
    return serialized


def _record(name: str, serialized: bytes) -> bytes:
    """The record of a model file: its SHA-256 and name as ``sha256sum`` writes them (``sha256sum -c`` checks it)."""
    return f"{hashlib.sha256(serialized).hexdigest()}  {name}\n".encode()


def _read_regular(cache: int, name: str, shown: str) -> bytes:
    """The bytes of the regular file ``name`` in the cache folder, opened without following a symbolic link.

    ``FileNotFoundError`` where there is nothing; ``_Untrusted`` (naming it as
    ``shown``) for a link (a dangling one too), anything but a regular file (a
    FIFO is not waited on), another user's file, or a file that cannot be opened.
    """
    try:
        descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=cache)
    except FileNotFoundError:
        raise
    except OSError as error:
        why = "is a symbolic link" if error.errno == errno.ELOOP else f"cannot be opened ({error.strerror})"
        raise _Untrusted(f"{shown} {why}") from None
    with open(descriptor, "rb") as handle:  # closes the descriptor
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise _Untrusted(f"{shown} is not a regular file")
        if hasattr(os, "getuid") and status.st_uid != os.getuid():
            raise _Untrusted(f"{shown} belongs to another user (uid {status.st_uid})")
        return handle.read()


def _write_private(cache: int, name: str, data: bytes) -> None:
    """``data`` as the file ``name`` in the cache folder, mode 0600: written under a hidden temporary name
    beside it, then renamed over whatever ``name`` was (a symbolic link there is replaced, its target
    untouched), so a reader finds the old file or the whole new one. A crash can leave either file of an
    entry cut short, which its check catches."""
    temporary = f".tmp-{uuid.uuid4().hex[:12]}-{name}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=cache)
    try:
        with open(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, name, src_dir_fd=cache, dst_dir_fd=cache)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary, dir_fd=cache)
        raise

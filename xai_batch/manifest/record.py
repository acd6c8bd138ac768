"""``job.json``: what a run was asked to do, what it did, and with what software."""

from __future__ import annotations

import json
import platform
from importlib import metadata

from xai_batch.errors import XaiBatchError
from xai_batch.preprocessing import SEEDS, Preprocessing
from xai_batch.storage import join, locate, write_json

__all__ = ["JOB_FILE", "load_job_record", "write_job_record", "software_versions", "recorded_preprocessing"]

JOB_FILE = "job.json"
_PACKAGES = ("xai-batch", "torch", "torchvision", "lime", "shap", "grad-cam", "ray", "numpy", "scikit-image", "pyarrow",
             "pillow", "onnxruntime")


def software_versions() -> dict[str, str]:
    """Versions of Python and of every package that can change a result."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_job_record(out: str, record: dict) -> str:
    """Write ``OUT/job.json`` (a path or URI) atomically: a reader never sees half of it."""
    return write_json(join(out, JOB_FILE), record)


def load_job_record(out: str) -> dict:
    """The record in ``OUT/job.json``, or an empty one where there is none.

    A record that is there but cannot be read (empty, cut short) is an error
    naming it, not an empty record: the next run would write over the
    history of every run before it.
    """
    where = locate(join(out, JOB_FILE))
    try:
        data = where.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        record = json.loads(data)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise XaiBatchError(f"{where.target} is damaged ({len(data)} bytes, not a JSON record; cut short by a crash "
                            "or a full disk?): move it aside to go on, and its run history with it")
    return record


def recorded_preprocessing(record: dict) -> Preprocessing:
    """The model's preprocessing a run's record names: the frame its rows' masks are in and its
    pictures are redrawn in. A record from before models had their own is the seeds'."""
    values = record.get("preprocessing")
    if values is None:
        return SEEDS
    try:
        return Preprocessing.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise XaiBatchError(f"{JOB_FILE} records a preprocessing that cannot be used: {exc}") from exc

"""``job.json``: what a run was asked to do, what it did, and with what software."""

from __future__ import annotations

import platform
from importlib import metadata

from xai_batch.storage import join, read_json, write_json

__all__ = ["JOB_FILE", "load_job_record", "write_job_record", "software_versions"]

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
    """The record in ``OUT/job.json``, or an empty one."""
    return read_json(join(out, JOB_FILE)) or {}

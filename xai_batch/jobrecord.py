"""``job.json``: what a run was asked to do, what it did, and with what software."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata

from xai_batch._atomic import atomic_file

__all__ = ["JOB_FILE", "load_job_record", "write_job_record", "software_versions"]

JOB_FILE = "job.json"
_PACKAGES = ("xai-batch", "torch", "torchvision", "lime", "ray", "numpy", "scikit-image", "pyarrow", "pillow")


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
    """Write ``OUT/job.json`` atomically, so a reader never sees half of it."""
    path = os.path.join(out, JOB_FILE)
    with atomic_file(path, "w") as handle:
        json.dump(record, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
    return path


def load_job_record(out: str) -> dict:
    """The record in ``OUT/job.json``, or an empty one."""
    try:
        with open(os.path.join(out, JOB_FILE), encoding="utf-8") as handle:
            return json.load(handle)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}

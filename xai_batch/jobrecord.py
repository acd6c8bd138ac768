"""``job.json``: what a run was asked to do, what it did, and with what software."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata

from xai_batch._atomic import atomic_file

__all__ = ["JOB_FILE", "write_job_record", "software_versions"]

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

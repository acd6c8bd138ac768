"""Ray plumbing: connecting to a cluster, model replicas, the job driver, Ray jobs.

Nothing in here does maths; it moves the stages of :mod:`xai_batch.stages`
and the engine of :mod:`xai_batch.engine` onto Ray tasks and actors. Names
are imported on first use, so talking to the Jobs API never loads torch.
"""

from __future__ import annotations

import importlib

__all__ = ["JobResult", "run_explain"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("xai_batch.runtime.job"), name)
    raise AttributeError(f"module 'xai_batch.runtime' has no attribute {name!r}")

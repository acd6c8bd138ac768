"""The use cases: one module per command, each a library call the CLI and the job entrypoints make.

``audit``, ``report``, ``stimuli``, ``render``, ``evaluate``, ``verify``,
``demo``. ``explain`` is the run itself
(:func:`~xai_batch.distributed.run.run_explain`, exported here), which
``audit`` and ``demo`` call as well, and ``train`` is
:func:`~xai_batch.distributed.training.train_model`, which ``demo`` calls. A command reads its inputs, calls the
analysis and the distributed plumbing below it, and writes its outputs; it
parses nothing (that is the CLI's), calls no other command, and is not
imported from any layer below. Names are imported on first use, so the CLI's ``--help`` never
loads torch or Ray.
"""

from __future__ import annotations

import importlib

__all__ = ["JobResult", "run_explain"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("xai_batch.distributed.run"), name)
    raise AttributeError(f"module 'xai_batch.commands' has no attribute {name!r}")

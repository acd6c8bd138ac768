"""xai-batch: LIME, KernelSHAP and Grad-CAM explanations for every image of a dataset, on Ray.

The library call behind ``xai-batch explain``::

    from xai_batch import ExplainConfig, run_explain
    result = run_explain(ExplainConfig(source="photos", out="run1", checkpoint="model.pt"))

or, with the model object in hand (a ``torch.nn.Module`` or lime's ``classifier_fn``),
``explain_dataset("photos", "run1", model=net)``; and the manifest it writes: ``read_manifest("run1")``. From a notebook, lime's own calls on many
images at once: ``LimeImageExplainer().explain_instances(images, classifier_fn)``
(:mod:`xai_batch.lime_image`). Names are imported on
first use, so ``xai-batch --help`` does not pay for torch and Ray.
"""

from __future__ import annotations

import importlib
from importlib import metadata

__version__ = metadata.version("xai-batch")

_EXPORTS = {
    "ConfigError": "xai_batch.errors",
    "ExplainConfig": "xai_batch.config",
    "ImageError": "xai_batch.errors",
    "JobResult": "xai_batch.distributed.run",
    "LimeImageExplainer": "xai_batch.lime_image",
    "METHODS": "xai_batch.methods",
    "ModelError": "xai_batch.errors",
    "SCHEMA": "xai_batch.manifest",
    "TrainConfig": "xai_batch.distributed.training",
    "TrainResult": "xai_batch.distributed.training",
    "XaiBatchError": "xai_batch.errors",
    "explain_dataset": "xai_batch.distributed.run",
    "read_explanations": "xai_batch.analysis.explanations",
    "read_manifest": "xai_batch.manifest",
    "run_explain": "xai_batch.distributed.run",
    "train_model": "xai_batch.distributed.training",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'xai_batch' has no attribute {name!r}")

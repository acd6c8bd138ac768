"""The pure maths of LIME for images: superpixels, sampling, perturbations,
the surrogate and masks. Nothing here knows about Ray, Click or files, so each
piece is tested in milliseconds against ``lime`` itself. Names are imported
on first use, so reading masks never loads torch (only perturbations need it).
"""

from __future__ import annotations

import importlib

_HOMES = {
    "MASK_AGAINST": "masks",
    "MASK_FOR": "masks",
    "MASK_NONE": "masks",
    "explanation_mask": "masks",
    "top_features": "masks",
    "hidden_image": "perturbation",
    "perturb": "perturbation",
    "quickshift_segments": "segmentation",
    "sample_rows": "sampling",
    "Surrogate": "surrogate",
    "fit_surrogate": "surrogate",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"xai_batch.explain.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'xai_batch.explain' has no attribute {name!r}")

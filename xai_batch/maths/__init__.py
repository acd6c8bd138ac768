"""The pure maths of explaining an image: superpixels, sampling, perturbations,
the surrogate, masks, the stopping rule, and the quality and localisation measures.

Nothing here knows about Ray, Click, the config or files, so each piece is
tested in milliseconds against ``lime`` itself; numpy, scikit-image and lime
are its tools, torch only as a numeric library: perturbations, and the ports
of lime's superpixels (``device_superpixels``) and surrogate
(``device_surrogate``) that run on the model's device, each tested against
lime's own code, never against a copy of itself.
Nothing of xai_batch outside this package may be imported from here. Names
are imported on first use, so reading masks never loads torch.
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
    "DeviceSegments": "device_superpixels",
    "quickshift_on_device": "device_superpixels",
    "fit_surrogates_on_device": "device_surrogate",
    "Quickshift": "superpixels",
    "quickshift_segments": "superpixels",
    "sample_rows": "sampling",
    "Surrogate": "surrogate",
    "fit_surrogate": "surrogate",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"xai_batch.maths.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'xai_batch.maths' has no attribute {name!r}")

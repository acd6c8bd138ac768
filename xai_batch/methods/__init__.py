"""Explanation methods, chosen by name: LIME, KernelSHAP and Grad-CAM.

Each method turns the model's outputs on one image into one weight per
superpixel for each explained label (an :class:`Attribution`), so that
their explanations compare superpixel by superpixel on the same quickshift
segments. The perturbation methods (LIME, KernelSHAP) draw 0/1 sample rows,
which the model replicas evaluate like any others; Grad-CAM instead asks a
replica for one forward and one backward pass. Adding a method is a module
here with a :class:`Method` and an entry in ``_MODULES``.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = ["METHODS", "DEFAULT_METHOD", "Attribution", "Method", "get_method", "method_seed", "explained_labels"]

METHODS: tuple[str, ...] = ("lime", "kernelshap", "gradcam")
DEFAULT_METHOD = "lime"
_MODULES = {"lime": "lime", "kernelshap": "kernelshap", "gradcam": "gradcam"}


@dataclass(frozen=True)
class Attribution:
    """One method's explanation of one label: a weight per superpixel.

    ``intercept`` is the surrogate's intercept (LIME) or the base value
    (KernelSHAP); ``score`` and ``local_pred`` are LIME's fit statistics;
    ``order`` is the ranking that picks the mask's top superpixels, when the
    method has its own (lime's ``local_exp``); ``heatmap`` Grad-CAM's map.
    """

    label: int
    weights: np.ndarray  # (S,) float64
    intercept: float | None = None
    score: float | None = None
    local_pred: float | None = None
    order: tuple[int, ...] | None = None
    heatmap: np.ndarray | None = None  # (224, 224) float32 in [0, 1]


class Method(Protocol):
    """An explanation method.

    ``perturbs`` says how it uses the model: by the replicas' outputs on its
    sample rows (``sample``), or by a replica's gradient pass (Grad-CAM).
    ``attribute(rows, segments, outputs, labels, seed, num_samples)`` returns one
    :class:`Attribution` per label in ``labels``: ``outputs`` is the (n, C)
    probabilities on the first n ``rows`` for a perturbation method, else the
    (len(labels), H, W) heatmaps the replica computed; ``seed`` and ``num_samples`` are what
    ``sample`` drew the rows with.
    """

    name: str
    perturbs: bool

    def sample(self, seed: int, num_segments: int, num_samples: int) -> np.ndarray: ...

    def attribute(
        self, rows: np.ndarray, segments: np.ndarray, outputs: Any, labels: list[int], seed: int,
        num_samples: int,
    ) -> list[Attribution]: ...


def get_method(name: str) -> Method:
    """The method called ``name``; a ``ValueError`` names the valid ones."""
    if name not in _MODULES:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {name!r}")
    return importlib.import_module(f"xai_batch.methods.{_MODULES[name]}").METHOD


def method_seed(image_seed: int, method: str) -> int:
    """The seed a method draws its samples with for one image.

    LIME keeps the image's own seed (so its rows are what they always were);
    the others get their own, from the image seed and the method's name, so
    two methods never share a random stream yet any sharding reproduces both.
    """
    if method == "lime":
        return image_seed
    material = f"xai-batch/{image_seed}/{method}".encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big") % (2**31)


def explained_labels(original: np.ndarray, top_labels: int) -> list[int]:
    """The ``top_labels`` most probable labels, most probable first, ranked as lime ranks them."""
    return [int(label) for label in np.argsort(original)[-top_labels:][::-1]]

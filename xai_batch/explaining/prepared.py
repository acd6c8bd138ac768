"""What the model work on one image needs: its pixels, what hidden superpixels show, the segments, the rows.

A module of its own, importing numpy alone, because a model replica unpickles
a :class:`PreparedImage` with every call: a replica running an ONNX model
then loads neither torch nor the manifest's readers, and starts in a second
instead of four (the steps that build it live in
:mod:`xai_batch.explaining.steps`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PreparedImage"]


@dataclass(frozen=True)
class PreparedImage:
    """What the model replicas need to evaluate one method's perturbations of one image."""

    image: np.ndarray  # (crop, crop, 3) uint8
    hidden: np.ndarray  # (crop, crop, 3) uint8, what hidden superpixels show
    segments: np.ndarray  # (crop, crop) int32, ids 0..S-1
    rows: np.ndarray  # (samples drawn, S) uint8, 1 keeps a superpixel; none for Grad-CAM
    object_mask: np.ndarray | None = None  # (crop, crop) bool ground truth, where --masks has one

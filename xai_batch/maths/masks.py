"""Explanation masks: which superpixels speak for or against a label."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MASK_NONE", "MASK_FOR", "MASK_AGAINST", "top_features", "explanation_mask"]

MASK_NONE = 0
MASK_FOR = 1
MASK_AGAINST = 2


def top_features(weights: np.ndarray, num_features: int, order: Sequence[int] | None = None) -> list[int]:
    """The ``num_features`` segment ids with the largest ``|weight|``.

    ``order`` is the surrogate's own ranking (lime's ``local_exp`` order); when
    absent the ranking is recomputed, ties broken by segment id.
    """
    if order is None:
        order = np.argsort(-np.abs(weights), kind="stable")
    return [int(segment) for segment in list(order)[:num_features]]


def explanation_mask(
    segments: np.ndarray, weights: np.ndarray, num_features: int, order: Sequence[int] | None = None
) -> np.ndarray:
    """uint8 mask: 1 where a top superpixel has weight >= 0, 2 where < 0, else 0.

    Same selection and signs as lime's ``get_image_and_mask(label,
    positive_only=False, num_features=F)`` (whose mask says 1 and -1; a zero
    weight counts as "for" there too).
    """
    mask = np.full(segments.shape, MASK_NONE, dtype=np.uint8)
    for segment in top_features(weights, num_features, order):
        mask[segments == segment] = MASK_AGAINST if weights[segment] < 0 else MASK_FOR
    return mask

"""The weighted linear surrogate LIME fits to the model's outputs.

lime and scikit-learn are imported on first use: together they take 1.5 s to
import, which every model replica process would otherwise pay at its start
though only the processes that fit surrogates need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

__all__ = ["Surrogate", "fit_surrogate", "sample_weights", "KERNEL_WIDTH"]

KERNEL_WIDTH = 0.25  # LimeImageExplainer's default
ALL_FEATURES = 100000  # LimeImageExplainer's num_features: keeps every superpixel


@dataclass(frozen=True)
class Surrogate:
    """A fitted surrogate for one label.

    ``weights[s]`` is superpixel ``s``'s coefficient; ``order`` lists segment
    ids by decreasing ``|weight|`` exactly as lime's ``local_exp`` does, which
    decides the top-k superpixels of the mask.
    """

    weights: np.ndarray  # (S,) float64
    order: tuple[int, ...]
    intercept: float
    score: float
    local_pred: float


def _kernel(distances: np.ndarray, kernel_width: float) -> np.ndarray:
    return np.sqrt(np.exp(-(distances**2) / kernel_width**2))


def _distances(rows: np.ndarray) -> np.ndarray:
    """Cosine distance of each sample row to row 0 (the original image), as lime computes it."""
    import sklearn.metrics

    return sklearn.metrics.pairwise_distances(rows, rows[0].reshape(1, -1), metric="cosine").ravel()


def sample_weights(rows: np.ndarray) -> np.ndarray:
    """lime's weight of each sample in the surrogate fit: its kernel-smoothed closeness to row 0."""
    return _kernel(_distances(np.asarray(rows, dtype=np.int64)), KERNEL_WIDTH)


def fit_surrogate(rows: np.ndarray, label_probs: np.ndarray, seed: int) -> Surrogate:
    """Fit lime's surrogate for one label.

    ``rows`` is the (N, S) sample matrix (row 0 the original image) and
    ``label_probs`` the model's probability of the label for each row. Uses
    lime's own ``LimeBase`` with the image explainer's kernel, cosine distances
    and feature selection, so the coefficients are lime's to the last bit for
    the same inputs.
    """
    from lime.lime_base import LimeBase

    rows = np.asarray(rows, dtype=np.int64)
    probs = np.asarray(label_probs).reshape(-1, 1)  # keep the model's dtype, as lime does
    distances = _distances(rows)
    base = LimeBase(partial(_kernel, kernel_width=KERNEL_WIDTH), random_state=np.random.RandomState(seed))
    intercept, local_exp, score, local_pred = base.explain_instance_with_data(
        rows, probs, distances, 0, ALL_FEATURES, feature_selection="auto"
    )
    weights = np.zeros(rows.shape[1], dtype=np.float64)
    for segment, weight in local_exp:
        weights[segment] = weight
    return Surrogate(
        weights=weights,
        order=tuple(int(segment) for segment, _ in local_exp),
        intercept=float(intercept),
        score=float(score),
        local_pred=float(np.asarray(local_pred).ravel()[0]),
    )

"""How good one explanation is: faithfulness and stability, as sample rows and scores.

Faithfulness is RISE's deletion and insertion (Petsiuk et al., 2018) over
superpixels: hide the superpixels one by one in the order of their weights,
most supportive first, and follow the explained class's probability
(deletion: it should fall fast, so a low area under the curve is good); or
start from the image with every superpixel hidden and show them in that
order (insertion: it should rise fast, a high area is good). The same curves
for a random order are what chance gets, so each image says whether its
explanation beats it. Stability is the overlap of the top superpixels of the
explanation and of a second one drawn with another seed.

The curves are sample rows like LIME's (1 shows a superpixel, 0 hides it with
the hide colour), so the model replicas evaluate them like any other rows.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ranking", "random_order", "deletion_rows", "insertion_rows", "curve_auc", "topk_jaccard", "second_seed",
]


def ranking(weights: np.ndarray) -> np.ndarray:
    """Superpixels by decreasing weight (most supportive first), ties by id."""
    return np.argsort(-np.asarray(weights, np.float64), kind="stable")


def random_order(seed: int, num_segments: int) -> np.ndarray:
    """The chance baseline's order, drawn from the image's seed."""
    return np.random.default_rng([seed, 0x5EED]).permutation(num_segments)


def deletion_rows(order: np.ndarray, num_segments: int) -> np.ndarray:
    """(S + 1, S) rows: row k hides the first k superpixels of ``order``."""
    rows = np.ones((num_segments + 1, num_segments), np.uint8)
    for k in range(1, num_segments + 1):
        rows[k:, order[k - 1]] = 0
    return rows


def insertion_rows(order: np.ndarray, num_segments: int) -> np.ndarray:
    """(S + 1, S) rows: row k shows only the first k superpixels of ``order``."""
    return 1 - deletion_rows(order, num_segments)


def curve_auc(probabilities: np.ndarray) -> float:
    """Area under a curve of S + 1 probabilities over [0, 1] (the share of superpixels moved), trapezoids."""
    values = np.asarray(probabilities, np.float64)
    return float(np.trapezoid(values, dx=1.0 / (len(values) - 1)))


def topk_jaccard(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """|A ∩ B| / |A ∪ B| of the top ``k`` superpixels by |weight| of two explanations."""
    top_a = set(np.argsort(-np.abs(a), kind="stable")[:k].tolist())
    top_b = set(np.argsort(-np.abs(b), kind="stable")[:k].tolist())
    return len(top_a & top_b) / len(top_a | top_b)


def second_seed(seed: int) -> int:
    """The seed of the stability check's second explanation, derived from the image's."""
    return int(np.random.default_rng([seed, 0x57AB]).integers(0, 2**31))

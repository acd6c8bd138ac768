"""How well an explanation lands on a known object (a ground-truth mask)."""

from __future__ import annotations

import numpy as np

__all__ = ["top_positive", "area_inside", "random_area_inside", "pointing_hit", "pointing_chance"]


def top_positive(weights: np.ndarray, k: int) -> list[int]:
    """The (up to) ``k`` segment ids with the largest positive weights."""
    order = np.argsort(-weights, kind="stable")
    return [int(s) for s in order[:k] if weights[s] > 0]


def area_inside(segments: np.ndarray, selected: list[int], truth: np.ndarray) -> float:
    """Share of the selected superpixels' area that lies inside ``truth``."""
    chosen = np.isin(segments, selected)
    area = chosen.sum()
    return float((chosen & truth).sum() / area) if area else 0.0


def random_area_inside(segments: np.ndarray, k: int, truth: np.ndarray, seed: int, draws: int = 500) -> float:
    """Expected ``area_inside`` for ``k`` superpixels chosen uniformly at random."""
    rng = np.random.default_rng(seed)
    ids = np.unique(segments)
    k = min(k, len(ids))
    return float(np.mean([area_inside(segments, list(rng.choice(ids, k, replace=False)), truth) for _ in range(draws)]))


def _hits(segments: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per superpixel id, whether most of its area lies on the object."""
    ids = segments.ravel()
    inside = np.bincount(ids, weights=truth.ravel().astype(np.float64), minlength=int(ids.max()) + 1)
    return inside / np.maximum(np.bincount(ids, minlength=len(inside)), 1) > 0.5


def pointing_hit(segments: np.ndarray, weights: np.ndarray, truth: np.ndarray) -> bool:
    """The pointing game with superpixels: most of the top superpixel (largest weight) lies on the object."""
    return bool(_hits(segments, truth)[int(np.argmax(weights))])


def pointing_chance(segments: np.ndarray, truth: np.ndarray) -> float:
    """The pointing game's chance level: the share of superpixels that would hit."""
    hits = _hits(segments, truth)
    present = np.bincount(segments.ravel(), minlength=len(hits)) > 0
    return float(hits[present].mean())

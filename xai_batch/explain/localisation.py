"""How well an explanation lands on a known object (a ground-truth mask)."""

from __future__ import annotations

import numpy as np

__all__ = ["top_positive", "area_inside", "random_area_inside"]


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

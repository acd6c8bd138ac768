"""Choosing study stimuli: a balanced, reproducible sample of explained images.

A study's design crosses factors — the image's true class (``label``),
whether the model was right (``correct``), and how confident it was
(``confidence``, in bands) — and shows each participant the same number of
images from every cell. These functions are pure: rows in, a selection and
its presentation order out, the same for the same rows and seed wherever
they run.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from xai_batch.errors import ConfigError

__all__ = ["FACTORS", "Design", "Stimulus", "annotate", "select", "band_name"]

FACTORS = ("label", "correct", "confidence")


@dataclass(frozen=True)
class Design:
    """Which factors cross, how many images per cell, the confidence bands' edges and the seed."""

    by: tuple[str, ...]
    per_cell: int
    seed: int = 0
    bands: tuple[float, ...] = (0.5, 0.8)

    def __post_init__(self) -> None:
        unknown = [factor for factor in self.by if factor not in FACTORS]
        if not self.by or unknown or len(set(self.by)) != len(self.by):
            raise ConfigError(f"give distinct factors from {', '.join(FACTORS)}, got {','.join(self.by)!r}", "by")
        if self.per_cell < 1:
            raise ConfigError(f"give at least 1 image per cell, got {self.per_cell}", "per_cell")
        if list(self.bands) != sorted(set(self.bands)) or not all(0 < edge < 1 for edge in self.bands):
            raise ConfigError(f"give increasing probabilities between 0 and 1, got {self.bands}", "bands")


@dataclass(frozen=True)
class Stimulus:
    """One selected row, in presentation order."""

    stimulus_id: str
    cell: str
    row: dict
    true_label: str | None
    pred_label: str


def band_name(probability: float, edges: Sequence[float]) -> str:
    """The confidence band a probability falls in, e.g. ``0.5-0.8`` for 0.6 with edges (0.5, 0.8)."""
    bounds = [0.0, *edges, 1.0]
    for low, high in zip(bounds, bounds[1:]):
        if probability < high or high == 1.0:
            return f"{low:g}-{high:g}"
    raise AssertionError("unreachable")


def annotate(
    rows: list[dict], truth: Callable[[str], str | None], predicted: Callable[[dict], str], design: Design
) -> list[tuple[dict, str | None, str, tuple[str, ...]]]:
    """(row, true label, predicted label, cell) for each row's top-label explanation.

    A factor that needs the truth ('label', 'correct') and a row without one
    is an error naming the row, not a silent drop.
    """
    annotated = []
    for row in rows:
        if row["explained_index"] != row["pred_index"]:
            continue  # explanations of lower-ranked labels are not what a participant is shown
        true_label, pred_label = truth(row["path"]), predicted(row)
        if true_label is None and {"label", "correct"} & set(design.by):
            raise ConfigError(
                f"no ground-truth label for {row['path']!r}: use a class-per-folder SOURCE or --labels CSV", "by"
            )
        values = {
            "label": true_label,
            "correct": "right" if pred_label == true_label else "wrong",
            "confidence": band_name(row["pred_prob"], design.bands),
        }
        annotated.append((row, true_label, pred_label, tuple(values[factor] for factor in design.by)))
    return annotated


def select(
    annotated: list[tuple[dict, str | None, str, tuple[str, ...]]], design: Design
) -> tuple[list[Stimulus], dict[tuple[str, ...], int]]:
    """``per_cell`` rows from every cell of the design, shuffled into presentation order.

    The cells are every combination of the levels seen (classes) and the
    fixed levels (right/wrong, every band), so an empty cell is reported too.
    Returns the stimuli and the cells short of ``per_cell`` with their counts.
    Each cell draws with its own generator, seeded by the design's seed and
    the cell, so adding a class does not change the others' picks.
    """
    levels = {
        "label": sorted({item[3][design.by.index("label")] for item in annotated}) if "label" in design.by else [],
        "correct": ["right", "wrong"],
        "confidence": [band_name(edge, design.bands) for edge in [0.0, *design.bands]],
    }
    cells = {cell: [] for cell in itertools.product(*(levels[factor] for factor in design.by))}
    for item in sorted(annotated, key=lambda item: item[0]["path"]):
        cells.setdefault(item[3], []).append(item)
    chosen, short = [], {}
    for cell, items in cells.items():
        if len(items) < design.per_cell:
            short[cell] = len(items)
        rng = np.random.default_rng([design.seed, _stable(cell)])
        picks = rng.permutation(len(items))[: design.per_cell]
        chosen += [items[i] for i in sorted(picks)]
    order = np.random.default_rng(design.seed).permutation(len(chosen))
    width = max(3, len(str(len(chosen))))
    stimuli = [
        Stimulus(f"S{number:0{width}d}", "/".join(chosen[i][3]), chosen[i][0], chosen[i][1], chosen[i][2])
        for number, i in enumerate(order, start=1)
    ]
    return stimuli, short


def _stable(cell: tuple[str, ...]) -> int:
    """A seed for a cell that does not depend on Python's hash randomisation."""
    return int.from_bytes(hashlib.sha256("\0".join(cell).encode()).digest()[:8], "little")

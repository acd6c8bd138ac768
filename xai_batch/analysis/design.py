"""Choosing study stimuli: a balanced, reproducible sample of explained images.

A study's design crosses factors — the image's true class (``label``),
whether the model was right (``correct``), how confident it was
(``confidence``, in bands), and the explanation method (``method``) — and
shows each participant the same number of images from every cell. Methods
are a within-subject factor: the images are chosen by the other factors,
and every chosen image is shown once per method, so the methods' cells
hold the same images and differ only in the explanation. These functions are pure: rows in, a selection and
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
from xai_batch.methods import DEFAULT_METHOD

__all__ = ["FACTORS", "Design", "Stimulus", "annotate", "select", "band_name"]

FACTORS = ("method", "label", "correct", "confidence")


@dataclass(frozen=True)
class Design:
    """Which factors cross, how many images per cell, the confidence bands' edges, the seed and the methods.

    ``methods`` are the explanation methods shown; more than one needs
    ``method`` among the factors, so that each is a cell of its own.
    """

    by: tuple[str, ...]
    per_cell: int
    seed: int = 0
    bands: tuple[float, ...] = (0.5, 0.8)
    methods: tuple[str, ...] = (DEFAULT_METHOD,)

    def __post_init__(self) -> None:
        unknown = [factor for factor in self.by if factor not in FACTORS]
        if not self.by or unknown or len(set(self.by)) != len(self.by):
            raise ConfigError(f"give distinct factors from {', '.join(FACTORS)}, got {','.join(self.by)!r}", "by")
        if self.per_cell < 1:
            raise ConfigError(f"give at least 1 image per cell, got {self.per_cell}", "per_cell")
        if list(self.bands) != sorted(set(self.bands)) or not all(0 < edge < 1 for edge in self.bands):
            raise ConfigError(f"give increasing probabilities between 0 and 1, got {self.bands}", "bands")
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"give distinct methods, got {','.join(self.methods)!r}", "methods")
        if len(self.methods) > 1 and "method" not in self.by:
            raise ConfigError(
                f"{len(self.methods)} methods ({', '.join(self.methods)}) need 'method' in --by, or pick one with "
                "--method", "by")

    @property
    def image_factors(self) -> tuple[str, ...]:
        """The factors that choose images: all but ``method``."""
        return tuple(factor for factor in self.by if factor != "method")


@dataclass(frozen=True)
class Stimulus:
    """One selected row (an image explained by one method), in presentation order."""

    stimulus_id: str
    cell: str
    row: dict
    true_label: str | None
    pred_label: str
    method: str = DEFAULT_METHOD


def band_name(probability: float, edges: Sequence[float]) -> str:
    """The confidence band a probability falls in, e.g. ``0.5-0.8`` for 0.6 with edges (0.5, 0.8)."""
    bounds = [0.0, *edges, 1.0]
    for low, high in zip(bounds, bounds[1:]):
        if probability < high or high == 1.0:
            return f"{low:g}-{high:g}"
    raise AssertionError("unreachable")


def annotate(
    rows: list[dict], truth: Callable[[str], str | None], predicted: Callable[[dict], str], design: Design
) -> list[tuple[dict[str, dict], str | None, str, tuple[str, ...]]]:
    """(rows by method, true label, predicted label, image cell) for each image explained by every method.

    The rows are the top-label explanations; the image cell holds the levels
    of the factors other than ``method``. Images missing one of the design's
    methods are left out, so every method shows the same images. A factor
    that needs the truth ('label', 'correct') and a row without one is an
    error naming the row, not a silent drop.
    """
    by_path: dict[str, dict[str, dict]] = {}
    for row in rows:
        if row["explained_index"] == row["pred_index"] and row["method"] in design.methods:
            by_path.setdefault(row["path"], {})[row["method"]] = row  # lower-ranked labels are not what participants see
    annotated = []
    for path, explained in by_path.items():
        if len(explained) < len(design.methods):
            continue
        row = explained[design.methods[0]]
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
        annotated.append((explained, true_label, pred_label, tuple(values[factor] for factor in design.image_factors)))
    return annotated


def select(
    annotated: list[tuple[dict[str, dict], str | None, str, tuple[str, ...]]], design: Design
) -> tuple[list[Stimulus], dict[tuple[str, ...], int]]:
    """``per_cell`` images from every cell of the design, each once per method, shuffled into presentation order.

    The cells are every combination of the levels seen (classes) and the
    fixed levels (right/wrong, every band, every method), so an empty cell is
    reported too. Returns the stimuli and the cells short of ``per_cell``
    with their counts. Each image cell draws with its own generator, seeded
    by the design's seed and the cell, so adding a class (or a method) does
    not change the others' picks.
    """
    factors = design.image_factors
    levels = {
        "label": sorted({item[3][factors.index("label")] for item in annotated}) if "label" in factors else [],
        "correct": ["right", "wrong"],
        "confidence": [band_name(edge, design.bands) for edge in [0.0, *design.bands]],
    }
    cells = {cell: [] for cell in itertools.product(*(levels[factor] for factor in factors))}
    for item in sorted(annotated, key=lambda item: next(iter(item[0].values()))["path"]):
        cells.setdefault(item[3], []).append(item)
    chosen, short = [], {}
    for cell, items in cells.items():
        if len(items) < design.per_cell:
            for method in design.methods:
                short[_full_cell(design, cell, method)] = len(items)
        rng = np.random.default_rng([design.seed, _stable(cell)])
        picks = rng.permutation(len(items))[: design.per_cell]
        chosen += [(items[i], method) for i in sorted(picks) for method in design.methods]
    order = np.random.default_rng(design.seed).permutation(len(chosen))
    width = max(3, len(str(len(chosen))))
    stimuli = []
    for number, i in enumerate(order, start=1):
        (rows, true_label, pred_label, cell), method = chosen[i]
        stimuli.append(Stimulus(f"S{number:0{width}d}", "/".join(_full_cell(design, cell, method)), rows[method],
                                true_label, pred_label, method))
    return stimuli, short


def _full_cell(design: Design, cell: tuple[str, ...], method: str) -> tuple[str, ...]:
    """An image cell with the method's level put where ``method`` stands in the design."""
    levels = iter(cell)
    return tuple(method if factor == "method" else next(levels) for factor in design.by)


def _stable(cell: tuple[str, ...]) -> int:
    """A seed for a cell that does not depend on Python's hash randomisation."""
    return int.from_bytes(hashlib.sha256("\0".join(cell).encode()).digest()[:8], "little")

"""Back from a manifest to lime's objects: a run's explanations as ``ImageExplanation``, to page through.

:func:`read_explanations` streams a run's current ``ok`` rows a group of
images at a time (:func:`~xai_batch.manifest.reader.ok_rows`), re-reads
each image from SOURCE in the model's frame (checking it is still the file
explained), and yields one :class:`StoredExplanation` per image and method:
lime's ``ImageExplanation`` with the rows' segments, weights, intercepts,
scores and labels, so ``get_image_and_mask`` and the seeds' plotting code
work on it, and a notebook shows it as its overlay. Nothing is re-run.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

import numpy as np
from lime.lime_image import ImageExplanation
from PIL import Image

from xai_batch.analysis.overlays import boundaries
from xai_batch.errors import ImageError
from xai_batch.images import explained_pixels
from xai_batch.manifest import decode_segments
from xai_batch.manifest.reader import ok_rows
from xai_batch.manifest.record import job_source, load_job_record, recorded_preprocessing
from xai_batch.storage import locate

__all__ = ["StoredExplanation", "read_explanations"]

SHOWN_FEATURES = 5  # the seeds' overlay: the top 5 superpixels, for the label in green and against it in red


class StoredExplanation(ImageExplanation):
    """lime's ``ImageExplanation`` of one image and method, read from a manifest.

    ``path``, ``method`` and ``seed`` say which; ``rows`` are its manifest
    rows (one per explained label). ``local_exp[label]`` lists every
    superpixel's weight by decreasing magnitude, as lime's does; ``score``
    and ``local_pred`` are the top label's (lime keeps one of each).
    """

    def __init__(self, image: np.ndarray, rows: list[dict]) -> None:
        first = rows[0]
        super().__init__(image, decode_segments(first["segments"]))
        self.path, self.method, self.seed, self.rows = first["path"], first["method"], first["seed"], rows
        self._by_label = explained = {row["explained_index"]: row for row in rows}
        ranked = [label for label in first["topk_index"] or [] if label in explained]
        self.top_labels = ranked + sorted(set(explained) - set(ranked), key=lambda label: -explained[label]["explained_prob"])
        for label, row in explained.items():
            weights = np.asarray(row["weights"], np.float64)
            order = sorted(range(len(weights)), key=lambda feature: -abs(weights[feature]))
            self.local_exp[label] = [(feature, float(weights[feature])) for feature in order]
            self.intercept[label] = row["intercept"]
        top = explained[self.top_labels[0]]
        self.score, self.local_pred = top["score"], top["local_pred"]

    def overlay(self, label: int | None = None, num_features: int = SHOWN_FEATURES,
                positive_only: bool = False) -> np.ndarray:
        """The seeds' picture of ``label`` (default the top one): RGB uint8, as ``xai-batch render`` draws it."""
        label = self.top_labels[0] if label is None else label
        weights = np.asarray(self._by_label[label]["weights"], np.float64)
        return boundaries(self.image, self.segments, weights, num_features, positive_only)

    def show(self, label: int | None = None) -> Image.Image:
        """The overlay as a PIL image (a notebook displays it)."""
        return Image.fromarray(self.overlay(label))

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.show().save(buffer, format="PNG")
        return buffer.getvalue()


def read_explanations(out: str, source: str | None = None, methods: tuple[str, ...] = (),
                      paths: Iterable[str] | None = None) -> Iterator[StoredExplanation]:
    """The explanations of the run in ``out``, by path and method; only ``paths`` if given, only ``methods``
    (default all). Images are read from ``source`` (default: the run's SOURCE, from job.json) in the frame
    of the model's preprocessing; a file that changed since is an ``ImageError`` naming it."""
    wanted = None if paths is None else set(paths)
    preprocessing = recorded_preprocessing(load_job_record(out))
    root = locate(job_source(out, source))
    for rows in ok_rows(out, methods):
        by_image: dict[tuple[str, str], list[dict]] = {}
        for row in rows:
            if wanted is None or row["path"] in wanted:
                by_image.setdefault((row["path"], row["method"]), []).append(row)
        for (path, _), image_rows in by_image.items():
            try:
                pixels = explained_pixels(root, image_rows[0], preprocessing)
            except ImageError as exc:
                raise ImageError(f"{path}: {exc}") from None
            yield StoredExplanation(pixels, image_rows)

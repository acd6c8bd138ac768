"""The manifest's rows: what one row holds and how it is built, and the PNGs inside it.

A row is a plain dict keyed by ``SCHEMA``'s column names. ``explanation_row``
builds one method's explanation of one label, ``error_row`` the single row of
an image and method that could not be explained; both take the job-wide
values every row carries from a ``RowContext``. The segment map, the mask and
Grad-CAM's heatmap are stored as PNGs (``encode_*``/``decode_*``), so a row
is a few KB. ``QUALITY_COLUMNS`` are the measures a run with faithfulness,
stability or masks adds.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from xai_batch.images import open_stored_png
from xai_batch.manifest.schema import TOPK
from xai_batch.methods import METHODS, Attribution, method_seed
from xai_batch.preprocessing import SEEDS, Preprocessing

__all__ = [
    "RowContext", "RowSource", "QUALITY_COLUMNS", "explanation_row", "error_row", "image_rows", "method_rows",
    "encode_segments", "decode_segments", "encode_mask", "decode_mask", "encode_heatmap", "decode_heatmap",
]

QUALITY_COLUMNS = (
    "deletion_auc", "insertion_auc", "deletion_auc_random", "insertion_auc_random", "stability",
    "on_object", "on_object_random", "pointing_hit", "pointing_random",
)


@dataclass(frozen=True)
class RowContext:
    """Job-wide values every manifest row carries."""

    model_id: str
    class_names: tuple[str, ...]
    config_hashes: Mapping[str, str]  # method -> the hash its rows carry
    num_samples: int  # the samples drawn per image: all of them, or at most that many with ``adaptive``
    top_labels: int
    num_features: int
    adaptive: bool = False
    faithfulness: bool = False
    stability: bool = False
    engine: str | None = None  # what ran the model, e.g. 'onnxruntime 1.32.0'
    preprocessing: Preprocessing = SEEDS  # the model's: how each image became the array explained

    @property
    def measures_quality(self) -> bool:
        """Whether explanations need a second round of model work (``quality_rows``)."""
        return self.faithfulness or self.stability


class RowSource(Protocol):
    """The facts about one input file that its rows record."""

    path: str
    sha256: str | None
    size: int | None
    mtime_ns: int | None
    width: int | None
    height: int | None
    seed: int | None
    num_segments: int | None
    error: str | None


def image_rows(rows: Iterable[dict]) -> dict[str, dict]:
    """One row per image: the explanation of its predicted class (or its error row).

    Of several methods, the first (LIME before KernelSHAP before Grad-CAM)
    that explained the image: their predictions are the same.
    """
    rank = {name: number for number, name in enumerate(METHODS)}

    def preference(row: dict) -> tuple:
        return (row["status"] != "ok", row["explained_index"] != row["pred_index"], rank.get(row["method"], len(rank)))

    chosen: dict[str, dict] = {}
    for row in rows:
        held = chosen.get(row["path"])
        if held is None or preference(row) < preference(held):
            chosen[row["path"]] = row
    return chosen


def method_rows(rows: Iterable[dict], method: str) -> dict[str, dict]:
    """Per image ``method`` explained, its explanation of the predicted class."""
    chosen = image_rows(row for row in rows if row["method"] == method)
    return {path: row for path, row in chosen.items() if row["status"] == "ok"}


def explanation_row(
    header: RowSource, context: RowContext, method: str, *, original: np.ndarray, attribution: Attribution,
    seed: int, num_samples: int | None, segments_png: bytes, mask: np.ndarray, quality: Mapping[str, object],
) -> dict:
    """One method's explanation of ``attribution.label``: ``original`` is the model's (C,) probabilities on
    the image, ``mask`` the explanation mask, ``quality`` any quality columns already known."""
    topk = np.argsort(original)[::-1][:TOPK]
    pred, label = int(topk[0]), attribution.label
    return {
        "path": header.path,
        "sha256": header.sha256,
        "size": header.size,
        "mtime_ns": header.mtime_ns,
        "status": "ok",
        "error": None,
        "width": header.width,
        "height": header.height,
        "model_id": context.model_id,
        "pred_index": pred,
        "pred_name": context.class_names[pred],
        "pred_prob": float(original[pred]),
        "topk_index": [int(i) for i in topk],
        "topk_prob": [float(original[i]) for i in topk],
        "explained_index": label,
        "explained_name": context.class_names[label],
        "explained_prob": float(original[label]),
        "method": method,
        "seed": seed,
        "num_samples": num_samples,
        "num_segments": header.num_segments,
        "segments": segments_png,
        "weights": attribution.weights.tolist(),
        "intercept": attribution.intercept,
        "score": attribution.score,
        "local_pred": attribution.local_pred,
        "mask": encode_mask(mask),
        "heatmap": None if attribution.heatmap is None else encode_heatmap(attribution.heatmap),
        "config_hash": context.config_hashes[method],
        "engine": context.engine,
        **quality,
    }


def error_row(header: RowSource, context: RowContext, method: str, error: str | None = None) -> dict:
    """The single row recording that a method could not explain an image."""
    return {
        "path": header.path,
        "sha256": header.sha256,
        "size": header.size,
        "mtime_ns": header.mtime_ns,
        "status": "error",
        "error": error or header.error,
        "width": header.width,
        "height": header.height,
        "model_id": context.model_id,
        "method": method,
        "seed": None if header.seed is None else method_seed(header.seed, method),
        "num_samples": context.num_samples,
        "num_segments": header.num_segments,
        "config_hash": context.config_hashes[method],
    }


def encode_segments(segments: np.ndarray) -> bytes:
    """Segment map as a 16-bit grayscale PNG (pixel value = segment id)."""
    if segments.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"{int(segments.max()) + 1} segments do not fit a 16-bit PNG")
    return _png(Image.fromarray(segments.astype(np.uint16)))


def decode_segments(data: bytes) -> np.ndarray:
    with open_stored_png(data) as image:
        return np.asarray(image).astype(np.int64)


def encode_mask(mask: np.ndarray) -> bytes:
    """Explanation mask as an 8-bit grayscale PNG (0 none, 1 for, 2 against)."""
    return _png(Image.fromarray(mask.astype(np.uint8), mode="L"))


def decode_mask(data: bytes) -> np.ndarray:
    with open_stored_png(data) as image:
        return np.asarray(image, dtype=np.uint8)


def encode_heatmap(heatmap: np.ndarray) -> bytes:
    """A [0, 1] heatmap as an 8-bit grayscale PNG (value = round(255 * heat))."""
    return _png(Image.fromarray(np.round(np.clip(heatmap, 0, 1) * 255).astype(np.uint8), mode="L"))


def decode_heatmap(data: bytes) -> np.ndarray:
    """The heatmap back in [0, 1], to within 1/510."""
    with open_stored_png(data) as image:
        return np.asarray(image, dtype=np.float32) / 255


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()

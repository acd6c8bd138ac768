"""The two CPU stages of explaining one image, around the model work.

``prepare`` reads and decodes a file, segments it and draws its sample rows;
``finish`` fits the surrogate to the model's outputs and builds the manifest
rows. Both are plain functions: Ray runs them as tasks, tests call them
directly. Model evaluation in between belongs to an :class:`~xai_batch.engine.Engine`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from xai_batch.config import ExplainConfig
from xai_batch.errors import ImageError
from xai_batch.explain import explanation_mask, fit_surrogate, hidden_image, quickshift_segments, sample_rows
from xai_batch.explain.convergence import sample_schedule, settled
from xai_batch.images import image_seed, load_image
from xai_batch.manifest import encode_mask, encode_segments
from xai_batch.storage import Location

__all__ = ["ImageHeader", "PreparedImage", "RowContext", "prepare", "enough_samples", "finish", "error_row", "TOPK"]

TOPK = 5


@dataclass(frozen=True)
class ImageHeader:
    """The small facts about one input the driver needs; ``error`` if it failed."""

    path: str
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    num_segments: int | None = None
    error: str | None = None
    skipped: bool = False  # already in the manifest with the same content


@dataclass(frozen=True)
class PreparedImage:
    """What the model replicas need to evaluate one image's perturbations."""

    image: np.ndarray  # (224, 224, 3) uint8
    hidden: np.ndarray  # (224, 224, 3) uint8, what hidden superpixels show
    segments: np.ndarray  # (224, 224) int32, ids 0..S-1
    rows: np.ndarray  # (samples drawn, S) uint8, 1 keeps a superpixel


@dataclass(frozen=True)
class RowContext:
    """Job-wide values every manifest row carries."""

    model_id: str
    class_names: tuple[str, ...]
    config_hash: str
    num_samples: int  # the samples drawn per image: all of them, or at most that many with ``adaptive``
    top_labels: int
    num_features: int
    adaptive: bool = False


def prepare(
    source: Location, path: str, config: ExplainConfig, done_sha256: str | None = None
) -> tuple[ImageHeader, PreparedImage | None]:
    """Read, decode and segment one file; a bad file gives a header with ``error``.

    ``done_sha256`` is the content hash the manifest already holds results for:
    when the file still has it, the header says ``skipped`` and nothing is decoded.
    """
    try:
        data = source.child(path).read_bytes()
    except OSError as exc:
        return ImageHeader(path, error=f"cannot read: {' '.join(str(exc).split())}"), None
    if done_sha256 is not None and hashlib.sha256(data).hexdigest() == done_sha256:
        return ImageHeader(path, sha256=done_sha256, skipped=True), None
    try:
        loaded = load_image(data, config.max_pixels)
    except ImageError as exc:
        return ImageHeader(path, sha256=hashlib.sha256(data).hexdigest(), error=str(exc)), None
    seed = image_seed(config.seed, loaded.sha256)
    segments = quickshift_segments(loaded.pixels, config.segmentation, seed)
    num_segments = int(segments.max()) + 1
    rows = sample_rows(seed, config.samples_drawn, num_segments)
    prepared = PreparedImage(
        image=loaded.pixels,
        hidden=hidden_image(loaded.pixels, segments, config.hide_color),
        segments=segments.astype(np.int32),
        rows=rows.astype(np.uint8),
    )
    header = ImageHeader(path, loaded.sha256, loaded.width, loaded.height, seed, num_segments)
    return header, prepared


def enough_samples(prepared: PreparedImage, probs: np.ndarray, context: RowContext) -> bool:
    """Whether ``finish`` may run on the first ``len(probs)`` samples.

    Always with a fixed sample count; with ``adaptive`` once every explained
    label's top superpixels and signs are settled, or no samples are left.
    """
    if not context.adaptive or len(probs) >= len(prepared.rows):
        return True
    rows = prepared.rows[: len(probs)]
    looks = len(sample_schedule(len(prepared.rows)))
    return all(
        settled(rows, probs[:, label], context.num_features, looks).settled
        for label in _explained_labels(probs[0], context.top_labels)
    )


def finish(header: ImageHeader, prepared: PreparedImage, probs: np.ndarray, context: RowContext) -> list[dict]:
    """Fit one surrogate per explained label and build the manifest rows.

    ``probs`` is (n, num_classes), row i the model's output on sample i; the
    surrogate uses the first n sample rows. The labels explained are the
    ``top_labels`` most probable on the original image (row 0), in decreasing
    order, as lime chooses them.
    """
    original = probs[0]
    topk = np.argsort(original)[::-1][:TOPK]
    explained = _explained_labels(original, context.top_labels)
    rows64 = prepared.rows[: len(probs)].astype(np.int64)
    segments_png = encode_segments(prepared.segments)
    pred = int(topk[0])
    out = []
    for label in explained:
        surrogate = fit_surrogate(rows64, probs[:, label], header.seed)
        mask = explanation_mask(prepared.segments, surrogate.weights, context.num_features, surrogate.order)
        out.append(
            {
                "path": header.path,
                "sha256": header.sha256,
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
                "seed": header.seed,
                "num_samples": len(probs),
                "num_segments": header.num_segments,
                "segments": segments_png,
                "weights": surrogate.weights.tolist(),
                "intercept": surrogate.intercept,
                "score": surrogate.score,
                "local_pred": surrogate.local_pred,
                "mask": encode_mask(mask),
                "config_hash": context.config_hash,
            }
        )
    return out


def _explained_labels(original: np.ndarray, top_labels: int) -> list[int]:
    """The ``top_labels`` most probable labels, most probable first, ranked as lime ranks them."""
    return [int(label) for label in np.argsort(original)[-top_labels:][::-1]]


def error_row(header: ImageHeader, context: RowContext, error: str | None = None) -> dict:
    """The single row recording that an image could not be explained."""
    return {
        "path": header.path,
        "sha256": header.sha256,
        "status": "error",
        "error": error or header.error,
        "width": header.width,
        "height": header.height,
        "model_id": context.model_id,
        "seed": header.seed,
        "num_samples": context.num_samples,
        "num_segments": header.num_segments,
        "config_hash": context.config_hash,
    }

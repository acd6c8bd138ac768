"""The two CPU stages of explaining one image, around the model work.

``prepare`` reads and decodes a file, segments it and draws its sample rows;
``finish`` fits the surrogate to the model's outputs and builds the manifest
rows. When the job measures the explanations' quality, ``quality_rows``
then gives the rows those measures need the model's outputs on (deletion and
insertion curves, a second explanation), and ``score`` adds the measures to
the manifest rows. All are plain functions: Ray runs them as tasks, tests call them
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
from xai_batch.explain.localisation import area_inside, pointing_chance, pointing_hit, random_area_inside, top_positive
from xai_batch.explain.quality import (
    curve_auc, deletion_rows, insertion_rows, random_order, ranking, second_seed, topk_jaccard,
)
from xai_batch.images import image_seed, load_image, read_object_mask
from xai_batch.manifest import encode_mask, encode_segments
from xai_batch.storage import Location

__all__ = [
    "ImageHeader", "PreparedImage", "RowContext", "prepare", "enough_samples", "finish", "quality_rows", "score",
    "error_row", "TOPK", "QUALITY_COLUMNS",
]

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
    object_mask: np.ndarray | None = None  # (224, 224) bool ground truth, where --masks has one


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
    faithfulness: bool = False
    stability: bool = False
    engine: str | None = None  # what ran the model, e.g. 'onnxruntime 1.32.0'

    @property
    def measures_quality(self) -> bool:
        """Whether explanations need a second round of model work (``quality_rows``)."""
        return self.faithfulness or self.stability


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
    try:
        object_mask = read_object_mask(config.masks, path, source.child(path).target) if config.masks else None
    except ImageError as exc:
        return ImageHeader(path, sha256=loaded.sha256, error=str(exc)), None
    prepared = PreparedImage(
        image=loaded.pixels,
        hidden=hidden_image(loaded.pixels, segments, config.hide_color),
        segments=segments.astype(np.int32),
        rows=rows.astype(np.uint8),
        object_mask=object_mask,
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
                "engine": context.engine,
                **_localisation(prepared, surrogate.weights, context.num_features, header.seed),
            }
        )
    return out


QUALITY_COLUMNS = (
    "deletion_auc", "insertion_auc", "deletion_auc_random", "insertion_auc_random", "stability",
    "on_object", "on_object_random", "pointing_hit", "pointing_random",
)


def _localisation(prepared: PreparedImage, weights: np.ndarray, k: int, seed: int) -> dict:
    """How the explanation sits on the object, where there is a ground-truth mask with an object in it."""
    truth = prepared.object_mask
    if truth is None or not truth.any():
        return {}
    segments = prepared.segments
    selected = top_positive(weights, k)
    return {
        "on_object": area_inside(segments, selected, truth) if selected else 0.0,
        "on_object_random": random_area_inside(segments, k, truth, seed),
        "pointing_hit": pointing_hit(segments, weights, truth),
        "pointing_random": pointing_chance(segments, truth),
    }


def quality_rows(header: ImageHeader, prepared: PreparedImage, rows: list[dict], context: RowContext) -> PreparedImage:
    """The sample rows the quality measures need model outputs on, in ``score``'s order.

    With stability: a second sample matrix of the same size, from the second
    seed. With faithfulness: per explained label, the deletion then insertion
    curve in the order of its weights; then both curves in a random order.
    """
    num_segments, blocks = header.num_segments, []
    if context.stability:
        blocks.append(sample_rows(second_seed(header.seed), rows[0]["num_samples"], num_segments))
    if context.faithfulness:
        for row in rows:
            order = ranking(np.asarray(row["weights"]))
            blocks += [deletion_rows(order, num_segments), insertion_rows(order, num_segments)]
        order = random_order(header.seed, num_segments)
        blocks += [deletion_rows(order, num_segments), insertion_rows(order, num_segments)]
    return PreparedImage(prepared.image, prepared.hidden, prepared.segments, np.concatenate(blocks).astype(np.uint8))


def score(header: ImageHeader, rows: list[dict], extra: PreparedImage, probs: np.ndarray, context: RowContext) -> list[dict]:
    """The manifest rows with their quality measures, from the model's outputs on ``quality_rows``."""
    num_segments, at = header.num_segments, 0
    scored = [dict(row) for row in rows]
    if context.stability:
        count = rows[0]["num_samples"]
        second = extra.rows[:count].astype(np.int64)
        for row in scored:
            again = fit_surrogate(second, probs[:count, row["explained_index"]], second_seed(header.seed))
            row["stability"] = topk_jaccard(np.asarray(row["weights"]), again.weights, context.num_features)
        at = count
    if context.faithfulness:
        curve = num_segments + 1
        random_at = at + 2 * curve * len(rows)
        for number, row in enumerate(scored):
            label = row["explained_index"]
            start = at + 2 * curve * number
            row["deletion_auc"] = curve_auc(probs[start : start + curve, label])
            row["insertion_auc"] = curve_auc(probs[start + curve : start + 2 * curve, label])
            row["deletion_auc_random"] = curve_auc(probs[random_at : random_at + curve, label])
            row["insertion_auc_random"] = curve_auc(probs[random_at + curve : random_at + 2 * curve, label])
    return scored


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

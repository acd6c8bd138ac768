"""The two CPU stages of explaining one image, around the model work.

``prepare`` reads and decodes a file, segments it once and draws each
method's sample rows on those superpixels; ``finish`` turns one method's
model outputs into its attributions (:mod:`xai_batch.methods`) and builds
the manifest rows. When the job measures the explanations' quality, ``quality_rows``
then gives the rows those measures need the model's outputs on (deletion and
insertion curves, a second explanation), and ``score`` adds the measures to
the manifest rows. All are plain functions: Ray runs them as tasks, tests call them
directly. Model evaluation in between belongs to an :class:`~xai_batch.engine.Engine`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from xai_batch.config import ExplainConfig
from xai_batch.errors import ImageError
from xai_batch.explain import explanation_mask, hidden_image, quickshift_segments
from xai_batch.explain.convergence import sample_schedule, settled
from xai_batch.explain.localisation import area_inside, pointing_chance, pointing_hit, random_area_inside, top_positive
from xai_batch.explain.quality import (
    curve_auc, deletion_rows, insertion_rows, random_order, ranking, second_seed, topk_jaccard,
)
from xai_batch.images import image_seed, load_image, read_object_mask
from xai_batch.manifest import encode_heatmap, encode_mask, encode_segments
from xai_batch.methods import explained_labels, get_method, method_seed
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
    methods: tuple[str, ...] = ()  # the methods to run on it: those without results for this content
    drawn: tuple[int, ...] = ()  # per method to run, the sample rows its payload holds
    skipped: bool = False  # every method already in the manifest with the same content


@dataclass(frozen=True)
class PreparedImage:
    """What the model replicas need to evaluate one method's perturbations of one image."""

    image: np.ndarray  # (224, 224, 3) uint8
    hidden: np.ndarray  # (224, 224, 3) uint8, what hidden superpixels show
    segments: np.ndarray  # (224, 224) int32, ids 0..S-1
    rows: np.ndarray  # (samples drawn, S) uint8, 1 keeps a superpixel; none for Grad-CAM
    object_mask: np.ndarray | None = None  # (224, 224) bool ground truth, where --masks has one


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

    @property
    def measures_quality(self) -> bool:
        """Whether explanations need a second round of model work (``quality_rows``)."""
        return self.faithfulness or self.stability


def prepare(
    source: Location, path: str, config: ExplainConfig, done: Mapping[str, str] | None = None
) -> tuple[ImageHeader | PreparedImage | None, ...]:
    """Read, decode and segment one file: (header, one payload per method of ``config.methods``).

    ``done`` maps a method to the content hash the manifest already holds its
    results for; methods whose results are for the file's current content
    are not run again (their payload is ``None``), and when none is left the
    header says ``skipped`` and nothing is decoded. A bad file gives a
    header with ``error`` and no payloads.
    """
    done = done or {}
    nothing = (None,) * len(config.methods)
    try:
        data = source.child(path).read_bytes()
    except OSError as exc:
        return ImageHeader(path, error=f"cannot read: {' '.join(str(exc).split())}", methods=config.methods), *nothing
    sha256 = hashlib.sha256(data).hexdigest()
    todo = tuple(method for method in config.methods if done.get(method) != sha256)
    if not todo:
        return ImageHeader(path, sha256=sha256, skipped=True), *nothing
    try:
        loaded = load_image(data, config.max_pixels)
        object_mask = read_object_mask(config.masks, path, source.child(path).target) if config.masks else None
    except ImageError as exc:
        return ImageHeader(path, sha256=sha256, error=str(exc), methods=todo), *nothing
    seed = image_seed(config.seed, loaded.sha256)
    segments = quickshift_segments(loaded.pixels, config.segmentation, seed)
    num_segments = int(segments.max()) + 1
    hidden = hidden_image(loaded.pixels, segments, config.hide_color)
    rows = {
        method: get_method(method).sample(method_seed(seed, method), num_segments, config.samples_drawn)
        for method in todo
    }
    payloads = [
        PreparedImage(loaded.pixels, hidden, segments.astype(np.int32), rows[method].astype(np.uint8), object_mask)
        if method in todo else None
        for method in config.methods
    ]
    header = ImageHeader(path, loaded.sha256, loaded.width, loaded.height, seed, num_segments, methods=todo,
                         drawn=tuple(len(rows[method]) for method in todo))
    return header, *payloads


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
        for label in explained_labels(probs[0], context.top_labels)
    )


def finish(
    header: ImageHeader, prepared: PreparedImage, outputs, context: RowContext, method: str = "lime"
) -> list[dict]:
    """One method's attributions per explained label, as manifest rows.

    For a perturbation method ``outputs`` is (n, num_classes), row i the
    model's output on sample row i, and the labels explained are the
    ``top_labels`` most probable on the original image (row 0), in
    decreasing order, as lime chooses them. For Grad-CAM it is the
    replica's (probabilities, labels, heatmaps).
    """
    explainer = get_method(method)
    seed = method_seed(header.seed, method)
    if explainer.perturbs:
        original, labels, evaluated = outputs[0], explained_labels(outputs[0], context.top_labels), outputs
    else:
        original, labels, evaluated = outputs
    topk = np.argsort(original)[::-1][:TOPK]
    attributions = explainer.attribute(prepared.rows, prepared.segments, evaluated, labels, seed, context.num_samples)
    segments_png = encode_segments(prepared.segments)
    pred = int(topk[0])
    out = []
    for attribution in attributions:
        label = attribution.label
        mask = explanation_mask(prepared.segments, attribution.weights, context.num_features, attribution.order)
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
                "method": method,
                "seed": seed,
                "num_samples": len(evaluated) if explainer.perturbs else None,
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
                **_localisation(prepared, attribution.weights, context.num_features, seed),
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


def _stable_samples(rows: list[dict], context: RowContext) -> int:
    """The samples a second explanation draws: as many as the first used (``auto`` may stop early)."""
    return rows[0]["num_samples"] if context.adaptive else context.num_samples


def quality_rows(
    header: ImageHeader, prepared: PreparedImage, rows: list[dict], context: RowContext, method: str = "lime"
) -> PreparedImage:
    """The sample rows the quality measures need model outputs on, in ``score``'s order.

    With stability: a second sample matrix of the method's, drawn with the
    second seed (Grad-CAM draws nothing: it has no randomness to be stable
    against). With faithfulness: per explained label, the deletion then
    insertion curve in the order of its weights; then both curves in a
    random order.
    """
    num_segments = header.num_segments
    blocks = [np.zeros((0, num_segments), np.uint8)]
    explainer, seed = get_method(method), method_seed(header.seed, method)
    if context.stability and explainer.perturbs:
        blocks.append(explainer.sample(second_seed(seed), num_segments, _stable_samples(rows, context)))
    if context.faithfulness:
        for row in rows:
            order = ranking(np.asarray(row["weights"]))
            blocks += [deletion_rows(order, num_segments), insertion_rows(order, num_segments)]
        order = random_order(seed, num_segments)
        blocks += [deletion_rows(order, num_segments), insertion_rows(order, num_segments)]
    return PreparedImage(prepared.image, prepared.hidden, prepared.segments, np.concatenate(blocks).astype(np.uint8))


def score(
    header: ImageHeader, rows: list[dict], extra: PreparedImage, probs: np.ndarray, context: RowContext,
    method: str = "lime",
) -> list[dict]:
    """The manifest rows with their quality measures, from the model's outputs on ``quality_rows``."""
    num_segments = header.num_segments
    explainer, seed = get_method(method), method_seed(header.seed, method)
    curves = 2 * (num_segments + 1) * (len(rows) + 1) if context.faithfulness else 0
    at = len(extra.rows) - curves  # the stability block comes first
    scored = [dict(row) for row in rows]
    if at:
        labels = [row["explained_index"] for row in rows]
        again = explainer.attribute(extra.rows[:at], extra.segments, probs[:at], labels, second_seed(seed),
                                    _stable_samples(rows, context))
        for row, second in zip(scored, again):
            row["stability"] = topk_jaccard(np.asarray(row["weights"]), second.weights, context.num_features)
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


def error_row(header: ImageHeader, context: RowContext, method: str, error: str | None = None) -> dict:
    """The single row recording that a method could not explain an image."""
    return {
        "path": header.path,
        "sha256": header.sha256,
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

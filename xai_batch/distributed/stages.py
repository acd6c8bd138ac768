"""The two CPU stages of explaining one image, around the model work.

``prepare`` reads and decodes a file, segments it once and draws each
method's sample rows on those superpixels; ``finish`` turns one method's
model outputs into its attributions (:mod:`xai_batch.methods`) and builds
the manifest rows. When the job measures the explanations' quality, ``quality_rows``
then gives the rows those measures need the model's outputs on (deletion and
insertion curves, a second explanation), and ``score`` adds the measures to
the manifest rows. All are plain functions: Ray runs them as tasks, tests call them
directly. Model evaluation in between belongs to an :class:`~xai_batch.engines.Engine`.

Each stage says how long it was busy, by the names of :data:`STAGES`, so that
``job.json`` can show whether the model or the CPU work around it set a run's
pace.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from xai_batch.config import ExplainConfig
from xai_batch.errors import ImageError, one_line
from xai_batch.maths import explanation_mask, hidden_image, quickshift_segments
from xai_batch.maths.convergence import sample_schedule, settled
from xai_batch.maths.localisation import area_inside, pointing_chance, pointing_hit, random_area_inside, top_positive
from xai_batch.maths.quality import (
    curve_auc, deletion_rows, insertion_rows, random_order, ranking, second_seed, topk_jaccard,
)
from xai_batch.images import image_seed, load_image, read_object_mask
from xai_batch.manifest.rows import RowContext, encode_segments, explanation_row
from xai_batch.methods import DEFAULT_METHOD, explained_labels, get_method, method_seed
from xai_batch.storage import Location

__all__ = ["STAGES", "ImageHeader", "PreparedImage", "prepare", "enough_samples", "finish", "quality_rows", "score"]

# Where an explain run's time goes, in the order an image meets them. "model" is the replicas' busy time,
# "surrogate" the surrogate or solver with the masks and rows, "quality" the measures' own CPU work.
STAGES = ("read_decode", "segmentation", "sampling", "model", "surrogate", "quality", "writing")


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
    busy: dict[str, float] = field(default_factory=dict, compare=False)  # seconds by stage, in prepare


@dataclass(frozen=True)
class PreparedImage:
    """What the model replicas need to evaluate one method's perturbations of one image."""

    image: np.ndarray  # (224, 224, 3) uint8
    hidden: np.ndarray  # (224, 224, 3) uint8, what hidden superpixels show
    segments: np.ndarray  # (224, 224) int32, ids 0..S-1
    rows: np.ndarray  # (samples drawn, S) uint8, 1 keeps a superpixel; none for Grad-CAM
    object_mask: np.ndarray | None = None  # (224, 224) bool ground truth, where --masks has one


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
    started = time.perf_counter()

    def read_for() -> dict[str, float]:
        return {"read_decode": time.perf_counter() - started}

    try:
        data = source.child(path).read_bytes()
    except OSError as exc:
        return ImageHeader(path, error=f"cannot read: {one_line(exc)}", methods=config.methods, busy=read_for()), *nothing
    sha256 = hashlib.sha256(data).hexdigest()
    todo = tuple(method for method in config.methods if done.get(method) != sha256)
    if not todo:
        return ImageHeader(path, sha256=sha256, skipped=True, busy=read_for()), *nothing
    try:
        loaded = load_image(data, config.max_pixels)
        object_mask = read_object_mask(config.masks, path, source.child(path).target) if config.masks else None
    except ImageError as exc:
        return ImageHeader(path, sha256=sha256, error=str(exc), methods=todo, busy=read_for()), *nothing
    busy = read_for()
    seed = image_seed(config.seed, loaded.sha256)
    segmenting = time.perf_counter()
    segments = quickshift_segments(loaded.pixels, config.segmentation, seed)
    num_segments = int(segments.max()) + 1
    hidden = hidden_image(loaded.pixels, segments, config.hide_color)
    sampling = time.perf_counter()
    rows = {
        method: get_method(method).sample(method_seed(seed, method), num_segments, config.samples_drawn)
        for method in todo
    }
    busy.update(segmentation=sampling - segmenting, sampling=time.perf_counter() - sampling)
    payloads = [
        PreparedImage(loaded.pixels, hidden, segments.astype(np.int32), rows[method].astype(np.uint8), object_mask)
        if method in todo else None
        for method in config.methods
    ]
    header = ImageHeader(path, loaded.sha256, loaded.width, loaded.height, seed, num_segments, methods=todo,
                         drawn=tuple(len(rows[method]) for method in todo), busy=busy)
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
    header: ImageHeader, prepared: PreparedImage, outputs, context: RowContext, method: str = DEFAULT_METHOD
) -> list[dict]:
    """One method's attributions per explained label, as manifest rows.

    ``outputs`` are the model's, as the method's ``combine`` gives them: for
    a perturbation method (n, num_classes), row i the output on sample row i,
    the labels explained the ``top_labels`` most probable on the original
    image (row 0), in decreasing order, as lime chooses them; for a gradient
    method its pass's :class:`~xai_batch.methods.GradientOutputs`.
    """
    explainer = get_method(method)
    seed = method_seed(header.seed, method)
    original, labels = explainer.explained(outputs, context.top_labels)
    attributions = explainer.attribute(prepared.rows, prepared.segments, outputs, labels, seed, context.num_samples)
    segments_png = encode_segments(prepared.segments)
    return [
        explanation_row(
            header, context, method, original=original, attribution=attribution, seed=seed,
            num_samples=explainer.samples_used(outputs), segments_png=segments_png,
            mask=explanation_mask(prepared.segments, attribution.weights, context.num_features, attribution.order),
            quality=_localisation(prepared, attribution.weights, context.num_features, seed),
        )
        for attribution in attributions
    ]


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
    header: ImageHeader, prepared: PreparedImage, rows: list[dict], context: RowContext, method: str = DEFAULT_METHOD
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
    if context.stability:  # a gradient method draws no rows: nothing to be stable against
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
    method: str = DEFAULT_METHOD,
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

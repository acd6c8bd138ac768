"""The steps of explaining one image, around the model work, wherever they run.

``decode`` reads, hashes and decodes a file; ``prepare`` (the workers' CPU
task) adds lime's quickshift and each method's sample rows on those
superpixels (``sample_methods``); ``finish`` turns one method's model outputs
into its attributions (:mod:`xai_batch.methods`) and builds the manifest
rows. When the run measures the explanations' quality, ``quality_rows`` gives
the rows those measures need the model's outputs on (deletion and insertion
curves, a second explanation), and ``score`` adds the measures to the rows.
Which step comes next is :mod:`xai_batch.explaining.plan`'s to say.

All are plain functions: Ray runs them as tasks or in the replicas, tests call
them directly. Model evaluation in between belongs to an
:class:`~xai_batch.engines.Engine`. Each step says how long it was busy, by
the names of :data:`STEPS`, so that ``job.json`` can show whether the model
or the work around it set a run's pace.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from xai_batch.config import ExplainConfig
from xai_batch.errors import ImageError, one_line
from xai_batch.explaining.prepared import PreparedImage
from xai_batch.maths import explanation_mask, hidden_image, quickshift_segments
from xai_batch.maths.convergence import sample_schedule, settled
from xai_batch.maths.localisation import area_inside, pointing_chance, pointing_hit, random_area_inside, top_positive
from xai_batch.maths.quality import (
    curve_auc, deletion_rows, insertion_rows, random_order, ranking, second_seed, topk_jaccard,
)
from xai_batch.images import file_bytes, image_seed, load_image, read_object_mask
from xai_batch.preprocessing import Preprocessing
from xai_batch.manifest.resume import DoneImage
from xai_batch.manifest.rows import RowContext, encode_segments, explanation_row
from xai_batch.methods import DEFAULT_METHOD, explained_labels, get_method, method_seed
from xai_batch.storage import Location, TooLarge

__all__ = [
    "STEPS", "ImageHeader", "DecodedImage", "decode", "unchanged_files", "sample_methods",
    "prepare", "enough_samples", "finish", "quality_rows", "score",
]

# Where an explain run's time goes, in the order an image meets them. "model" is the replicas' busy time,
# "surrogate" the surrogate or solver with the masks and rows, "quality" the measures' own CPU work.
STEPS = ("read_decode", "segmentation", "sampling", "model", "surrogate", "quality", "writing")
STAT_THREADS = 32  # HEAD requests in flight per task, where the files are on an object store


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
    size: int | None = None  # the file's size and modification time, when it was read
    mtime_ns: int | None = None
    busy: dict[str, float] = field(default_factory=dict, compare=False)  # seconds by step, in prepare


@dataclass(frozen=True)
class DecodedImage:
    """An input as the explanation starts from it: the model's pixels and, with ``--masks``, its object mask."""

    pixels: np.ndarray  # (crop, crop, 3) uint8
    object_mask: np.ndarray | None = None  # (crop, crop) bool
    lab: np.ndarray | None = None  # (crop, crop, 3) float64: quickshift's Lab, for a replica that segments on its device


def decode(
    source: Location, path: str, config: ExplainConfig, preprocessing: Preprocessing, done: DoneImage | None = None,
    lab: bool = False,
) -> tuple[ImageHeader, DecodedImage | None]:
    """Read, hash and decode one file: its header, and its pixels (in the model's frame, ``preprocessing``'s)
    unless it failed or has nothing to do; with ``lab``, also quickshift's Lab of them
    (:func:`~xai_batch.maths.device_superpixels.lab_scaled`), the CPU's part of a device's segmentation.

    ``done`` is what the manifest already holds for the path (files
    unchanged by size and time were passed over before: :func:`unchanged_files`).
    The file is read and hashed, and the methods whose results are for its
    current content are not run again (when none is left, ``skipped`` and
    nothing is decoded). A bad file gives a header with ``error``.
    """
    started = time.perf_counter()

    def read_for() -> dict[str, float]:
        return {"read_decode": time.perf_counter() - started}

    try:
        size, mtime_ns = source.child(path).stat()
        limit = file_bytes(config.max_pixels)
        if size > limit:
            raise TooLarge(f"{size} bytes, more than an image within --max-pixels {config.max_pixels} can take "
                           f"({limit} bytes)")
        data = source.child(path).read_bytes(limit)
    except TooLarge as exc:
        return ImageHeader(path, error=f"file too large: {one_line(exc)}", methods=config.methods,
                           busy=read_for()), None
    except OSError as exc:
        return ImageHeader(path, error=f"cannot read: {one_line(exc)}", methods=config.methods, busy=read_for()), None
    sha256 = hashlib.sha256(data).hexdigest()
    todo = tuple(method for method in config.methods if (done.hashes.get(method) if done else None) != sha256)
    if not todo:
        return ImageHeader(path, sha256=sha256, skipped=True, busy=read_for()), None
    try:
        loaded = load_image(data, config.max_pixels, preprocessing)
        object_mask = (read_object_mask(config.masks, path, source.child(path).target, config.max_pixels,
                                        preprocessing) if config.masks else None)
    except ImageError as exc:
        return ImageHeader(path, sha256=sha256, size=len(data), mtime_ns=mtime_ns, error=str(exc), methods=todo,
                           busy=read_for()), None
    busy = read_for()
    converted = None
    if lab:
        from xai_batch.maths.device_superpixels import lab_scaled

        converting = time.perf_counter()
        converted = lab_scaled(loaded.pixels, config.segmentation)
        busy["segmentation"] = time.perf_counter() - converting
    header = ImageHeader(path, loaded.sha256, loaded.width, loaded.height, image_seed(config.seed, loaded.sha256),
                         methods=todo, size=len(data), mtime_ns=mtime_ns, busy=busy)
    return header, DecodedImage(loaded.pixels, object_mask, converted)


def unchanged_files(source: Location, candidates: Sequence[tuple[str, DoneImage]], methods: Sequence[str]) -> list[str]:
    """The paths among ``candidates`` whose file's size and modification time are those their rows recorded
    for every one of ``methods``: done, and passed over without being read.

    One ``stat`` each (a HEAD on an object store, where they run
    ``STAT_THREADS`` at a time). A file that cannot be stat'ed is not among
    them: its read says why.
    """
    def same(candidate: tuple[str, DoneImage]) -> bool:
        path, done = candidate
        try:
            return done.unchanged(methods, source.child(path).stat())
        except OSError:
            return False

    if source.on_disk:  # a stat costs microseconds
        verdicts = list(map(same, candidates))
    else:
        with ThreadPoolExecutor(STAT_THREADS) as pool:
            verdicts = list(pool.map(same, candidates))
    return [path for (path, _), unchanged in zip(candidates, verdicts) if unchanged]


def sample_methods(
    header: ImageHeader, decoded: DecodedImage, segments: np.ndarray, config: ExplainConfig
) -> tuple[ImageHeader, list[PreparedImage]]:
    """Each method's payload on ``segments``: the hidden image and its sample rows, per ``header.methods``.

    Returns the header completed with the segment count and the rows drawn,
    its ``busy`` with the seconds this took as "sampling".
    """
    started = time.perf_counter()
    num_segments = int(segments.max()) + 1
    hidden = hidden_image(decoded.pixels, segments, config.hide_color)
    segments = segments.astype(np.int32)
    payloads = [
        PreparedImage(decoded.pixels, hidden, segments,
                      get_method(method).sample(method_seed(header.seed, method), num_segments,
                                                config.samples_drawn).astype(np.uint8),
                      decoded.object_mask)
        for method in header.methods
    ]
    busy = {**header.busy, "sampling": time.perf_counter() - started}
    return dataclasses.replace(header, num_segments=num_segments, drawn=tuple(len(p.rows) for p in payloads),
                               busy=busy), payloads


def prepare(
    source: Location, path: str, config: ExplainConfig, preprocessing: Preprocessing, done: DoneImage | None = None
) -> tuple[ImageHeader | PreparedImage | None, ...]:
    """The workers' stage: decode, segment with lime's quickshift, sample; (header, one payload per method).

    The payloads are in the order of ``config.methods``, ``None`` for a
    method not to run (see :func:`decode`); a bad file gives a header with
    ``error`` and no payloads.
    """
    header, decoded = decode(source, path, config, preprocessing, done)
    if decoded is None:
        return header, *(None,) * len(config.methods)
    segmenting = time.perf_counter()
    segments = quickshift_segments(decoded.pixels, config.segmentation, header.seed)
    header = dataclasses.replace(header, busy={**header.busy, "segmentation": time.perf_counter() - segmenting})
    header, payloads = sample_methods(header, decoded, segments, config)
    by_method = dict(zip(header.methods, payloads))
    return header, *(by_method.get(method) for method in config.methods)


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
    header: ImageHeader, prepared: PreparedImage, outputs, context: RowContext, method: str = DEFAULT_METHOD,
    device: str | None = None,
) -> list[dict]:
    """One method's attributions per explained label, as manifest rows.

    ``outputs`` are the model's, as the method's ``combine`` gives them: for
    a perturbation method (n, num_classes), row i the output on sample row i,
    the labels explained the ``top_labels`` most probable on the original
    image (row 0), in decreasing order, as lime chooses them; for a gradient
    method its pass's :class:`~xai_batch.methods.GradientOutputs`. ``device``,
    where given, is where the method may fit (see
    :meth:`~xai_batch.methods.PerturbationMethod.attribute`).
    """
    explainer = get_method(method)
    seed = method_seed(header.seed, method)
    original, labels = explainer.explained(outputs, context.top_labels)
    attributions = explainer.attribute(prepared.rows, prepared.segments, outputs, labels, seed, context.num_samples,
                                       device)
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
    method: str = DEFAULT_METHOD, device: str | None = None,
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
                                    _stable_samples(rows, context), device)
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

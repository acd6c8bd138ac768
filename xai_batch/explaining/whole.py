"""The replica's executor: decoded images explained whole in one process, following the per-image plan.

With ``--stages replica`` a model replica gets a call of decoded images and
does every step after decoding itself (:func:`explain_whole`): quickshift for
all of them at once, then per image and method the steps
:mod:`~xai_batch.explaining.plan` says, the model's work through the
``predict`` and ``gradients`` it is given. On CUDA lime's maths runs on the
device (:func:`maths_on_device`). Plain code: the replica actor calls it,
tests call it without Ray.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from xai_batch.config import ExplainConfig
from xai_batch.errors import one_line
from xai_batch.explaining.plan import Finished, GradientPass, Phase, advance, first_step, gathered
from xai_batch.explaining.prepared import PreparedImage
from xai_batch.explaining.steps import DecodedImage, ImageHeader, sample_methods
from xai_batch.manifest.rows import RowContext, error_row
from xai_batch.maths import quickshift_segments

__all__ = ["WholeImages", "explain_whole", "maths_on_device"]

Predict = Callable[[PreparedImage, np.ndarray], np.ndarray]  # (payload, sample rows) -> (n, C) probabilities
Gradients = Callable[[str, PreparedImage, int], object]  # (method, payload, top_labels) -> its gradient outputs
IMAGES_IN_FLIGHT = 2  # on a device: one image's CPU work (fits, rows, PNGs) beside another's model calls


@dataclass(frozen=True)
class WholeImages:
    """What :func:`explain_whole` did with a batch of images: rows and outcome per (image, method)."""

    outcomes: tuple[tuple[str, str, bool], ...]  # (path, method, ok), in the order of ``rows``
    rows: tuple[list[dict], ...]  # one method's manifest rows on one image: its explanation, or its error row
    busy: dict[str, float]  # seconds by step
    settled: int  # pixels whose quickshift parent was settled on the CPU
    segmented_on_device: int  # images segmented together in one device call; 0: by lime's own, one by one


def maths_on_device(device: str) -> bool:
    """Whether the replica's stage runs lime's maths on ``device`` (quickshift's torch port, many images a
    call, and the surrogate's) rather than lime's own code: on CUDA only. On a CPU the ports are the same
    arithmetic on the same cores as scikit-image's Cython and scikit-learn, only slower."""
    return device.startswith("cuda")


def explain_whole(
    images: Sequence[tuple[ImageHeader, DecodedImage]], config: ExplainConfig, context: RowContext,
    predict: Predict, gradients: Gradients, device: str = "cpu", on_device: bool | None = None,
) -> WholeImages:
    """Explain decoded images whole: every step after decoding, here.

    With ``on_device`` (by default :func:`maths_on_device`) quickshift for
    all the images at once on ``device``
    (:func:`~xai_batch.maths.device_superpixels.quickshift_on_device`, lime's
    labels by construction; from their Lab where ``decode`` gave it) and the
    surrogate there (within 1e-9 of lime's); without, lime's own code for
    both, image by image. Then per image and method the plan's steps: the
    model's outputs through ``predict(payload, rows)`` in the workers'
    chunks of ``batch_size`` (so every forward batch is the same as
    theirs), ``gradients(method, payload, top_labels)`` for a gradient pass.
    The next image's sample rows are drawn in a second thread while the
    device works on this one, and on a device two images are explained at
    once (``IMAGES_IN_FLIGHT``), so one's fits and rows, PNGs included, are
    built while the other's model calls run; the model takes one call at a
    time, and each image's arithmetic is its own, so the rows are the same
    in any order. A failure on one image becomes that method's error row.
    """
    busy: Counter[str] = Counter()
    started = time.perf_counter()
    on_device = maths_on_device(device) if on_device is None else on_device
    if on_device:
        from xai_batch.maths.device_superpixels import quickshift_on_device

        pixels = np.stack([decoded.pixels for _, decoded in images])
        labs = [decoded.lab for _, decoded in images]
        segmented = quickshift_on_device(pixels, config.segmentation, device,
                                         labs=labs if all(lab is not None for lab in labs) else None)
        segments, settled_pixels = segmented.segments.cpu().numpy(), sum(segmented.settled)
    else:
        segments = [quickshift_segments(decoded.pixels, config.segmentation, header.seed)
                    for header, decoded in images]
        settled_pixels = 0
    busy["segmentation"] = time.perf_counter() - started
    fit_on = device if on_device else None
    model = _OneAtATime(predict, gradients)
    outcomes, rows = [], []
    # On a device two images are in flight: one image's fits and rows (the CPU's work) while the other's
    # model calls run; the model itself takes one call at a time. On a CPU one, as the cores are the model's.
    with ThreadPoolExecutor(1) as sampler, ThreadPoolExecutor(IMAGES_IN_FLIGHT if on_device else 1) as explainer:
        ahead = [sampler.submit(sample_methods, header, decoded, image_segments, config)
                 for (header, decoded), image_segments in zip(images, segments)]
        explained = [explainer.submit(_explain_image, sampled, config, context, model, fit_on) for sampled in ahead]
        for future in explained:
            image_outcomes, image_rows, image_busy = future.result()
            outcomes += image_outcomes
            rows += image_rows
            busy.update(image_busy)
    return WholeImages(tuple(outcomes), tuple(rows), dict(busy), settled_pixels, len(images) if on_device else 0)


class _OneAtATime:
    """The replica's ``predict`` and ``gradients`` for several threads: one call at a time (an engine keeps
    one input buffer, a gradient pass its hooks), each call's seconds added to the caller's ``busy``."""

    def __init__(self, predict: Predict, gradients: Gradients) -> None:
        self._predict, self._gradients = predict, gradients
        self._lock = threading.Lock()

    def predict(self, payload: PreparedImage, rows: np.ndarray, busy: Counter[str]) -> np.ndarray:
        with self._lock:
            started = time.perf_counter()
            probs = self._predict(payload, rows)
            busy["model"] += time.perf_counter() - started
        return probs

    def gradients(self, method: str, payload: PreparedImage, top_labels: int, busy: Counter[str]):
        with self._lock:
            started = time.perf_counter()
            outputs = self._gradients(method, payload, top_labels)
            busy["model"] += time.perf_counter() - started
        return outputs


def _explain_image(sampled: Future, config: ExplainConfig, context: RowContext, model: _OneAtATime,
                   fit_on: str | None) -> tuple[list[tuple[str, str, bool]], list[list[dict]], Counter[str]]:
    """One image's every method, once its sample rows are drawn: (outcomes, rows, seconds by step)."""
    header, payloads = sampled.result()
    busy: Counter[str] = Counter(sampling=header.busy["sampling"])
    outcomes, rows = [], []
    for method, payload in zip(header.methods, payloads):
        try:
            method_rows, ok = _follow_plan(header, payload, method, config, context, model, fit_on, busy), True
        except Exception as exc:  # noqa: BLE001 - the image's error row, as a failed task's in the workers'
            reason = one_line(f"{type(exc).__name__}: {exc}", keep="last")
            method_rows, ok = [error_row(header, context, method, f"explaining failed: {reason}")], False
        outcomes.append((header.path, method, ok))
        rows.append(method_rows)
    return outcomes, rows, busy


def _follow_plan(header: ImageHeader, payload: PreparedImage, method: str, config: ExplainConfig,
                 context: RowContext, model: _OneAtATime, fit_on: str | None, busy: Counter[str]) -> list[dict]:
    """One method's rows on one image: the plan's steps in turn, the fits on ``fit_on`` (a device, or None
    for lime's own code)."""
    step, phase, chunks, rows = first_step(method, len(payload.rows), context), Phase.EXPLAIN, [], None
    while not isinstance(step, Finished):
        if step.phase is not phase:  # on to the quality measures' rows
            phase, chunks = step.phase, []
        if isinstance(step, GradientPass):
            chunks.append(model.gradients(method, payload, context.top_labels, busy))
        else:  # in the chunks the workers' stage sends
            chunks += [model.predict(payload, payload.rows[begin : min(begin + config.batch_size, step.stop)], busy)
                       for begin in range(step.start, step.stop, config.batch_size)]
        advanced = advance(header, payload, gathered(method, phase, chunks), context, method, phase, rows, fit_on)
        busy.update(advanced.busy)
        step, rows = advanced.step, advanced.rows
        if advanced.quality is not None:
            payload = advanced.quality
    return rows

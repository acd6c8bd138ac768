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

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from xai_batch.config import ExplainConfig
from xai_batch.errors import one_line
from xai_batch.explaining.plan import Finished, GradientPass, Phase, advance, first_step, gathered
from xai_batch.explaining.steps import DecodedImage, ImageHeader, PreparedImage, sample_methods
from xai_batch.manifest.rows import RowContext, error_row
from xai_batch.maths import quickshift_segments

__all__ = ["WholeImages", "explain_whole", "maths_on_device"]

Predict = Callable[[PreparedImage, np.ndarray], np.ndarray]  # (payload, sample rows) -> (n, C) probabilities
Gradients = Callable[[str, PreparedImage, int], object]  # (method, payload, top_labels) -> its gradient outputs


@dataclass(frozen=True)
class WholeImages:
    """What :func:`explain_whole` did with a batch of images: rows and outcome per (image, method)."""

    outcomes: tuple[tuple[str, str, bool], ...]  # (path, method, ok), in the order of ``rows``
    rows: tuple[list[dict], ...]  # one method's manifest rows on one image: its explanation, or its error row
    busy: dict[str, float]  # seconds by stage
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
    device works on this one. A failure on one image becomes that method's
    error row.
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
    outcomes, rows = [], []
    with ThreadPoolExecutor(1) as sampler:
        ahead = [sampler.submit(sample_methods, header, decoded, image_segments, config)
                 for (header, decoded), image_segments in zip(images, segments)]
        for sampled in ahead:
            header, payloads = sampled.result()
            busy["sampling"] += header.busy["sampling"]
            for method, payload in zip(header.methods, payloads):
                try:
                    method_rows, ok = _follow_plan(header, payload, method, config, context, predict, gradients,
                                                   fit_on, busy), True
                except Exception as exc:  # noqa: BLE001 - the image's error row, as a failed task's in the workers'
                    reason = one_line(f"{type(exc).__name__}: {exc}", keep="last")
                    method_rows, ok = [error_row(header, context, method, f"explaining failed: {reason}")], False
                outcomes.append((header.path, method, ok))
                rows.append(method_rows)
    return WholeImages(tuple(outcomes), tuple(rows), dict(busy), settled_pixels, len(images) if on_device else 0)


def _follow_plan(header: ImageHeader, payload: PreparedImage, method: str, config: ExplainConfig,
                 context: RowContext, predict: Predict, gradients: Gradients, fit_on: str | None,
                 busy: Counter[str]) -> list[dict]:
    """One method's rows on one image: the plan's steps in turn, the fits on ``fit_on`` (a device, or None
    for lime's own code)."""
    step, phase, chunks, rows = first_step(method, len(payload.rows), context), Phase.EXPLAIN, [], None
    while not isinstance(step, Finished):
        if step.phase is not phase:  # on to the quality measures' rows
            phase, chunks = step.phase, []
        started = time.perf_counter()
        if isinstance(step, GradientPass):
            chunks.append(gradients(method, payload, context.top_labels))
        else:  # in the chunks the workers' stage sends
            chunks += [predict(payload, payload.rows[begin : min(begin + config.batch_size, step.stop)])
                       for begin in range(step.start, step.stop, config.batch_size)]
        busy["model"] += time.perf_counter() - started
        advanced = advance(header, payload, gathered(method, phase, chunks), context, method, phase, rows, fit_on)
        busy.update(advanced.busy)
        step, rows = advanced.step, advanced.rows
        if advanced.quality is not None:
            payload = advanced.quality
    return rows

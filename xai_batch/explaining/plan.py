"""What comes next for one method on one image: the per-image plan, written once for every executor.

An image's explanation by one method goes: the model's outputs on its sample
rows (or one gradient pass), more rows while ``auto`` finds it unsettled, the
surrogate or solver and the rows, then, when the run measures quality, the
model's outputs on the rows the measures need and the measures. Which of these
comes next is decided here, by :func:`first_step` and :func:`advance`, as a
typed :data:`Step`; the executors only do what it says: the workers' on Ray
(CPU tasks call :func:`advance`, the replicas evaluate rows), the replica's in
one process (:func:`~xai_batch.explaining.whole.explain_whole`). So the rows
are the same whichever runs them.

Plain code: no Ray, no device, no files.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import numpy as np

from xai_batch.explaining.prepared import PreparedImage
from xai_batch.explaining.steps import ImageHeader, enough_samples, finish, quality_rows, score
from xai_batch.manifest.rows import RowContext
from xai_batch.maths.convergence import sample_schedule
from xai_batch.methods import GradientMethod, get_method

__all__ = ["Phase", "Outputs", "GradientPass", "Finished", "Step", "Advanced", "first_step", "advance",
           "gathered"]


class Phase(enum.Enum):
    """Whose outputs the model is asked for: the explanation's (its sample rows or gradient pass), or the
    quality measures' (:func:`~xai_batch.explaining.steps.quality_rows`)."""

    EXPLAIN = "explain"
    QUALITY = "quality"


@dataclass(frozen=True)
class Outputs:
    """Next: the model's outputs on rows [start, stop) of the phase's payload (the image's sample rows, or
    the quality measures' rows)."""

    phase: Phase
    start: int
    stop: int


@dataclass(frozen=True)
class GradientPass:
    """Next: the method's gradient pass on the image (a :class:`~xai_batch.methods.GradientMethod`)."""

    phase: Phase = Phase.EXPLAIN


@dataclass(frozen=True)
class Finished:
    """Nothing next: the method's rows on the image are final."""

    rows: int  # how many


Step = Outputs | GradientPass | Finished


@dataclass(frozen=True)
class Advanced:
    """What :func:`advance` decided: the next step, the rows so far and, when the quality measures' outputs
    come next, their payload."""

    step: Step
    rows: list[dict] | None = None  # the explanation's rows once fitted (final with ``Finished``)
    quality: PreparedImage | None = None  # with ``Outputs(Phase.QUALITY, ...)``: the rows to evaluate
    busy: dict[str, float] = field(default_factory=dict)  # seconds by step: "surrogate", "quality"


def _stops(drawn: int, context: RowContext) -> list[int]:
    """The sample counts the explanation may be fitted at: all ``drawn`` rows, or ``auto``'s rounds."""
    return sample_schedule(context.num_samples) if context.adaptive else [drawn]


def first_step(method: str, drawn: int, context: RowContext) -> Outputs | GradientPass:
    """The model work a method starts with on an image whose payload holds ``drawn`` sample rows."""
    if isinstance(get_method(method), GradientMethod):
        return GradientPass()
    return Outputs(Phase.EXPLAIN, 0, _stops(drawn, context)[0])


def advance(header: ImageHeader, payload: PreparedImage, outputs, context: RowContext, method: str, phase: Phase,
            rows: list[dict] | None = None, fit_on: str | None = None) -> Advanced:
    """What comes next, given the model's ``outputs`` so far in ``phase`` on ``payload`` (``combine``'s form).

    In the explanation's phase: more sample rows while ``auto`` finds the
    explanation unsettled; else its rows (``finish``, fitted on ``fit_on``,
    a device or None for lime's own code), then the quality measures' rows
    when the run measures quality. In the quality phase (``rows`` the
    explanation's): the rows with their measures.
    """
    started = time.perf_counter()
    if phase is Phase.QUALITY:
        scored = score(header, rows, payload, outputs, context, method, fit_on)
        return Advanced(Finished(len(scored)), scored, busy={"quality": time.perf_counter() - started})
    if not isinstance(get_method(method), GradientMethod) and not enough_samples(payload, outputs, context):
        done = len(outputs)
        stop = next(stop for stop in _stops(len(payload.rows), context) if stop > done)
        return Advanced(Outputs(Phase.EXPLAIN, done, stop), busy={"surrogate": time.perf_counter() - started})
    rows = finish(header, payload, outputs, context, method, fit_on)
    fitted = time.perf_counter()
    busy = {"surrogate": fitted - started}
    if context.measures_quality:
        extra = quality_rows(header, payload, rows, context, method)
        busy["quality"] = time.perf_counter() - fitted
        if len(extra.rows):  # Grad-CAM's stability has none: nothing to measure
            return Advanced(Outputs(Phase.QUALITY, 0, len(extra.rows)), rows, extra, busy)
    return Advanced(Finished(len(rows)), rows, busy=busy)


def gathered(method: str, phase: Phase, chunks: list) -> object:
    """The model's outputs, chunk by chunk, as :func:`advance` takes them: in the explanation's phase the
    method's ``combine`` (probabilities, or a gradient pass's maps), in the quality phase probabilities."""
    return get_method(method).combine(chunks) if phase is Phase.EXPLAIN else np.concatenate(chunks)

"""The workers' stage on Ray (``--stages workers``): every image through prepare, the model replicas and finish.

Three kinds of work run on Ray, pipelined: ``prepare`` tasks (decode, quickshift,
each method's sample rows) on CPUs; calls on the model replicas (one chunk of
``batch_size`` sample rows each for a perturbation method, so the chunks of a
single image spread over every replica; one gradient pass for a gradient
method); ``advance`` tasks on CPUs, which take the model's outputs and say
what comes next by the per-image plan (:mod:`xai_batch.explaining.plan`):
more samples, the quality measures' rows, or the final rows (surrogate or
solver, masks, measures). The driver only passes object references between them:
workers read the image bytes, image arrays go from the prepare task to the
replicas through Ray's object store, model outputs from the replicas to the
finish task, and rows from the finish task to a writer actor that writes the
part files. It bounds the work in flight, so memory stays flat however many
images a folder holds.

Failures are recovered: tasks whose worker dies are retried by Ray
(``TASK_RETRIES``); a replica that dies is replaced and its calls in flight
resent, the crash charged to the image that caused it. What still fails
becomes that image's error row; the job goes on.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter, deque
from dataclasses import dataclass

import ray
from tqdm import tqdm

from xai_batch.config import ExplainConfig
from xai_batch.errors import XaiBatchError, one_line
from xai_batch.images import decode_memory
from xai_batch.manifest import DoneIndex, RowContext, error_row
from xai_batch.manifest.lock import LeaseLost
from xai_batch.manifest.record import RunCounts
from xai_batch.distributed.calls import ReplicaCalls
from xai_batch.distributed.replicas import Replicas
from xai_batch.explaining.plan import Advanced, Finished, GradientPass, Outputs, Phase, advance, first_step, gathered
from xai_batch.explaining.prepared import PreparedImage
from xai_batch.explaining.steps import ImageHeader, prepare, unchanged_files
from xai_batch.sources import ImagePaths, PathQueue, image_root
from xai_batch.storage import locate

__all__ = ["FlowInputs", "ImageFlow", "Pipeline", "TASK_RETRIES", "decoding_memory", "describe_failure",
           "lost_lease"]

log = logging.getLogger(__name__)

STAT_PATHS = 1024  # files whose size and time one task checks against the manifest
STAT_CPUS = 0.25  # a stat task waits on the file system more than it computes
TASK_RETRIES = 2  # a task whose worker process dies runs at most 3 times


@dataclass
class _Image:
    """One method's work on an image, from the prepare task to its final rows."""

    method: str
    header: ImageHeader
    payload: ray.ObjectRef  # the phase's: the image's sample rows, then the quality measures'
    submitted: float
    chunks: list  # per chunk of the phase: the ref of its outputs once the replica answered, else None
    pending: int = 0
    crashes: int = 0
    phase: Phase = Phase.EXPLAIN
    rows: ray.ObjectRef | None = None  # the explanation's rows, while their quality is measured


@dataclass
class _Chunk:
    key: tuple[str, str]  # (path, method)
    index: int
    start: int
    stop: int
    gradient_method: str | None = None  # that gradient method's pass on the image instead of rows [start, stop)


@dataclass(frozen=True)
class FlowInputs:
    """What a run hands the driver of either stage: its config, the images to go through and what is
    already done (``reused``: of it, what was copied from another output), the model replicas, what every
    row carries, the writer actor, the progress bar, and the counts the driver keeps."""

    config: ExplainConfig
    paths: ImagePaths
    done: DoneIndex
    reused: DoneIndex
    replicas: Replicas
    context: RowContext
    writer: ray.actor.ActorHandle
    bar: tqdm
    counts: RunCounts


def decoding_memory(max_pixels: int) -> int:
    """The memory a decoding task reserves in Ray's scheduler: what an image within ``max_pixels`` may take.

    Ray then runs no more decodes on a node at once than its memory holds, as
    well as no more than its CPUs. Capped at the largest node's memory, so a
    big ``--max-pixels`` slows decoding to one at a time rather than leaving
    the task unschedulable.
    """
    largest = max((node["Resources"].get("memory", 0) for node in ray.nodes() if node["Alive"]), default=0)
    return max(1, int(min(decode_memory(max_pixels), largest)))


class ImageFlow:
    """What the drivers of both stages share: the job's inputs, the writer, the counts and the progress bar.

    ``busy`` sums the seconds by step the tasks report (the replicas count
    their own); ``skipped`` and ``counted`` are the two ends an image reaches.
    Rows go to the writer actor through ``write``, and ``check_writes``
    stops the run at the first write that failed (a full disk, say), so
    rows are never buffered after the manifest can no longer take them.
    """

    def __init__(self, inputs: FlowInputs) -> None:
        self.config = inputs.config
        self.todo = PathQueue(inputs.paths)
        self.done = inputs.done
        self.reused = inputs.reused
        self.replicas = inputs.replicas
        self.context = inputs.context
        self.context_ref = ray.put(inputs.context)
        self.writer = inputs.writer
        self.bar = inputs.bar
        self.counts = inputs.counts
        self.source = locate(image_root(inputs.config.source))
        self.busy: Counter[str] = Counter()
        self.writes: list[ray.ObjectRef] = []  # the writer's answers not yet checked

    def decoding_task(self, function, **options):
        """``function`` as the Ray task that decodes images: see :func:`decoding_memory`."""
        return ray.remote(memory=decoding_memory(self.config.max_pixels), max_retries=TASK_RETRIES, **options)(function)

    def write(self, rows, seconds=None, each: bool = False) -> None:
        """Send rows to the writer: one group (``seconds`` a float or None), or with ``each`` a list of
        groups and their seconds."""
        method = self.writer.add_each if each else self.writer.add
        self.writes.append(method.remote(rows, seconds))

    def check_writes(self) -> None:
        """Raise at the first write that failed; the parts written before it stay."""
        if not self.writes:
            return
        done, self.writes = ray.wait(self.writes, num_returns=len(self.writes), timeout=0)
        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as exc:
                raise lost_lease(exc) or XaiBatchError(f"writing the manifest failed: {describe_failure(exc)}") \
                    from None

    def header(self, ref: ray.ObjectRef, path: str) -> ImageHeader:
        """A decoding task's header (a failed task's as an error header), its seconds added to ``busy``."""
        try:
            header: ImageHeader = ray.get(ref)
        except ray.exceptions.RayError as exc:
            header = ImageHeader(path, error=f"decoding failed: {describe_failure(exc)}", methods=self.config.methods)
        self.busy.update(header.busy)
        return header

    def skipped(self, path: str, unread: bool = False) -> None:
        """An image whose every method is already in the manifest for its content (or was reused); ``unread``
        when that was decided on its size and modification time, without opening it."""
        self.counts.skipped += 1
        self.counts.unread += unread
        self.counts.reused += path in self.reused
        self.bar.update(1)

    def pass_over_unchanged(self) -> None:
        """Count as done, without reading them, the files the manifest holds whose size and modification time
        are unchanged; the rest stay to do. Checked ``STAT_PATHS`` files a task, so a nightly resume of a
        million unchanged images is a thousand small tasks, not a decoding task an image. Not with
        ``config.verify_content``, which reads every file."""
        if self.config.verify_content or not self.done:
            return
        check = ray.remote(num_cpus=STAT_CPUS)(unchanged_files)
        in_flight: dict[ray.ObjectRef, tuple[int, list[str]]] = {}
        kept: dict[int, list[str]] = {}
        limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))  # checks in flight
        number = 0
        while self.todo:
            chunk = [self.todo.popleft() for _ in range(min(STAT_PATHS, len(self.todo)))]
            number += 1
            candidates = [(path, done) for path in chunk if (done := self.done.get(path)) is not None]
            if not candidates:
                kept[number] = chunk
                continue
            if len(in_flight) >= limit:
                self._passed_over(in_flight, kept)
            in_flight[check.remote(self.source, candidates, self.config.methods)] = (number, chunk)
        while in_flight:
            self._passed_over(in_flight, kept)
        self.todo = PathQueue(path for number in sorted(kept) for path in kept[number])

    def _passed_over(self, in_flight: dict, kept: dict[int, list[str]]) -> None:
        """One finished check: its unchanged files counted done, the others kept to do in their order."""
        [ref], _ = ray.wait(list(in_flight), num_returns=1)
        number, chunk = in_flight.pop(ref)
        unchanged = set(ray.get(ref))
        for path in unchanged:
            self.skipped(path, unread=True)
        kept[number] = [path for path in chunk if path not in unchanged]

    def counted(self, ok: bool) -> None:
        """An image done, every method recorded: ``ok`` unless one of them failed."""
        if ok:
            self.counts.ok += 1
        else:
            self.counts.error += 1
        self.bar.update(1)
        if self.counts.error:
            self.bar.set_postfix(errors=self.counts.error, refresh=False)


class Pipeline(ImageFlow):
    """Moves every image through prepare → predict chunks → finish on Ray.

    Replica calls (scheduled by :class:`~xai_batch.distributed.calls.ReplicaCalls`)
    are retried here rather than by Ray, so that a crash is charged to the
    image that caused it: when a replica dies the oldest of its calls in
    flight was running and the others were only waiting. The waiting ones are
    resent free; an image whose chunk kills ``TASK_RETRIES + 1`` replicas becomes an
    error row, and the rest of the job is unaffected.

    The unit of work is an image and a method: the prepare task segments the
    image once and hands each method its own payload; an image is counted
    done when all its methods are, and as an error if any of them failed.
    """

    ran_on = "workers"
    settled = 0  # lime's own quickshift runs in the tasks: no pixel is settled

    @staticmethod
    def segmented_per_call() -> None:
        """Lime's own quickshift segments each image in its task: no image is segmented on a device."""
        return None

    def __init__(self, inputs: FlowInputs) -> None:
        super().__init__(inputs)
        config, replicas = inputs.config, inputs.replicas
        self.prepare_task = self.decoding_task(prepare, num_returns=1 + len(config.methods))
        self.advance_task = ray.remote(num_returns=3, max_retries=TASK_RETRIES)(_advance_from_chunks)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.max_images = max(2, 2 * len(replicas))  # prepared, awaiting model or surrogate
        self.max_preparing = max(1, cpus)
        self.preparing: dict[ray.ObjectRef, tuple[str, list[ray.ObjectRef], float]] = {}
        self.images: dict[tuple[str, str], _Image] = {}  # (path, method) -> its work in progress
        self.remaining: dict[str, int] = {}  # path -> methods not yet recorded
        self.failed: set[str] = set()  # paths with a method that failed
        self.chunk_queue: deque[_Chunk] = deque()
        self.calls: ReplicaCalls[tuple[_Chunk, ray.ObjectRef]] = ReplicaCalls(replicas)  # (chunk, its outputs)
        # advance tasks: their step -> (the image's key, their rows, their quality payload)
        self.advancing: dict[ray.ObjectRef, tuple[tuple[str, str], ray.ObjectRef, ray.ObjectRef]] = {}
        self.chunks_by_node: dict[str, int] = {}

    def by_node(self) -> dict:
        """For job.json: how many model calls each node's replicas answered."""
        return {"chunks_by_node": self.chunks_by_node}

    def run(self) -> None:
        self.pass_over_unchanged()
        while self.todo or self.preparing or self.remaining:
            self.check_writes()
            self._submit_prepares()
            self._dispatch_chunks()
            waiting = [*self.preparing, *self.calls, *self.advancing]
            ready, _ = ray.wait(waiting, num_returns=1)
            for ref in ready:
                if ref in self.preparing:
                    self._prepared(ref)
                elif ref in self.calls:
                    self._predicted(ref)
                elif ref in self.advancing:
                    self._advanced(ref)

    def _submit_prepares(self) -> None:
        while self.todo and len(self.preparing) < self.max_preparing and len(self.remaining) < self.max_images:
            path = self.todo.popleft()
            header_ref, *payload_refs = self.prepare_task.remote(
                self.source, path, self.config, self.context.preprocessing, self.done.get(path)
            )
            self.preparing[header_ref] = (path, payload_refs, time.monotonic())

    def _dispatch_chunks(self) -> None:
        while self.chunk_queue:
            replica = self.calls.free()
            if replica is None:
                return
            chunk = self.chunk_queue.popleft()
            if chunk.key not in self.images:  # the image failed meanwhile
                continue
            handle, payload = self.calls.handle(replica), self.images[chunk.key].payload
            if chunk.gradient_method:
                status, probs = handle.gradients.options(num_returns=2).remote(
                    chunk.gradient_method, payload, self.config.top_labels)
            else:
                status, probs = handle.predict.options(num_returns=2).remote(payload, chunk.start, chunk.stop)
            self.calls.sent(status, (chunk, probs), replica)

    def _prepared(self, ref: ray.ObjectRef) -> None:
        path, payloads, submitted = self.preparing.pop(ref)
        header = self.header(ref, path)
        if header.skipped:
            self.skipped(path)
            return
        self.remaining[path] = len(header.methods)
        for method in header.methods:
            if header.error is not None:
                self._record((path, method), [error_row(header, self.context, method)], ok=False)
                continue
            payload = payloads[self.config.methods.index(method)]
            drawn = header.drawn[header.methods.index(method)]
            self.images[path, method] = image = _Image(method, header, payload, submitted, [])
            self._queue((path, method), image, first_step(method, drawn, self.context))

    def _queue(self, key: tuple[str, str], image: _Image, step: Outputs | GradientPass) -> None:
        """Queue the model work the plan's ``step`` asks for: a gradient pass (the replica's ``gradients``),
        or the phase payload's rows [start, stop) in chunks of ``batch_size`` (the replica's ``predict``)."""
        if isinstance(step, GradientPass):
            self.chunk_queue.append(_Chunk(key, 0, 0, 0, gradient_method=image.method))
            image.chunks.append(None)
            image.pending += 1
            return
        for begin in range(step.start, step.stop, self.config.batch_size):
            stop = min(begin + self.config.batch_size, step.stop)
            self.chunk_queue.append(_Chunk(key, len(image.chunks), begin, stop))
            image.chunks.append(None)
            image.pending += 1

    def _predicted(self, ref: ray.ObjectRef) -> None:
        replica = self.calls.replica(ref)
        try:
            ray.get(ref)  # the row count: small, unlike the probabilities
        except ray.exceptions.RayActorError:
            self._replica_died(replica)
            return
        except ray.exceptions.RayError as exc:
            chunk, _ = self.calls.answered(ref)
            self._fail(chunk.key, f"explaining failed: {describe_failure(exc)}")
            return
        chunk, probs = self.calls.answered(ref)
        node = self.calls.node(replica)
        self.chunks_by_node[node] = self.chunks_by_node.get(node, 0) + 1
        image = self.images.get(chunk.key)
        if image is None:  # the image failed meanwhile
            return
        image.chunks[chunk.index] = probs
        image.pending -= 1
        if image.pending == 0:
            step, rows, quality = self.advance_task.remote(image.header, image.payload, self.context_ref,
                                                           image.method, image.phase, image.rows, *image.chunks)
            self.advancing[step] = (chunk.key, rows, quality)

    def _replica_died(self, replica: int) -> None:
        """Replace the replica, resend its calls, charge the one it was running."""
        chunks = [chunk for chunk, _ in self.calls.lost(replica)]
        culprit = self.images.get(chunks[0].key)
        if culprit is not None:
            culprit.crashes += 1
            log.warning("a model replica died while explaining %s (%d)", chunks[0].key[0], culprit.crashes)
            if culprit.crashes > TASK_RETRIES:
                self._fail(chunks[0].key, f"explaining failed: the model replica died {culprit.crashes} times on this image")
        self.chunk_queue.extendleft(reversed([c for c in chunks if c.key in self.images]))

    def _fail(self, key: tuple[str, str], reason: str) -> None:
        image = self.images.pop(key, None)
        if image is not None:
            self._record(key, [error_row(image.header, self.context, image.method, reason)], ok=False)

    def _advanced(self, ref: ray.ObjectRef) -> None:
        """An advance task's step: queue the model work it asks for, or record the final rows."""
        key, rows, quality = self.advancing.pop(ref)
        image = self.images[key]
        try:
            step, busy = ray.get(ref)  # the rows go from the task to the writer, not through here
        except ray.exceptions.RayError as exc:
            self._fail(key, f"explaining failed: {describe_failure(exc)}")
            return
        self.busy.update(busy)
        if isinstance(step, Finished):
            del self.images[key]
            self._record(key, rows, ok=True, seconds=time.monotonic() - image.submitted)
            return
        if step.phase is not image.phase:  # explained; now the model's outputs on the quality measures' rows
            image.phase, image.rows, image.payload, image.chunks = step.phase, rows, quality, []
        self._queue(key, image, step)

    def _record(
        self, key: tuple[str, str], rows: list[dict] | ray.ObjectRef, ok: bool, seconds: float | None = None
    ) -> None:
        """Send one method's rows to the writer; count the image once all its methods are recorded."""
        self.write(rows, seconds)
        path = key[0]
        if not ok:
            self.failed.add(path)
        self.remaining[path] -= 1
        if self.remaining[path]:
            return
        del self.remaining[path]
        self.counted(ok=path not in self.failed)
        self.failed.discard(path)


def _advance_from_chunks(
    header: ImageHeader, payload: PreparedImage, context: RowContext, method: str, phase: Phase,
    rows: list[dict] | None, *chunks,
) -> tuple[tuple[Outputs | Finished, dict], list[dict] | None, PreparedImage | None]:
    """The plan's :func:`~xai_batch.explaining.plan.advance` on the chunks' outputs, which Ray hands over as
    arguments, with lime's own code for the fits.

    Returns ((next step, seconds by step), rows, quality payload) as three
    objects: the driver waits on the step, the writer (or the next advance)
    takes the rows, the replicas the quality payload.
    """
    advanced: Advanced = advance(header, payload, gathered(method, phase, list(chunks)), context, method, phase,
                                 rows)
    return (advanced.step, advanced.busy), advanced.rows, advanced.quality


def lost_lease(exc: ray.exceptions.RayError) -> LeaseLost | None:
    """The :class:`~xai_batch.manifest.lock.LeaseLost` a writer's failure was, if it was that."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, LeaseLost) else None


def load_failure(exc: ray.exceptions.RayError) -> str:
    """Why a replica could not be made, in one line; a function or network whose module Ray's workers cannot
    import says what to do."""
    missing = re.search(r"No module named '([^']+)'", str(exc))
    if missing:
        return (f"its module {missing.group(1)!r} cannot be imported by Ray's workers: define it in the notebook "
                "or script itself, or install its module where the workers run")
    return describe_failure(exc)


def describe_failure(exc: BaseException) -> str:
    """A Ray failure as one line a person understands."""
    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        return "out of memory"
    if isinstance(exc, ray.exceptions.WorkerCrashedError):
        return f"the worker process died {TASK_RETRIES + 1} times on this image"
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return one_line(f"{type(cause).__name__}: {cause}", keep="last")
    return one_line(exc, keep="last")

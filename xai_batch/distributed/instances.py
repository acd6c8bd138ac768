"""Images held in memory explained on the model replicas: the executor behind ``explain_instances``.

Each image goes through a ``prepare`` task (lime's segmentation and sample
rows, :func:`~xai_batch.explaining.instances.prepare_instance`), calls on
the replicas (``ROWS_PER_CALL`` sample rows a call, the user's
``classifier_fn`` on its ``batch_size`` of their perturbed images at a time,
the calls of one image spread over every replica), and a
``fit`` task (lime's own fit, :func:`~xai_batch.explaining.instances.lime_explanation`).
The driver passes object references between them and bounds the images in
flight; only the finished explanations come back to it. Replica calls are
scheduled by :class:`~xai_batch.distributed.calls.ReplicaCalls`: a replica
that dies is replaced and its calls resent, and an image whose call kills
``TASK_RETRIES + 1`` replicas stops the call with an error naming it, as
does an image whose function, segmentation or fit raises.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import ray

from xai_batch.distributed.calls import ReplicaCalls
from xai_batch.distributed.cluster import connected
from xai_batch.distributed.pipeline import TASK_RETRIES, describe_failure, load_failure
from xai_batch.distributed.replicas import Replicas
from xai_batch.engines.function_engine import ClassifierFunction
from xai_batch.errors import XaiBatchError
from xai_batch.model_objects import shipped_bytes
from xai_batch.explaining.instances import InstanceRecipe, lime_explanation, prepare_instance

__all__ = ["explain_on_replicas", "ROWS_PER_CALL", "CPU_REPLICAS"]

ROWS_PER_CALL = 128  # sample rows a replica call takes (the function sees them in its own batches)
# Copies of the function on a cluster without GPUs: one per core, up to this many, each on its share of the
# cores. On 2 cores two one-thread copies of the seeds' ResNet18 function answered 23.6 images/s against one
# two-thread copy's 19.0, and 16.7 against 7.5 while a segmentation ran beside them: a torch thread that
# spins waiting for its partner loses the core to the segmentation (BENCHMARKS.md, issue 33).
CPU_REPLICAS = 4


def explain_on_replicas(
    images: Sequence[np.ndarray], seeds: Sequence[int], function: ClassifierFunction, recipe: InstanceRecipe,
    replicas: int | None = None, address: str | None = None, bar=None,
) -> list:
    """lime's ``ImageExplanation`` of each image, in order, its seed the one given beside it.

    Runs on the Ray this process is connected to, else on ``address``, else
    on a local Ray started for the call and stopped after it (quietly: the
    workers' logs stay out of a notebook's cell). ``replicas`` is how many
    copies of the function run (default: one per GPU; without GPUs one per
    core, at most ``CPU_REPLICAS``). ``bar``, a tqdm bar, is advanced as each
    image is explained.
    """
    shipped_bytes("classifier_fn", function.fn)
    for name in ("segmentation_fn", "kernel", "model_regressor"):
        if getattr(recipe, name) is not None:
            shipped_bytes(name, getattr(recipe, name))
    with connected(address, quiet=True):
        function_ref = ray.put(function)
        flow = _Instances(images, seeds, recipe, max(ROWS_PER_CALL, function.batch_size or 0), bar)
        try:
            flow.prepare_next()  # the first images are segmented while the replicas load the function
            try:
                fleet = Replicas(replicas or _default_replicas(), function_ref, "fp32", ROWS_PER_CALL,
                                 f"xai-batch-instances-{uuid.uuid4().hex[:8]}")
            except ray.exceptions.RayError as exc:
                raise XaiBatchError(f"the model replicas could not load classifier_fn: {load_failure(exc)}") \
                    from None
            try:
                return flow.run(fleet)
            finally:
                fleet.shutdown()
        finally:
            flow.cancel()


def _default_replicas() -> int | None:
    """None (one per GPU) where the cluster has GPUs; else one per core, at most ``CPU_REPLICAS``."""
    resources = ray.cluster_resources()
    if resources.get("GPU"):
        return None
    return max(1, min(CPU_REPLICAS, int(resources.get("CPU", 1))))


@dataclass
class _Image:
    """One image's work in flight: its prepared payload, then its replicas' answers, chunk by chunk."""

    prepared: ray.ObjectRef
    answers: list = field(default_factory=list)  # per chunk: the ref of the replica's answer, else None
    pending: int = 0
    crashes: int = 0


class _Instances:
    def __init__(self, images, seeds, recipe: InstanceRecipe, rows_per_call: int, bar) -> None:
        self.images, self.seeds, self.bar = images, seeds, bar
        self.recipe_ref = ray.put(recipe)
        self.num_samples = recipe.num_samples
        self.rows_per_call = rows_per_call
        self.prepare = ray.remote(max_retries=TASK_RETRIES)(prepare_instance)
        self.fit = ray.remote(max_retries=TASK_RETRIES)(_fit)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.max_preparing = max(1, cpus)
        self.max_open = self.max_preparing  # prepared, awaiting the model or the fit; more once replicas run
        self.todo = deque(range(len(images)))
        self.preparing: dict[ray.ObjectRef, int] = {}
        self.open: dict[int, _Image] = {}
        self.chunks: deque[tuple[int, int]] = deque()  # (image, chunk) to send
        self.calls: ReplicaCalls[tuple[int, int, ray.ObjectRef]] | None = None
        self.fitting: dict[ray.ObjectRef, int] = {}
        self.results: list = [None] * len(images)

    def prepare_next(self) -> None:
        """Start segmenting the next images, as many at once as there are CPUs (the first before any replica is up)."""
        while self.todo and len(self.preparing) < self.max_preparing and len(self.open) < self.max_open:
            index = self.todo.popleft()
            ref = self.prepare.remote(self.images[index], self.seeds[index], self.recipe_ref)
            self.preparing[ref] = index
            self.open[index] = _Image(ref)

    def run(self, replicas: Replicas) -> list:
        """Every image explained on ``replicas``: the results, in order."""
        self.calls = ReplicaCalls(replicas)
        self.max_open = max(2, 2 * len(replicas)) + self.max_preparing
        while self.todo or self.preparing or self.chunks or self.calls or self.fitting:
            self.prepare_next()
            self._send()
            [ready], _ = ray.wait([*self.preparing, *self.calls, *self.fitting], num_returns=1)
            if ready in self.preparing:
                self._prepared(ready)
            elif ready in self.fitting:
                self._fitted(ready)
            else:
                self._answered(ready)
        return self.results

    def cancel(self) -> None:
        """Stop the tasks still running (after an error or Ctrl-C; nothing when the call finished).

        Their workers are killed (``force``), not interrupted: a task interrupted while its worker
        imported a module (scipy's ndimage, on a fresh worker) left that worker with half the module,
        and every later call's task there failed with a ``NameError`` from inside scipy."""
        for ref in [*self.preparing, *self.fitting]:
            ray.cancel(ref, force=True)

    def _prepared(self, ref: ray.ObjectRef) -> None:
        index = self.preparing.pop(ref)
        self._get(ref, index, "segmenting it failed")  # raises here, with the image's name, if it failed
        calls = -(-self.num_samples // self.rows_per_call)
        image = self.open[index]
        image.answers, image.pending = [None] * calls, calls
        self.chunks.extend((index, chunk) for chunk in range(calls))

    def _send(self) -> None:
        while self.chunks and (replica := self.calls.free()) is not None:
            index, chunk = self.chunks.popleft()
            start = chunk * self.rows_per_call
            stop = min(start + self.rows_per_call, self.num_samples)
            count, answer = self.calls.handle(replica).predict.options(num_returns=2).remote(
                self.open[index].prepared, start, stop)
            self.calls.sent(count, (index, chunk, answer), replica)

    def _answered(self, ref: ray.ObjectRef) -> None:
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError:  # the replica died: its calls go again, the running one blamed
            running = self.calls.work(ref)[0]
            try:
                lost = self.calls.lost(self.calls.replica(ref))
            except ray.exceptions.RayError as exc:
                raise XaiBatchError(f"image {running}: a model replica died on it and could not be replaced: "
                                    f"{describe_failure(exc)}") from None
            if lost:
                index = lost[0][0]
                self.open[index].crashes += 1
                if self.open[index].crashes > TASK_RETRIES:
                    raise XaiBatchError(f"image {index}: the model replica died {TASK_RETRIES + 1} times on it") \
                        from None
            self.chunks.extendleft(reversed([(index, chunk) for index, chunk, _ in lost]))
            return
        except ray.exceptions.RayError as exc:
            index = self.calls.answered(ref)[0]
            raise XaiBatchError(f"image {index}: classifier_fn failed: {describe_failure(exc)}") from None
        index, chunk, answer = self.calls.answered(ref)
        image = self.open[index]
        image.answers[chunk] = answer
        image.pending -= 1
        if not image.pending:
            self.fitting[self.fit.remote(image.prepared, self.seeds[index], self.recipe_ref, *image.answers)] = index

    def _fitted(self, ref: ray.ObjectRef) -> None:
        index = self.fitting.pop(ref)
        self.results[index] = self._get(ref, index, "lime's fit failed")
        del self.open[index]
        if self.bar is not None:
            self.bar.update(1)

    @staticmethod
    def _get(ref: ray.ObjectRef, index: int, what: str):
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise XaiBatchError(f"image {index}: {what}: {describe_failure(exc)}") from None


def _fit(prepared, seed: int, recipe: InstanceRecipe, *answers: np.ndarray):
    """The fit task: the replicas' answers arrive as separate arguments, so Ray hands over their values."""
    return lime_explanation(prepared, answers, seed, recipe)

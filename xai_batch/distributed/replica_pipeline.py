"""The replica's stage on Ray: CPU tasks decode, the model replicas explain whole images.

With ``--stages replica`` the only CPU tasks are ``decode`` (read, hash,
decode: :func:`~xai_batch.explaining.steps.decode`, and for a GPU replica
quickshift's Lab conversion, its CPU part); every later step of an image
(quickshift, sampling, the model, the surrogate, masks, quality) runs in a
model replica through :func:`~xai_batch.explaining.whole.explain_whole`,
lime's maths on its device where that is CUDA. The driver sends each
replica up to :func:`images_per_call` decoded images a call (a GPU's
quickshift costs the same launches for one image as for 32) and keeps
``CALLS_PER_REPLICA`` calls in flight on each, so neither Ray's hand-offs nor
the Python between images leave the device idle; the replica's rows go from
it to the writer actor without passing through the driver. The images held
(decoding, decoded, in calls) are bounded, so memory stays flat.

Failures are recovered as in the workers' stage: decode tasks are retried by
Ray, a replica that dies is replaced and its calls resent. Which image of the
call it was running killed it is not known, so each of them is charged the
crash and resent in a call of its own; the calls only waiting behind it are
resent free. An image charged ``TASK_RETRIES + 1`` crashes becomes an error
row (an innocent one is charged at most once, in company), and the rest of
the job is unaffected.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass

import ray

from xai_batch.distributed.calls import CALLS_PER_REPLICA, ReplicaCalls
from xai_batch.distributed.pipeline import TASK_RETRIES, FlowInputs, ImageFlow, describe_failure
from xai_batch.explaining.steps import ImageHeader, decode
from xai_batch.explaining.whole import maths_on_device
from xai_batch.manifest import error_row
from xai_batch.maths.device_superpixels import memory_per_image
from xai_batch.maths.superpixels import Quickshift

__all__ = ["ReplicaPipeline", "images_per_call"]

log = logging.getLogger(__name__)

IMAGES_PER_CPU_CALL = 4  # enough to keep a CPU replica's calls overlapping the decodes
MAX_IMAGES_PER_DEVICE_CALL = 64  # quickshift's ~1,900 launches a call: ~60 an image at 32, ~30 at 64
DEVICE_MEMORY_SHARE = 0.25  # of a GPU's memory, what a call's quickshift may take; the model keeps the rest


def images_per_call(placement: list[dict], crop: int, params: Quickshift) -> int:
    """The images the driver sends a replica in one call.

    Where the replicas segment on their device (CUDA), as many as a quarter
    of the smallest GPU's memory holds at ``crop`` (``memory_per_image``), up
    to ``MAX_IMAGES_PER_DEVICE_CALL`` and at least one, so quickshift's fixed
    cost a call is shared by many while its memory stays within that quarter:
    at 224x224 (120 MB an image) 64 on a GPU of 32 GB or more, 35 on 16 GB; at
    the largest crop, 1024x1024 (2.5 GB an image), 8 on 80 GB. Elsewhere
    ``IMAGES_PER_CPU_CALL``.
    """
    if not all(maths_on_device(placed["device"]) for placed in placement):
        return IMAGES_PER_CPU_CALL
    memory = min(placed.get("device_memory") or 0 for placed in placement)
    fits = int(memory * DEVICE_MEMORY_SHARE // memory_per_image(crop, crop, params))
    return max(1, min(fits, MAX_IMAGES_PER_DEVICE_CALL))


@dataclass
class _Call:
    """One call's images, (header, ref of the decoded image); once sent, its rows' ref."""

    images: list[tuple[ImageHeader, ray.ObjectRef]]
    rows: ray.ObjectRef | None = None


class ReplicaPipeline(ImageFlow):
    """Moves every image through a decode task and a whole-image call on a replica."""

    ran_on = "replica"

    def __init__(self, inputs: FlowInputs) -> None:
        super().__init__(inputs)
        config, replicas = inputs.config, inputs.replicas
        self.config_ref = ray.put(config)
        self.decode_task = self.decoding_task(decode, num_returns=2)
        self.max_decoding = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.per_call = images_per_call(replicas.placement, self.context.preprocessing.crop, config.segmentation)
        self.lab = all(maths_on_device(placed["device"]) for placed in replicas.placement)  # the decoding tasks
        self.max_images = self.per_call * (CALLS_PER_REPLICA * len(replicas) + 1)
        self.decoding: dict[ray.ObjectRef, tuple[str, ray.ObjectRef]] = {}  # header -> (path, decoded image)
        self.decoded: deque[tuple[ImageHeader, ray.ObjectRef]] = deque()  # waiting for a call
        self.resend: deque[_Call] = deque()  # calls lost with a replica, to send again first
        self.calls: ReplicaCalls[_Call] = ReplicaCalls(replicas)  # outcomes -> its call
        self.submitted: dict[str, float] = {}  # path -> when its decode task was sent
        self.crashes: Counter[str] = Counter()  # path -> replicas that died while explaining it
        self.settled = 0  # pixels whose quickshift parent a replica settled on the CPU
        self.device_calls = 0  # calls whose images a replica segmented together on its device
        self.device_images = 0  # and those images
        self.images_by_node: dict[str, int] = {}

    def by_node(self) -> dict:
        """For job.json: how many images each node's replicas explained."""
        return {"images_by_node": self.images_by_node}

    def segmented_per_call(self) -> float | None:
        """For job.json: the mean number of images a replica segmented in one device call; None where none
        did (on a CPU, lime's own quickshift segments them one by one)."""
        return round(self.device_images / self.device_calls, 2) if self.device_calls else None

    def run(self) -> None:
        self.pass_over_unchanged()
        while self.todo or self.decoding or self.decoded or self.resend or self.calls:
            self.check_writes()
            self._submit_decodes()
            self._dispatch()
            ready, _ = ray.wait([*self.decoding, *self.calls], num_returns=1)
            for ref in ready:
                if ref in self.decoding:
                    self._decoded(ref)
                else:
                    self._explained(ref)

    def _held(self) -> int:
        in_calls = sum(len(call.images) for call in [*self.calls.works(), *self.resend])
        return len(self.decoding) + len(self.decoded) + in_calls

    def _submit_decodes(self) -> None:
        while self.todo and len(self.decoding) < self.max_decoding and self._held() < self.max_images:
            path = self.todo.popleft()
            header, decoded = self.decode_task.remote(self.source, path, self.config, self.context.preprocessing,
                                                      self.done.get(path), self.lab)
            self.decoding[header] = (path, decoded)
            self.submitted[path] = time.monotonic()

    def _dispatch(self) -> None:
        """Fill every replica to ``CALLS_PER_REPLICA`` calls: an idle one takes what is decoded, a busy
        one a full call (or the last images)."""
        while self.resend or self.decoded:
            replica = self.calls.free()
            if replica is None:
                return
            if self.resend:
                call = self.resend.popleft()
            elif (len(self.decoded) >= self.per_call or self.calls.idle(replica)
                  or not (self.todo or self.decoding)):
                call = _Call([self.decoded.popleft() for _ in range(min(self.per_call, len(self.decoded)))])
            else:
                return
            headers = [header for header, _ in call.images]
            outcomes, call.rows = self.calls.handle(replica).explain.options(num_returns=2).remote(
                self.config_ref, self.context_ref, headers, *(image for _, image in call.images))
            self.calls.sent(outcomes, call, replica)

    def _decoded(self, ref: ray.ObjectRef) -> None:
        path, image = self.decoding.pop(ref)
        header = self.header(ref, path)
        if header.skipped:
            del self.submitted[path]
            self.skipped(path)
        elif header.error is not None:
            self.write([error_row(header, self.context, method) for method in header.methods])
            self._count(path, ok=False)
        else:
            self.decoded.append((header, image))

    def _explained(self, ref: ray.ObjectRef) -> None:
        replica = self.calls.replica(ref)
        try:
            outcomes, settled, segmented = ray.get(ref)  # the rows go from the replica to the writer, not through here
        except ray.exceptions.RayActorError:
            self._replica_died(replica)
            return
        except ray.exceptions.RayError as exc:
            self._fail(self.calls.answered(ref), f"explaining failed: {describe_failure(exc)}")
            return
        call = self.calls.answered(ref)
        self.settled += settled
        if segmented:
            self.device_calls += 1
            self.device_images += segmented
        now = time.monotonic()
        self.write(call.rows, [now - self.submitted[path] if ok else None for path, _, ok in outcomes], each=True)
        failed = {path for path, _, ok in outcomes if not ok}
        for header, _ in call.images:
            self._count(header.path, ok=header.path not in failed)
        node = self.calls.node(replica)
        self.images_by_node[node] = self.images_by_node.get(node, 0) + len(call.images)

    def _replica_died(self, replica: int) -> None:
        """Replace the replica and resend its calls: the oldest was running, the others only waiting."""
        running, *waiting = self.calls.lost(replica)
        again = []
        for image in running.images:  # any of them may have killed it: each is charged, and resent alone
            path = image[0].path
            self.crashes[path] += 1
            log.warning("a model replica died while explaining %s (%d)", path, self.crashes[path])
            if self.crashes[path] > TASK_RETRIES:
                self._fail(_Call([image]), f"explaining failed: the model replica died {self.crashes[path]} times "
                                           "on this image")
            else:
                again.append(_Call([image]))
        self.resend.extendleft(reversed([*again, *(_Call(call.images) for call in waiting)]))

    def _fail(self, call: _Call, reason: str) -> None:
        """Every image of the call as error rows, one per method."""
        for header, _ in call.images:
            self.write([error_row(header, self.context, method, reason) for method in header.methods])
            self._count(header.path, ok=False)

    def _count(self, path: str, ok: bool) -> None:
        self.submitted.pop(path, None)
        self.counted(ok)

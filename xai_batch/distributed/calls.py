"""Calls on the model replicas, scheduled one way for both executors.

Both executors send work to the replicas as actor calls: chunks of sample
rows and gradient passes (``--stages workers``), calls of decoded images
(``--stages replica``). :class:`ReplicaCalls` decides which replica takes the
next call (the least loaded, each holding at most ``CALLS_PER_REPLICA``: one
running and one queued, so a replica never waits on the driver), keeps what
is in flight where, and, when a replica dies, replaces it and hands back what
it lost in the order it would have run them. What to resend and whom to
blame is the executor's to say, as only it knows what its work is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

import ray

__all__ = ["ReplicaCalls", "CALLS_PER_REPLICA"]

CALLS_PER_REPLICA = 2  # one running, one queued: a replica never waits on the driver

Work = TypeVar("Work")


class ReplicaCalls(Generic[Work]):
    """The calls in flight on each of ``replicas`` (a :class:`~xai_batch.distributed.replicas.Replicas`), each
    known by the reference the driver waits on and carrying the executor's ``Work``."""

    def __init__(self, replicas) -> None:
        self.replicas = replicas
        self._queues: list[list[ray.ObjectRef]] = [[] for _ in range(len(replicas))]  # per replica, oldest first
        self._calls: dict[ray.ObjectRef, tuple[Work, int]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, ref: object) -> bool:
        return ref in self._calls

    def __iter__(self) -> Iterator[ray.ObjectRef]:
        return iter(self._calls)

    def works(self) -> Iterator[Work]:
        """The work of every call in flight."""
        return (work for work, _ in self._calls.values())

    def free(self) -> int | None:
        """The replica that takes the next call: the one with the fewest calls in flight, if it has room."""
        replica = min(range(len(self._queues)), key=lambda r: len(self._queues[r]))
        return replica if len(self._queues[replica]) < CALLS_PER_REPLICA else None

    def idle(self, replica: int) -> bool:
        """Whether ``replica`` has no call in flight."""
        return not self._queues[replica]

    def handle(self, replica: int):
        """The actor handle of ``replica``, to send it a call."""
        return self.replicas.handles[replica]

    def sent(self, ref: ray.ObjectRef, work: Work, replica: int) -> None:
        """Record a call just sent to ``replica``: ``ref`` is what the driver waits on."""
        self._calls[ref] = (work, replica)
        self._queues[replica].append(ref)

    def work(self, ref: ray.ObjectRef) -> Work:
        """The work of the call ``ref``, still in flight."""
        return self._calls[ref][0]

    def replica(self, ref: ray.ObjectRef) -> int:
        """Which replica the call ``ref`` went to."""
        return self._calls[ref][1]

    def answered(self, ref: ray.ObjectRef) -> Work:
        """Forget the call ``ref`` (answered, or failed on its own): its work."""
        work, replica = self._calls.pop(ref)
        self._queues[replica].remove(ref)
        return work

    def node(self, replica: int) -> str:
        """The Ray node ``replica`` runs on."""
        return self.replicas.placement[replica]["node_id"]

    def lost(self, replica: int) -> list[Work]:
        """``replica`` died: start another in its place, and return the work of its calls, the one it was
        running first (it runs them in the order sent), the ones only waiting after."""
        lost = [self._calls.pop(ref)[0] for ref in self._queues[replica]]
        self._queues[replica] = []
        self.replicas.replace(replica)
        return lost

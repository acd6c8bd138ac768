"""Model replicas: long-lived Ray actors that each hold one loaded engine."""

from __future__ import annotations

import ray

__all__ = ["ModelReplica", "start_replicas"]


class ModelReplica:
    """Loads the model once, then evaluates chunks of perturbations.

    Usable without Ray (construct it and call ``predict``) and as a Ray actor
    (``ray.remote(ModelReplica)``); the job driver does the latter.
    """

    def __init__(self, checkpoint_bytes: bytes, precision: str, batch_size: int) -> None:
        from xai_batch.engine import TorchEngine

        self.engine = TorchEngine(checkpoint_bytes, precision=precision, batch_size=batch_size)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def set_threads(self, threads: int) -> None:
        """CPU threads for the model; Ray would otherwise pin each actor to one."""
        import torch

        torch.set_num_threads(threads)

    def device(self) -> str:
        return str(self.engine.device)

    def predict(self, prepared, start: int, stop: int):
        """Probabilities (stop - start, C) for sample rows [start, stop) of one image."""
        return self.engine.predict(prepared.image, prepared.hidden, prepared.segments, prepared.rows[start:stop])


def start_replicas(count: int | None, checkpoint_ref: ray.ObjectRef, precision: str, batch_size: int) -> list:
    """Start the replicas: one per GPU by default, else one; each told its thread count.

    GPU replicas ask for a whole GPU (a share of one when there are more
    replicas than GPUs). CPU replicas reserve at most one CPU each and leave at
    least one for the segmentation tasks, so neither stage can starve the other.
    """
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = resources.get("CPU", 1.0)
    count = count or max(gpus, 1)
    if gpus:
        options = {"num_gpus": min(1.0, gpus / count), "num_cpus": min(1.0, max(cpus - 1, 0) / count)}
    else:
        options = {"num_gpus": 0, "num_cpus": min(1.0, max(cpus - 1, 0) / count)}
    actor_class = ray.remote(ModelReplica)
    replicas = [actor_class.options(**options).remote(checkpoint_ref, precision, batch_size) for _ in range(count)]
    node_ids = ray.get([replica.node_id.remote() for replica in replicas])
    node_cpus = {node["NodeID"]: node["Resources"].get("CPU", 1.0) for node in ray.nodes() if node["Alive"]}
    per_node = {node: node_ids.count(node) for node in set(node_ids)}
    ray.get(
        [
            replica.set_threads.remote(max(1, int(node_cpus.get(node, 1) // per_node[node])))
            for replica, node in zip(replicas, node_ids)
        ]
    )
    return replicas

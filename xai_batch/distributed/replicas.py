"""Model replicas: long-lived Ray actors that each hold one loaded engine.

A replica imports what its engine needs and no more: one that runs an
ONNX model (the CPU default) loads neither torch nor the manifest's
readers, so it starts in about a second; the explaining steps and the
gradient methods are imported when a call first needs them.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter

import ray

from xai_batch.engines.function_engine import ClassifierFunction
from xai_batch.engines.onnx_engine import OnnxModel

__all__ = ["ModelReplica", "Replicas"]


class ModelReplica:
    """Loads the model once, then does the model work of every method, or whole explanations.

    In the workers' stage ``predict`` evaluates a chunk of a perturbation
    method's sample rows and ``gradients`` runs a gradient method's pass on
    an image; in the replica's stage ``explain`` does everything after
    decoding for a batch of images, on the replica's device. ``busy`` says
    how much of its time since it loaded went to each step of that work:
    the rest it waited for work.

    Usable without Ray (construct it and call ``predict``) and as a Ray actor
    (``ray.remote(ModelReplica)``); the job driver does the latter.
    """

    def __init__(self, model, precision: str, batch_size: int, threads: int, layer: str | None = None) -> None:
        """``model`` is what the driver ships, having chosen the engine (:func:`~xai_batch.engines.replica_model`):
        an ONNX model for ONNX Runtime, else the checkpoint's bytes (checked by the driver, parsed here
        once) or a network object for PyTorch, or a user's ``classifier_fn``, which then answers for the
        model (no gradient passes)."""
        self.threads = threads
        self._network = None  # what gradient passes are built from: the parsed checkpoint, on first use
        if isinstance(model, OnnxModel):
            from xai_batch.engines.onnx_engine import OnnxEngine

            self.engine = OnnxEngine(model, batch_size=batch_size, threads=threads)
            self._shipped = model.network
        else:
            import torch

            torch.set_num_threads(threads)  # Ray would otherwise leave one thread per CPU it reserved
            if isinstance(model, ClassifierFunction):
                from xai_batch.engines.function_engine import FunctionEngine

                self._shipped = None
                self.engine = FunctionEngine(model)
            else:
                from xai_batch.engines.torch_engine import TorchEngine

                self._shipped = model
                self.engine = TorchEngine(self._checkpoint(), precision=precision, batch_size=batch_size)
        self._gradient_passes: dict = {}  # method -> its gradient pass, built on first use
        self._layer = layer  # the layer gradient passes explain (--target-layer); None: the family's
        self._loaded = time.monotonic()
        self._busy: Counter[str] = Counter()  # seconds by step
        self._working = 0.0

    def _checkpoint(self):
        """The shipped network as a parsed checkpoint (``LoadedCheckpoint``), parsed once."""
        if self._network is None:
            from xai_batch.models import NetworkObject, parse_checkpoint

            shipped = self._shipped
            self._network = shipped.loaded() if isinstance(shipped, NetworkObject) else \
                parse_checkpoint(shipped, check=False)
        return self._network

    def describe(self) -> dict:
        """Where this replica runs: device (and a GPU's memory, in bytes), node, process, threads."""
        device = str(self.engine.device)
        memory = None
        if device.startswith("cuda"):
            import torch

            memory = torch.cuda.get_device_properties(device).total_memory
        return {
            "device": device,
            "device_memory": memory,
            "engine": self.engine.version,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "threads": self.threads,
        }

    def predict(self, prepared, start: int, stop: int):
        """(row count, probabilities (stop - start, C)) for sample rows [start, stop).

        Called with ``num_returns=2``: the driver waits on the tiny count and
        hands the probabilities to the surrogate task without fetching them.
        """
        started = time.monotonic()
        probs = self._predict(prepared, prepared.rows[start:stop])
        self._worked({"model": time.monotonic() - started}, started)
        return len(probs), probs

    def gradients(self, method: str, prepared, top_labels: int):
        """(1, GradientOutputs): ``method``'s gradient pass on the image (a :class:`GradientMethod`)."""
        started = time.monotonic()
        outputs = self._gradients(method, prepared, top_labels)
        self._worked({"model": time.monotonic() - started}, started)
        return 1, outputs

    def explain(self, config, context, headers, *decoded):
        """((outcomes, pixels settled, images segmented together on the device), rows per image and method):
        decoded images explained whole (:func:`~xai_batch.explaining.whole.explain_whole`).

        Called with ``num_returns=2``: the driver waits on the outcomes and
        hands the rows to the writer without fetching them.
        """
        from xai_batch.explaining.whole import explain_whole

        started = time.monotonic()
        done = explain_whole(list(zip(headers, decoded)), config, context, self._predict, self._gradients,
                             str(self.engine.device))
        self._worked(done.busy, started)
        return (done.outcomes, done.settled, done.segmented_on_device), done.rows

    def _predict(self, prepared, rows):
        return self.engine.predict(prepared.image, prepared.hidden, prepared.segments, rows)

    def _gradients(self, method: str, prepared, top_labels: int):
        """Gradients need PyTorch whatever the engine: each gradient method's pass (a PyTorch copy of the
        model on the engine's device) is built the first time it is asked for."""
        if method not in self._gradient_passes:
            from xai_batch.methods import get_method

            self._gradient_passes[method] = get_method(method).gradient_pass(
                self._checkpoint(), str(self.engine.device), self._layer)
        return self._gradient_passes[method](prepared.image, top_labels)

    def _worked(self, stages: dict[str, float], started: float) -> None:
        self._busy.update(stages)
        self._working += time.monotonic() - started

    def busy(self) -> tuple[dict[str, float], float, float]:
        """(seconds by step, seconds working in all, seconds since the model loaded)."""
        return dict(self._busy), self._working, time.monotonic() - self._loaded


class Replicas:
    """The job's model replicas, as named Ray actors; a dead one is replaced.

    By default one per GPU, else one, spread over the cluster's nodes. GPU
    replicas ask for a whole GPU (a share of one when there are more replicas
    than GPUs). CPU replicas reserve
    at most one CPU each and leave at least one for the segmentation tasks, so
    neither stage can starve the other; each runs the model on its share of
    its node's cores. Ray does not restart them (``max_restarts=0``): the
    driver replaces a dead replica with a new one, loaded from the checkpoint
    reference it holds, and decides which work to resend.
    """

    def __init__(
        self, count: int | None, model_ref: ray.ObjectRef, precision: str, batch_size: int, name: str,
        layer: str | None = None,
    ) -> None:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = resources.get("CPU", 1.0)
        count = count or max(gpus, 1)
        self.options = {
            "num_gpus": min(1.0, gpus / count) if gpus else 0,
            "num_cpus": min(1.0, max(cpus - 1, 0) / count),
            "max_restarts": 0,
            "scheduling_strategy": "SPREAD",
        }
        nodes = [node for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU")]
        node_cpus = max((node["Resources"]["CPU"] for node in nodes), default=1.0)
        threads = max(1, int(node_cpus // math.ceil(count / max(len(nodes), 1))))
        self._args = (model_ref, precision, batch_size, threads, layer)
        self._actor = ray.remote(ModelReplica)
        self.name = name
        self.started = 0
        self.handles = []
        try:
            self.handles = [self._start() for _ in range(count)]
            self.placement = ray.get([handle.describe.remote() for handle in self.handles])
        except BaseException:  # one that failed to load, or Ctrl-C: none of them stays holding its CPU or GPU
            self.shutdown()
            raise

    def __len__(self) -> int:
        return len(self.handles)

    def _start(self):
        self.started += 1
        return self._actor.options(**self.options, name=f"{self.name}-replica-{self.started}").remote(*self._args)

    def replace(self, index: int) -> None:
        """Start a new replica in place of the dead one at ``index`` (and wait until it is loaded)."""
        ray.kill(self.handles[index], no_restart=True)
        self.handles[index] = self._start()
        self.placement[index] = ray.get(self.handles[index].describe.remote())

    @property
    def replaced(self) -> int:
        return self.started - len(self.handles)

    def busy(self) -> list[tuple[dict[str, float], float, float]]:
        """Each live replica's (seconds by step, seconds working, seconds since it loaded)."""
        return ray.get([handle.busy.remote() for handle in self.handles])

    def shutdown(self) -> None:
        for handle in self.handles:
            ray.kill(handle, no_restart=True)

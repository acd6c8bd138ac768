"""Model engines: turn (image, segments, sample rows) into class probabilities.

An engine is what a model replica holds. It builds the perturbed images on its
own device from the three small arrays and returns softmax probabilities as
CPU numpy, so only a few hundred KB per image travel to it and a few KB per
sample back. ``TorchEngine`` normalises exactly as the seed's ``batch_predict``
does (``ToTensor`` then ``Normalize``), so in fp32 each perturbed input is
bit-identical to the one lime would feed the model.

``OnnxEngine`` runs the same network in ONNX Runtime on CPU, about 1.5x
PyTorch eager's speed there (issue 10's measurements): the driver exports
the checkpoint (cached by its hash and the software's versions) and ships
the ONNX model to the replicas, which then load no torch; the perturbed
batch is built with numpy in one reused input buffer from the same
normalised arrays, and the outputs agree with PyTorch's within fp32
rounding (LIME's weights to about 1e-7). ``engine_name`` picks one: 'auto'
is ONNX Runtime on CPU and PyTorch on CUDA; ``replica_model`` is what the
driver ships for that choice. A network the exporter cannot export runs on
PyTorch, with a warning that says so.

``function_engine`` holds the third kind: a user's own ``classifier_fn``
(lime's contract: perturbed images in, probabilities out), which a replica
calls on the perturbed images lime would build.

This package's face names the engines and checks a choice without loading
torch (the CLI validates options before anything heavy); ``torch_engine`` and
``onnx_engine`` hold the engines and ``onnx_export`` the export; they load on first use. May import the maths,
models and storage; nothing of Ray, the manifest or the commands.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
from typing import TYPE_CHECKING, Protocol

import numpy as np

from xai_batch.errors import ConfigError

if TYPE_CHECKING:  # choosing an engine needs no torch
    from xai_batch.engines.onnx_engine import OnnxModel
    from xai_batch.models import LoadedCheckpoint, ModelSource

__all__ = [
    "Engine", "ENGINES", "PRECISIONS", "check_engine", "engine_name", "make_engine", "replica_model",
    "TorchEngine", "OnnxEngine", "OnnxModel", "DEVICE_BATCH", "ONNX_BATCH", "normalise",
    "exact_fp32", "onnx_model",
]

ENGINES: tuple[str, ...] = ("auto", "torch", "onnxruntime")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
log = logging.getLogger(__name__)

# Names of the engines' own modules, imported on first use: choosing and checking an engine needs no torch.
_EXPORTS = {
    "TorchEngine": "torch_engine", "DEVICE_BATCH": "torch_engine", "normalise": "torch_engine", "exact_fp32": "torch_engine",
    "OnnxEngine": "onnx_engine", "OnnxModel": "onnx_engine", "ONNX_BATCH": "onnx_engine",
    "onnx_model": "onnx_export",
}


class Engine(Protocol):
    """What a model replica runs: all that its callers use.

    ``predict(image, hidden, segments, rows)`` takes the (crop, crop, 3) uint8
    image in the model's frame (its ``preprocessing``), the uint8 image hidden
    superpixels show, the (crop, crop) segment ids
    and a (B, S) 0/1 matrix, and returns (B, num_classes) float32 softmax
    probabilities, row b for the image with superpixels ``rows[b] == 0`` hidden.
    ``classify(images)`` gives the (N, num_classes) probabilities of N whole
    images. ``device`` is where the model runs (``str()`` of it: 'cpu',
    'cuda:0'), ``version`` what runs it ('onnxruntime 1.32.0'), as rows and
    job.json record it.
    """

    device: object
    version: str
    num_classes: int

    def predict(
        self, image: np.ndarray, hidden: np.ndarray, segments: np.ndarray, rows: np.ndarray
    ) -> np.ndarray: ...

    def classify(self, images: np.ndarray) -> np.ndarray: ...


def check_engine(engine: str, precision: str) -> None:
    """Refuse, before torch or Ray is loaded, an engine this machine cannot run as asked."""
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}", "engine")
    if engine == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            raise ConfigError("ONNX Runtime is not installed: pip install onnxruntime, or --engine torch", "engine")
        if precision != "fp32":
            raise ConfigError(f"ONNX Runtime runs fp32 only; {precision} needs --engine torch", "engine")


def engine_name(requested: str, cuda: bool, precision: str = "fp32", file_format: str | None = None) -> str:
    """The engine a replica runs: 'auto' is ONNX Runtime on CPU in fp32 (where installed), else PyTorch;
    an ONNX file always ONNX Runtime, a TorchScript file PyTorch."""
    if requested != "auto":
        return requested
    if file_format is not None:
        return "onnxruntime" if file_format == "onnx" else "torch"
    if cuda or precision != "fp32":
        return "torch"
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") else "torch"


def make_engine(requested: str, loaded: LoadedCheckpoint, precision: str, batch_size: int, threads: int) -> Engine:
    """The engine a process holds, for its device, for the checkpoint it parsed (exported here for ONNX Runtime)."""
    import torch

    if engine_name(requested, torch.cuda.is_available(), precision, loaded.file_format) == "onnxruntime":
        model = _exported(loaded)
        if model is not None:
            from xai_batch.engines.onnx_engine import OnnxEngine

            return OnnxEngine(model, batch_size=batch_size, threads=threads)
    from xai_batch.engines.torch_engine import TorchEngine

    return TorchEngine(loaded, precision=precision, batch_size=batch_size)


def replica_model(source: ModelSource, requested: str, cuda: bool, precision: str, gradients: bool):
    """What the driver ships to the replicas: an :class:`OnnxModel` where they run ONNX Runtime (exported
    here, once), else the source's payload, which each replica loads into PyTorch.

    ``cuda`` is whether the replicas have GPUs (they do where the cluster
    has them); ``gradients`` whether a gradient method runs, which needs the
    network in PyTorch beside the ONNX model (``OnnxModel.network``). A
    ``classifier_fn`` is shipped as itself. The choice is the driver's
    alone: a replica runs what it is shipped (``ModelReplica``).
    """
    from xai_batch.models import NetworkObject, parse_checkpoint

    payload = source.payload
    if not isinstance(payload, (bytes, NetworkObject)) or \
            engine_name(requested, cuda, precision, source.file_format) != "onnxruntime":
        return payload
    loaded = payload.loaded() if isinstance(payload, NetworkObject) else parse_checkpoint(payload, check=False)
    model = _exported(loaded)
    if model is None:
        return payload
    return dataclasses.replace(model, network=payload if gradients else None)


def _exported(loaded: LoadedCheckpoint) -> OnnxModel | None:
    """The network exported for ONNX Runtime, or None, with a warning, where torch's exporter cannot export
    it (PyTorch runs it then)."""
    from xai_batch.engines.onnx_export import NotExportable, onnx_spec

    try:
        return onnx_spec(loaded)
    except NotExportable as exc:
        log.warning("%s; running it on PyTorch instead (the same probabilities in fp32, more slowly)", exc)
        return None


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"xai_batch.engines.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'xai_batch.engines' has no attribute {name!r}")

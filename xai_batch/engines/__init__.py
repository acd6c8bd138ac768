"""Model engines: turn (image, segments, sample rows) into class probabilities.

An engine is what a model replica holds. It builds the perturbed images on its
own device from the three small arrays and returns softmax probabilities as
CPU numpy, so only a few hundred KB per image travel to it and a few KB per
sample back. ``TorchEngine`` normalises exactly as the seed's ``batch_predict``
does (``ToTensor`` then ``Normalize``), so in fp32 each perturbed input is
bit-identical to the one lime would feed the model.

``OnnxEngine`` runs the same network in ONNX Runtime on CPU, about 1.5x
PyTorch eager's speed there (issue 10's measurements): the checkpoint is
exported once per machine (cached by its hash and the software's versions),
the perturbed batch is built with numpy in one reused input buffer from the
same normalised arrays, and the outputs agree with PyTorch's within fp32
rounding (LIME's weights to about 1e-7). ``engine_name`` picks one: 'auto'
is ONNX Runtime on CPU and PyTorch on CUDA. A network the exporter cannot
export runs on PyTorch, with a warning that says so.

``function_engine`` holds the third kind: a user's own ``classifier_fn``
(lime's contract: perturbed images in, probabilities out), which a replica
calls on the perturbed images lime would build.

This package's face names the engines and checks a choice without loading
torch (the CLI validates options before anything heavy); ``torch_engine`` and
``onnx_engine`` hold the engines and load on first use. May import the maths,
models and storage; nothing of Ray, the manifest or the commands.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import TYPE_CHECKING, Protocol

import numpy as np

from xai_batch.errors import ConfigError

if TYPE_CHECKING:  # choosing an engine needs no torch
    from xai_batch.models import LoadedCheckpoint

__all__ = [
    "Engine", "ENGINES", "PRECISIONS", "check_engine", "engine_name", "make_engine",
    "TorchEngine", "OnnxEngine", "DEVICE_BATCH", "ONNX_BATCH", "normalise",
    "exact_fp32", "onnx_model",
]

ENGINES: tuple[str, ...] = ("auto", "torch", "onnxruntime")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
log = logging.getLogger(__name__)

# Names of the engines' own modules, imported on first use: choosing and checking an engine needs no torch.
_EXPORTS = {
    "TorchEngine": "torch_engine", "DEVICE_BATCH": "torch_engine", "normalise": "torch_engine", "exact_fp32": "torch_engine",
    "OnnxEngine": "onnx_engine", "ONNX_BATCH": "onnx_engine", "onnx_model": "onnx_engine",
}


class Engine(Protocol):
    """What a model replica runs: all that its callers use.

    ``predict(image, hidden, segments, rows)`` takes the (crop, crop, 3) uint8
    image in the model's frame (its ``preprocessing``), the uint8 image hidden
    superpixels show, the (crop, crop) segment ids
    and a (B, S) 0/1 matrix, and returns (B, num_classes) float32 softmax
    probabilities, row b for the image with superpixels ``rows[b] == 0`` hidden.
    ``classify(images)`` gives the (N, num_classes) probabilities of N whole
    images. ``device`` is the torch device the model runs on, ``version`` what
    runs it ('onnxruntime 1.32.0'), as rows and job.json record it.
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
    """The engine a replica holds, for this process's device, for the checkpoint it parsed."""
    import torch

    if engine_name(requested, torch.cuda.is_available(), precision, loaded.file_format) == "onnxruntime":
        from xai_batch.engines.onnx_engine import NotExportable, OnnxEngine

        try:
            return OnnxEngine(loaded, batch_size=batch_size, threads=threads)
        except NotExportable as exc:
            log.warning("%s; running it on PyTorch instead (the same probabilities in fp32, more slowly)", exc)
    from xai_batch.engines.torch_engine import TorchEngine

    return TorchEngine(loaded, precision=precision, batch_size=batch_size)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"xai_batch.engines.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'xai_batch.engines' has no attribute {name!r}")

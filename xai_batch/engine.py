"""Model engines: turn (image, segments, sample rows) into class probabilities.

An engine is what a model replica holds. It builds the perturbed images on its
own device from the three small arrays and returns softmax probabilities as
CPU numpy, so only a few hundred KB per image travel to it and a few KB per
sample back. ``TorchEngine`` normalises exactly as the seed's ``batch_predict``
does (``ToTensor`` then ``Normalize``), so in fp32 each perturbed input is
bit-identical to the one lime would feed the model.

``OnnxEngine`` runs the same ResNet18 in ONNX Runtime on CPU, about 1.5x
PyTorch eager's speed there (issue 10's measurements): the checkpoint is
exported once per machine (cached by its hash and the software's versions),
the perturbed batch is built with numpy in one reused input buffer from the
same normalised arrays, and the outputs agree with PyTorch's within fp32
rounding (LIME's weights to about 1e-7). ``engine_name`` picks one: 'auto'
is ONNX Runtime on CPU and PyTorch on CUDA.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import tempfile
from importlib import metadata
from typing import Protocol

import numpy as np
import torch

from xai_batch.explain.perturbation import perturb
from xai_batch.models import build_resnet18, parse_checkpoint

__all__ = [
    "Engine", "TorchEngine", "OnnxEngine", "engine_name", "make_engine",
    "IMAGENET_MEAN", "IMAGENET_STD", "DEVICE_BATCH", "ONNX_BATCH", "normalise", "exact_fp32",
]

ONNX_BATCH = 64  # ONNX Runtime's forward batch on CPU: 32 and 64 measured alike, both beat 16

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Largest forward batch per device type. On CPU, bench/speed.py's limit tables
# (2 cores, two runs): 16 and 32 within noise of each other, 64 and 256 slower
# by 5-6% and 3-16% — big batches fall out of cache. A GPU takes a whole chunk
# of up to 256 rows at once.
DEVICE_BATCH = {"cpu": 32, "cuda": 256}


class Engine(Protocol):
    """What a model replica runs.

    ``predict(image, hidden, segments, rows)`` takes the (224, 224, 3) uint8
    image, the uint8 image hidden superpixels show, the (224, 224) segment ids
    and a (B, S) 0/1 matrix, and returns (B, num_classes) float32 softmax
    probabilities, row b for the image with superpixels ``rows[b] == 0`` hidden.
    """

    def predict(
        self, image: np.ndarray, hidden: np.ndarray, segments: np.ndarray, rows: np.ndarray
    ) -> np.ndarray: ...


def exact_fp32(device: torch.device) -> None:
    """Make fp32 on a CUDA ``device`` mean fp32 in this process.

    PyTorch lets cuDNN convolve in TF32 by default, which moved probabilities
    by 2.5e-4 on an H200 (test_cuda_fp32_matches_cpu). A replica process
    holds only this job's models, so the process-wide switch is ours to set.
    """
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def normalise(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 to normalised float32 (H, W, 3), with ToTensor's and
    Normalize's operations in their order, so every value is bit-identical."""
    pixels = torch.tensor(image, device=device)  # a copy: Ray's arrays are read-only
    scaled = pixels.to(torch.float32).div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32, device=device)
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32, device=device)
    return scaled.sub(mean).div(std)


class TorchEngine:
    """ResNet18 in PyTorch, on CUDA when available, channels-last.

    ``precision`` 'fp32' is exact; 'bf16' and 'fp16' run under autocast.
    The model runs on at most ``batch_size`` rows at a time, and no more than
    the device's best (``DEVICE_BATCH``), so memory stays bounded; every batch
    is built in one input buffer allocated once on the device.
    """

    def __init__(
        self, checkpoint_bytes: bytes, precision: str = "fp32", batch_size: int = 256, device: str | None = None
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if precision == "fp32":
            exact_fp32(self.device)
        loaded = parse_checkpoint(checkpoint_bytes)
        model = build_resnet18(len(loaded.class_names), loaded.state_dict)
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.precision = precision
        self.batch_size = min(batch_size, DEVICE_BATCH.get(self.device.type, batch_size))
        self.num_classes = len(loaded.class_names)
        self.version = f"torch {torch.__version__}"
        self._buffer: torch.Tensor | None = None

    def _input_buffer(self, rows: int, pixels: tuple[int, ...]) -> torch.Tensor:
        """The first ``rows`` of the reused (batch_size, H, W, C) input buffer."""
        if self._buffer is None or tuple(self._buffer.shape[1:]) != pixels:
            self._buffer = torch.empty((self.batch_size, *pixels), dtype=torch.float32, device=self.device)
        return self._buffer[:rows]

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def predict(
        self, image: np.ndarray, hidden: np.ndarray, segments: np.ndarray, rows: np.ndarray
    ) -> np.ndarray:
        with torch.inference_mode():
            image_t = normalise(image, self.device)
            hidden_t = normalise(hidden, self.device)
            segments_t = torch.tensor(segments, dtype=torch.long, device=self.device)
            rows_t = torch.tensor(rows, device=self.device)
            out = np.empty((rows.shape[0], self.num_classes), dtype=np.float32)
            for start in range(0, rows.shape[0], self.batch_size):
                stop = min(start + self.batch_size, rows.shape[0])
                buffer = self._input_buffer(stop - start, tuple(image_t.shape))
                batch = perturb(image_t, hidden_t, segments_t, rows_t[start:stop], out=buffer).permute(0, 3, 1, 2)
                with self._autocast():
                    logits = self.model(batch)
                probs = torch.softmax(logits.float(), dim=1)
                out[start:stop] = probs.cpu().numpy()
        return out

    def classify(self, images: np.ndarray) -> np.ndarray:
        """(N, num_classes) softmax probabilities of N whole (224, 224, 3) uint8 images: no perturbation."""
        out = np.empty((len(images), self.num_classes), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = torch.stack([normalise(image, self.device) for image in images[start : start + self.batch_size]])
                with self._autocast():
                    logits = self.model(batch.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last))
                out[start : start + len(batch)] = torch.softmax(logits.float(), dim=1).cpu().numpy()
        return out


def engine_name(requested: str, cuda: bool, precision: str = "fp32") -> str:
    """The engine a replica runs: 'auto' is ONNX Runtime on CPU in fp32 (where installed), else PyTorch."""
    if requested != "auto":
        return requested
    if cuda or precision != "fp32":
        return "torch"
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") else "torch"


def make_engine(requested: str, checkpoint_bytes: bytes, precision: str, batch_size: int, threads: int) -> Engine:
    """The engine a replica holds, for this process's device."""
    if engine_name(requested, torch.cuda.is_available(), precision) == "onnxruntime":
        return OnnxEngine(checkpoint_bytes, batch_size=batch_size, threads=threads)
    return TorchEngine(checkpoint_bytes, precision=precision, batch_size=batch_size)


class OnnxEngine:
    """ResNet18 in ONNX Runtime's CPU execution provider, fp32.

    ``threads`` is the session's intra-op thread count: the CPUs Ray gave the
    replica, so replicas and segmentation tasks do not oversubscribe the cores.
    """

    def __init__(self, checkpoint_bytes: bytes, batch_size: int = 256, threads: int = 1) -> None:
        import onnxruntime

        loaded = parse_checkpoint(checkpoint_bytes)
        self.num_classes = len(loaded.class_names)
        self.batch_size = min(batch_size, ONNX_BATCH)
        self.device = torch.device("cpu")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            onnx_model(checkpoint_bytes, loaded), options, providers=["CPUExecutionProvider"])
        self.version = f"onnxruntime {onnxruntime.__version__}"
        self._buffer = np.empty((self.batch_size, 3, 224, 224), np.float32)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {"input": batch})[0]
        return torch.softmax(torch.from_numpy(logits), dim=1).numpy()

    def predict(
        self, image: np.ndarray, hidden: np.ndarray, segments: np.ndarray, rows: np.ndarray
    ) -> np.ndarray:
        image_n = normalise(image, self.device).permute(2, 0, 1).numpy()  # (3, H, W): the same values as torch's
        hidden_n = normalise(hidden, self.device).permute(2, 0, 1).numpy()
        out = np.empty((rows.shape[0], self.num_classes), dtype=np.float32)
        for start in range(0, rows.shape[0], self.batch_size):
            chunk = rows[start : start + self.batch_size].astype(bool)
            batch = self._buffer[: len(chunk)]
            np.copyto(batch, hidden_n[None])
            np.copyto(batch, image_n[None], where=chunk[:, segments][:, None])
            out[start : start + len(chunk)] = self._run(batch)
        return out

    def classify(self, images: np.ndarray) -> np.ndarray:
        """(N, num_classes) softmax probabilities of N whole (224, 224, 3) uint8 images."""
        out = np.empty((len(images), self.num_classes), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = self._buffer[: len(chunk)]
            for i, image in enumerate(chunk):
                batch[i] = normalise(image, self.device).permute(2, 0, 1).numpy()
            out[start : start + len(chunk)] = self._run(batch)
        return out


def onnx_model(checkpoint_bytes: bytes, loaded) -> str:
    """The checkpoint as an ONNX file (dynamic batch axis), exported once and cached.

    The cache key is the checkpoint's SHA-256 and the versions of torch and
    ONNX Runtime; the folder is ``$XAI_BATCH_CACHE`` or ``~/.cache/xai-batch``.
    Written under a temporary name and renamed, so replicas exporting at once
    never read half a file.
    """
    versions = f"torch {torch.__version__}, onnxruntime {metadata.version('onnxruntime')}"
    key = hashlib.sha256(checkpoint_bytes + versions.encode()).hexdigest()[:20]
    folder = os.path.join(os.environ.get("XAI_BATCH_CACHE", os.path.expanduser("~/.cache/xai-batch")), "onnx")
    path = os.path.join(folder, f"resnet18-{key}.onnx")
    if os.path.isfile(path):
        return path
    os.makedirs(folder, exist_ok=True)
    model = build_resnet18(len(loaded.class_names), loaded.state_dict)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".export-", suffix=".onnx")
    os.close(handle)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its steps
            torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), temporary, dynamo=True, input_names=["input"],
                              output_names=["logits"], dynamic_shapes=({0: "batch"},), external_data=False)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path

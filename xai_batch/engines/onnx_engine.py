"""The ONNX Runtime engine: a network exported to ONNX, on CPU, in fp32, with nothing of torch.

A replica that runs ONNX Runtime is handed an :class:`OnnxModel` (the model's
bytes, exported once by the driver: :mod:`xai_batch.engines.onnx_export`) and
imports numpy and ONNX Runtime alone, so it is loaded in about a second
instead of the four that importing torch takes. The inputs are normalised as
torchvision's ``ToTensor`` and ``Normalize`` do, operation for operation in
float32, so each perturbed input is bit-identical to the one lime feeds the
seeds' ``batch_predict``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xai_batch.preprocessing import SEEDS, Preprocessing

__all__ = ["OnnxModel", "OnnxEngine", "ONNX_BATCH", "normalised"]

ONNX_BATCH = 64  # ONNX Runtime's forward batch on CPU: 32 and 64 measured alike, both beat 16


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX model as replicas receive it: its serialized bytes and what running it needs."""

    serialized: bytes
    num_classes: int
    preprocessing: Preprocessing
    answers_probabilities: bool = False  # a model file that ends in a softmax; else it answers logits
    network: object = None  # the checkpoint's bytes or network object, where a gradient method needs PyTorch's


def normalised(image: np.ndarray, preprocessing: Preprocessing = SEEDS) -> np.ndarray:
    """(H, W, 3) uint8 to the (3, H, W) float32 ``ToTensor`` then ``Normalize`` give, bit for bit: each is
    one correctly rounded float32 operation (divide by 255, subtract the mean, divide by the std)."""
    scaled = image.astype(np.float32) / np.float32(255)
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    return ((scaled - mean) / std).transpose(2, 0, 1)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, shifted by each row's maximum as torch's is."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class OnnxEngine:
    """An ONNX model in ONNX Runtime's CPU execution provider, fp32.

    ``threads`` is the session's intra-op thread count: the CPUs Ray gave the
    replica, so replicas and segmentation tasks do not oversubscribe the cores.
    Its threads block between runs instead of spinning: the replica shares
    its node's cores with the segmentation tasks, whose time a spinning
    thread would take (13% faster at 16 samples on 2 cores: BENCHMARKS.md).
    A checkpoint becomes an :class:`OnnxModel` through
    :func:`~xai_batch.engines.onnx_export.onnx_spec`, which needs torch.
    """

    def __init__(self, model: OnnxModel, batch_size: int = 256, threads: int = 1) -> None:
        import onnxruntime

        self.num_classes = model.num_classes
        self.preprocessing = model.preprocessing
        self.batch_size = min(batch_size, ONNX_BATCH)
        self.device = "cpu"
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(model.serialized, options, providers=["CPUExecutionProvider"])
        self.version = f"onnxruntime {onnxruntime.__version__}"
        self.input_name = self.session.get_inputs()[0].name  # ours is 'input'; a model file's is its own
        fixed = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = fixed if isinstance(fixed, int) and fixed > 0 else None  # a file exported for one size
        if self.fixed_batch:
            self.batch_size = self.fixed_batch
        self.answers_probabilities = model.answers_probabilities
        crop = self.preprocessing.crop
        self._buffer = np.empty((self.batch_size, 3, crop, crop), np.float32)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        rows = len(batch)
        if self.fixed_batch and rows < self.fixed_batch:  # a file's fixed batch: the rest of the buffer is padding
            batch = self._buffer
        answer = self.session.run(None, {self.input_name: batch})[0][:rows]
        return answer if self.answers_probabilities else softmax(answer)

    def predict(
        self, image: np.ndarray, hidden: np.ndarray, segments: np.ndarray, rows: np.ndarray
    ) -> np.ndarray:
        image_n = normalised(image, self.preprocessing)  # (3, H, W)
        hidden_n = normalised(hidden, self.preprocessing)
        out = np.empty((rows.shape[0], self.num_classes), dtype=np.float32)
        for start in range(0, rows.shape[0], self.batch_size):
            chunk = rows[start : start + self.batch_size].astype(bool)
            batch = self._buffer[: len(chunk)]
            np.copyto(batch, hidden_n[None])
            np.copyto(batch, image_n[None], where=chunk[:, segments][:, None])
            out[start : start + len(chunk)] = self._run(batch)
        return out

    def classify(self, images: np.ndarray) -> np.ndarray:
        """(N, num_classes) softmax probabilities of N whole (crop, crop, 3) uint8 images."""
        out = np.empty((len(images), self.num_classes), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = self._buffer[: len(chunk)]
            for i, image in enumerate(chunk):
                batch[i] = normalised(image, self.preprocessing)
            out[start : start + len(chunk)] = self._run(batch)
        return out

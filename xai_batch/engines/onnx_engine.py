"""The ONNX Runtime engine: the same ResNet18 on CPU, fp32, exported once per checkpoint and cached."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from importlib import metadata

import numpy as np
import torch

from xai_batch.engines.torch_engine import normalise
from xai_batch.models import build_resnet18, parse_checkpoint
from xai_batch.storage import atomic_path

__all__ = ["OnnxEngine", "ONNX_BATCH", "onnx_model"]

ONNX_BATCH = 64  # ONNX Runtime's forward batch on CPU: 32 and 64 measured alike, both beat 16


class OnnxEngine:
    """ResNet18 in ONNX Runtime's CPU execution provider, fp32.

    ``threads`` is the session's intra-op thread count: the CPUs Ray gave the
    replica, so replicas and segmentation tasks do not oversubscribe the cores.
    Its threads block between runs instead of spinning: the replica shares
    its node's cores with the segmentation tasks, whose time a spinning
    thread would take (13% faster at 16 samples on 2 cores: BENCHMARKS.md).
    """

    def __init__(self, checkpoint_bytes: bytes, batch_size: int = 256, threads: int = 1) -> None:
        import onnxruntime

        loaded = parse_checkpoint(checkpoint_bytes, check=False)  # checked by the driver
        self.num_classes = len(loaded.class_names)
        self.batch_size = min(batch_size, ONNX_BATCH)
        self.device = torch.device("cpu")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
    model = build_resnet18(len(loaded.class_names), loaded.state_dict)
    with atomic_path(path) as temporary, contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its steps
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), temporary, dynamo=True, input_names=["input"],
                          output_names=["logits"], dynamic_shapes=({0: "batch"},), external_data=False)
    return path

"""The PyTorch engine: the checkpoint's network eager on CPU or CUDA, channels-last, exact in fp32.

``normalise`` is the seed's ``ToTensor`` then ``Normalize`` (with the model's
own mean and std), so in fp32 each perturbed input is bit-identical to the one
lime would feed the model.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from xai_batch.maths.perturbation import perturb
from xai_batch.models import LoadedCheckpoint, network
from xai_batch.preprocessing import SEEDS, Preprocessing

__all__ = ["TorchEngine", "DEVICE_BATCH", "normalise", "exact_fp32"]

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Largest forward batch per device type. On CPU, bench/speed.py's limit tables
# (2 cores, two runs): 16 and 32 within noise of each other, 64 and 256 slower
# by 5-6% and 3-16% — big batches fall out of cache. A GPU takes a whole chunk
# of up to 256 rows at once.
DEVICE_BATCH = {"cpu": 32, "cuda": 256}


def exact_fp32(device: torch.device) -> None:
    """Make fp32 on a CUDA ``device`` mean fp32 in this process.

    PyTorch lets cuDNN convolve in TF32 by default, which moved probabilities
    by 2.5e-4 on an H200 (test_cuda_fp32_matches_cpu). A replica process
    holds only this job's models, so the process-wide switch is ours to set.
    """
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def normalise(image: np.ndarray, device: torch.device, preprocessing: Preprocessing = SEEDS) -> torch.Tensor:
    """(H, W, 3) uint8 to normalised float32 (H, W, 3), with ToTensor's and
    Normalize's operations in their order, so every value is bit-identical."""
    pixels = torch.tensor(image, device=device)  # a copy: Ray's arrays are read-only
    scaled = pixels.to(torch.float32).div(255)
    mean = torch.as_tensor(preprocessing.mean, dtype=torch.float32, device=device)
    std = torch.as_tensor(preprocessing.std, dtype=torch.float32, device=device)
    return scaled.sub(mean).div(std)


class TorchEngine:
    """The checkpoint's network in PyTorch, on CUDA when available, channels-last.

    ``precision`` 'fp32' is exact; 'bf16' and 'fp16' run under autocast.
    The model runs on at most ``batch_size`` rows at a time, and no more than
    the device's best (``DEVICE_BATCH``), so memory stays bounded; every batch
    is built in one input buffer allocated once on the device.
    """

    def __init__(
        self, loaded: LoadedCheckpoint, precision: str = "fp32", batch_size: int = 256, device: str | None = None
    ) -> None:
        """``loaded`` is the checkpoint as the driver checked it and the replica parsed it, once."""
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if precision == "fp32":
            exact_fp32(self.device)
        self.model = network(loaded).to(self.device, memory_format=torch.channels_last)
        self.precision = precision
        self.batch_size = min(batch_size, DEVICE_BATCH.get(self.device.type, batch_size))
        self.num_classes = len(loaded.class_names)
        self.preprocessing = loaded.preprocessing
        self.answers_probabilities = loaded.outputs == "probabilities"
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
            image_t = normalise(image, self.device, self.preprocessing)
            hidden_t = normalise(hidden, self.device, self.preprocessing)
            segments_t = torch.tensor(segments, dtype=torch.long, device=self.device)
            rows_t = torch.tensor(rows, device=self.device)
            out = np.empty((rows.shape[0], self.num_classes), dtype=np.float32)
            for start in range(0, rows.shape[0], self.batch_size):
                stop = min(start + self.batch_size, rows.shape[0])
                buffer = self._input_buffer(stop - start, tuple(image_t.shape))
                batch = perturb(image_t, hidden_t, segments_t, rows_t[start:stop], out=buffer).permute(0, 3, 1, 2)
                with self._autocast():
                    logits = self.model(batch)
                out[start:stop] = self._probabilities(logits).cpu().numpy()
        return out

    def classify(self, images: np.ndarray) -> np.ndarray:
        """(N, num_classes) softmax probabilities of N whole (crop, crop, 3) uint8 images: no perturbation."""
        out = np.empty((len(images), self.num_classes), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = torch.stack([normalise(image, self.device, self.preprocessing)
                                     for image in images[start : start + self.batch_size]])
                with self._autocast():
                    logits = self.model(batch.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last))
                out[start : start + len(batch)] = self._probabilities(logits).cpu().numpy()
        return out

    def _probabilities(self, answer: torch.Tensor) -> torch.Tensor:
        """Softmax of the logits, or what a model file that answers probabilities gives."""
        return answer.float() if self.answers_probabilities else torch.softmax(answer.float(), dim=1)

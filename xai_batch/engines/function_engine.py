"""The user's own ``classifier_fn`` as an engine: lime's contract, run in the model replicas.

lime calls ``classifier_fn`` on a batch of perturbed images (N, H, W, 3)
with the image's own dtype and expects (N, num_classes) probabilities back.
:class:`FunctionEngine` builds those batches exactly as lime's
``data_labels`` does (a pixel of a hidden superpixel takes the hidden
image's value, every other pixel the image's), so the function sees the
arrays lime would give it, only more of them per call. Whatever the
function closes over (a torch model, on the GPU if it put it there) travels
with it to the replica, pickled by Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["ClassifierFunction", "FunctionEngine", "CPU_BATCH", "GPU_BATCH"]

CPU_BATCH = 10  # lime's: on a CPU the seeds' ResNet18 function measured fastest at 10-32 (BENCHMARKS.md)
GPU_BATCH = 128  # where the replica has a GPU: lime's 10 would leave it idle
BATCH_BYTES = 512 * 2**20  # at most this much of perturbed images a call, whatever the images' size


@dataclass(frozen=True)
class ClassifierFunction:
    """A ``classifier_fn`` a replica runs instead of a checkpoint: images (N, H, W, 3) in, (N, C) out."""

    fn: Callable[[np.ndarray], np.ndarray]
    batch_size: int | None = None  # images per call of ``fn``; None: ``GPU_BATCH`` where there is a GPU, else lime's


class FunctionEngine:
    """Calls ``function.fn`` on lime's perturbed images, ``function.batch_size`` at a time (by default
    ``GPU_BATCH`` in a replica with a GPU, else ``CPU_BATCH``).

    ``num_classes`` is learnt from the first answer; an answer of another
    shape than (images, classes) is a ``ValueError`` saying what came back.
    """

    def __init__(self, function: ClassifierFunction) -> None:
        import torch

        self.fn = function.fn
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where the function may run
        self.batch_size = function.batch_size or (GPU_BATCH if self.device.type == "cuda" else CPU_BATCH)
        self.version = "classifier_fn"
        self.num_classes: int | None = None

    def predict(self, image: np.ndarray, hidden: np.ndarray, segments: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The function's answers for the perturbed images of ``rows`` (1 keeps a superpixel), in order.

        Column ``z`` of a row hides the pixels labelled ``z``, as in lime: a
        segmentation whose labels run past the columns (numbered from 1, say)
        keeps the pixels of those labels in every image, as lime does. At most
        ``BATCH_BYTES`` of images go to the function at once."""
        if segments.size and int(segments.max()) >= rows.shape[1]:  # labels lime never hides
            rows = np.pad(rows, ((0, 0), (0, int(segments.max()) + 1 - rows.shape[1])), constant_values=1)
        batch = max(1, min(self.batch_size, BATCH_BYTES // max(1, image.nbytes)))
        answers = []
        for start in range(0, len(rows), batch):
            keep = rows[start : start + batch].astype(bool)[:, segments]  # (B, H, W)
            answers.append(self.classify(np.where(keep[..., None], image[None], hidden[None])))
        return np.concatenate(answers) if answers else np.zeros((0, self.num_classes or 0), np.float32)

    def classify(self, images: np.ndarray) -> np.ndarray:
        """The function's answer for whole images, checked for its shape."""
        probs = np.asarray(self.fn(images))
        if probs.ndim != 2 or probs.shape[0] != len(images) or (self.num_classes not in (None, probs.shape[1])):
            expected = f"({len(images)}, {self.num_classes or 'classes'})"
            raise ValueError(f"classifier_fn returned an array of shape {probs.shape} for {len(images)} images; "
                             f"lime's contract is {expected} probabilities")
        self.num_classes = probs.shape[1]
        return probs

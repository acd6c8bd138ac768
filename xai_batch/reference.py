"""The seed notebook's classifier function: the baseline we measure against.

Users explaining one image at a time hand lime this ``batch_predict``: each
perturbed image is turned into a tensor and normalised on the CPU, then the
batch goes through the model. The tests check that our engine returns the
same probabilities, and ``bench/speed.py`` times lime driving it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchvision import transforms

from xai_batch.preprocessing import SEEDS, Preprocessing

__all__ = ["seed_batch_predict"]


def seed_batch_predict(
    model: torch.nn.Module, preprocessing: Preprocessing = SEEDS
) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
    """``batch_predict`` as the seed wrote it: (B, 224, 224, 3) uint8 images to softmax probabilities.

    A model with its own preprocessing gets its own mean and std in the seed's ``Normalize``
    (and its images are its crop's size)."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(preprocessing.mean, preprocessing.std)])

    def batch_predict(images):
        model.eval()
        batch = torch.stack(tuple(transform(image) for image in images), dim=0)
        with torch.no_grad():
            logits = model(batch.to(next(model.parameters()).device))  # the model's device, GPU included
        return torch.nn.functional.softmax(logits, dim=1).cpu().numpy()

    return batch_predict

"""Building perturbed images from an image, its segments and sample rows.

The model actor builds each batch itself on its device from three small arrays
(image, segment map, rows), so N perturbed images never cross the network.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["hidden_image", "perturb"]


def hidden_image(image: np.ndarray, segments: np.ndarray, hide_color: int | None) -> np.ndarray:
    """What a hidden superpixel shows: lime's ``fudged_image``.

    A constant grey level, or with ``hide_color=None`` each superpixel's mean
    colour, truncated to uint8 as lime's in-place assignment does.
    """
    fudged = image.copy()
    if hide_color is not None:
        fudged[:] = hide_color
        return fudged
    for segment in np.unique(segments):
        where = segments == segment
        fudged[where] = (
            np.mean(image[where][:, 0]),
            np.mean(image[where][:, 1]),
            np.mean(image[where][:, 2]),
        )
    return fudged


def perturb(
    image: torch.Tensor,
    hidden: torch.Tensor,
    segments: torch.Tensor,
    rows: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Perturbed batch: pixel (h, w) of sample b is ``image[h, w]`` where
    ``rows[b, segments[h, w]]`` is 1, else ``hidden[h, w]``.

    ``image`` and ``hidden`` are (H, W, C) tensors of any dtype (normalised,
    typically), ``segments`` an integer (H, W) tensor and ``rows`` a (B, S)
    0/1 tensor, all on one device. Returns (B, H, W, C): channels last, so
    ``.permute(0, 3, 1, 2)`` is a channels-last NCHW batch without a copy.
    ``out``, a (B, H, W, C) tensor, receives the batch instead of new memory.
    """
    keep = rows.bool()[:, segments]  # (B, H, W)
    return torch.where(keep.unsqueeze(-1), image.unsqueeze(0), hidden.unsqueeze(0), out=out)

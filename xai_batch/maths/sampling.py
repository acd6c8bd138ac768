"""Which superpixels each perturbed sample keeps."""

from __future__ import annotations

import numpy as np

__all__ = ["sample_rows"]


def sample_rows(seed: int, num_samples: int, num_segments: int) -> np.ndarray:
    """lime's sample matrix: (num_samples, num_segments) of 0/1, row 0 all ones.

    Drawn as ``RandomState(seed).randint(0, 2, N * S)`` so that, for the same
    seed, it is bit for bit the matrix ``LimeImageExplainer(random_state=seed)``
    draws. 1 keeps a superpixel, 0 hides it. Returned as int64, lime's dtype,
    because the cosine distances are computed from it.
    """
    rows = np.random.RandomState(seed).randint(0, 2, num_samples * num_segments)
    rows = rows.reshape((num_samples, num_segments))
    rows[0, :] = 1
    return rows

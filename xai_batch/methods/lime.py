"""LIME (Ribeiro et al., 2016) as ``lime``'s ``LimeImageExplainer`` computes it:
lime's sample rows and lime's own weighted ridge surrogate, one per label."""

from __future__ import annotations

import numpy as np

from xai_batch.maths.sampling import sample_rows
from xai_batch.maths.surrogate import fit_surrogate
from xai_batch.methods import Attribution, PerturbationMethod

__all__ = ["LimeMethod", "METHOD"]


class LimeMethod(PerturbationMethod):
    name = "lime"

    def sample(self, seed: int, num_segments: int, num_samples: int) -> np.ndarray:
        """lime's (num_samples, S) matrix: row 0 the whole image, then uniform random rows."""
        return sample_rows(seed, num_samples, num_segments)

    def attribute(
        self, rows: np.ndarray, segments: np.ndarray, outputs: np.ndarray, labels: list[int], seed: int,
        num_samples: int,
    ) -> list[Attribution]:
        """lime's surrogate per label, fitted on the first ``len(outputs)`` rows."""
        used = np.asarray(rows[: len(outputs)], dtype=np.int64)
        out = []
        for label in labels:
            surrogate = fit_surrogate(used, outputs[:, label], seed)
            out.append(Attribution(label, surrogate.weights, surrogate.intercept, surrogate.score,
                                   surrogate.local_pred, surrogate.order))
        return out


METHOD = LimeMethod()

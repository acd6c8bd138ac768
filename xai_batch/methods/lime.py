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
        num_samples: int, device: str | None = None,
    ) -> list[Attribution]:
        """lime's surrogate per label, fitted on the first ``len(outputs)`` rows.

        Without ``device`` lime's own ``LimeBase``, one label at a time
        (exact); on a torch ``device`` all labels at once there, within 1e-9
        of it (:func:`~xai_batch.maths.device_surrogate.fit_surrogates_on_device`).
        """
        used = np.asarray(rows[: len(outputs)], dtype=np.int64)
        if device is not None:
            from xai_batch.maths.device_surrogate import fit_surrogates_on_device

            surrogates = fit_surrogates_on_device(used, outputs, labels, device)
        else:
            surrogates = [fit_surrogate(used, outputs[:, label], seed) for label in labels]
        return [Attribution(label, s.weights, s.intercept, s.score, s.local_pred, s.order)
                for label, s in zip(labels, surrogates)]


METHOD = LimeMethod()

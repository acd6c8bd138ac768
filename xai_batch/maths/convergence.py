"""When LIME has drawn enough samples: a stopping rule for the top superpixels.

S-LIME (Zhou, Hooker & Wang, KDD 2021) makes LIME stable by testing, at each
step of its feature selection, whether the chosen feature's lead over the
runner-up is statistically significant by the central limit theorem, and by
drawing more samples while it is not. We test what a reader of the mask sees:
the set of the top-``k`` superpixels and their signs.

The surrogate is lime's weighted ridge regression, so its coefficients are
asymptotically normal; their covariance is estimated with the
heteroskedasticity-robust sandwich (HC0), since LIME's residuals are anything
but homoscedastic. The top-``k`` set with its signs is *settled* when

* every top superpixel's weight differs from zero, in its sign
  (``|w_i| / se(w_i) > z``), and
* every top superpixel's |weight| exceeds every other superpixel's
  (``(|w_i| - |w_j|) / se(|w_i| - |w_j|) > z`` for each i in, j out of the set),

with ``z`` the one-sided normal quantile at level ``alpha / looks``. The
hypothesis "the set or a sign is wrong" is the union of these pairwise
hypotheses, so by the intersection-union principle (Berger, 1982) rejecting
each at a level rejects the union at that level: the many pairs need no
correction. The repeated looks do: a tie tested after every round at
``alpha`` would settle by chance about half the time by 2,000 samples (we
measured it), so each of the ``looks`` tests gets ``alpha / looks``
(Bonferroni), and the chance that ``auto`` stops on a wrong set or sign is at
most ``alpha`` over the whole schedule, as far as the normal approximation
holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from xai_batch.maths.surrogate import sample_weights

__all__ = ["Verdict", "settled", "sample_schedule", "ALPHA", "FIRST_ROUND", "ROUND"]

ALPHA = 0.05
FIRST_ROUND = 200  # samples in the first round of --num-samples auto
ROUND = 100  # samples added by each later round
RIDGE_ALPHA = 1.0  # lime's Ridge(alpha=1)


@dataclass(frozen=True)
class Verdict:
    """Whether the top-``k`` set and signs are settled, with the weakest evidence.

    ``z`` is the smallest of the test statistics; the set is settled when it
    exceeds the critical value ``critical``.
    """

    settled: bool
    z: float
    critical: float


def settled(
    rows: np.ndarray, label_probs: np.ndarray, num_features: int, looks: int = 1, alpha: float = ALPHA
) -> Verdict:
    """Test whether the first ``len(rows)`` samples settle the top-``num_features`` superpixels.

    ``rows`` is the (n, S) 0/1 sample matrix with the original image in row 0
    and ``label_probs`` the explained label's probability for each row;
    ``looks`` is the number of tests the schedule may make in all.
    """
    x = np.asarray(rows, dtype=np.float64)
    y = np.asarray(label_probs, dtype=np.float64).ravel()
    weights, covariance = _ridge_with_covariance(x, y, sample_weights(rows))
    k = min(num_features, x.shape[1])
    critical = NormalDist().inv_cdf(1 - alpha / looks)
    order = np.argsort(-np.abs(weights), kind="stable")
    top, rest = order[:k], order[k:]
    variance = np.diag(covariance)
    sign = np.sign(weights)
    z_sign = np.abs(weights[top]) / np.sqrt(np.maximum(variance[top], 1e-300))
    z = float(z_sign.min())
    if rest.size:
        i, j = np.meshgrid(top, rest, indexing="ij")
        lead = np.abs(weights[i]) - np.abs(weights[j])
        spread = variance[i] + variance[j] - 2 * sign[i] * sign[j] * covariance[i, j]
        z = min(z, float((lead / np.sqrt(np.maximum(spread, 1e-300))).min()))
    return Verdict(settled=z > critical, z=z, critical=critical)


def sample_schedule(max_samples: int) -> list[int]:
    """The sample counts at which ``auto`` tests: 200, 300, ... up to ``max_samples``."""
    counts = list(range(min(FIRST_ROUND, max_samples), max_samples, ROUND))
    return [*counts, max_samples] if not counts or counts[-1] != max_samples else counts


def _ridge_with_covariance(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's weighted ``Ridge(alpha=1, fit_intercept=True)`` and the HC0 covariance of its coefficients."""
    total = w.sum()
    xc = x - (w @ x) / total
    yc = y - (w @ y) / total
    gram = xc.T @ (xc * w[:, None]) + RIDGE_ALPHA * np.eye(x.shape[1])
    inverse = np.linalg.inv(gram)
    coef = inverse @ (xc.T @ (w * yc))
    scores = xc * (w * (yc - xc @ coef))[:, None]
    return coef, inverse @ (scores.T @ scores) @ inverse

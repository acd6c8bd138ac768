from functools import partial

import numpy as np
import pytest
import sklearn.metrics
from lime.lime_base import LimeBase

from xai_batch.maths import fit_surrogate, sample_rows


def _limes(rows, probs, label, seed):
    """What LimeImageExplainer.explain_instance computes for one label."""
    kernel = lambda d, kernel_width: np.sqrt(np.exp(-(d**2) / kernel_width**2))  # noqa: E731
    distances = sklearn.metrics.pairwise_distances(rows, rows[0].reshape(1, -1), metric="cosine").ravel()
    base = LimeBase(partial(kernel, kernel_width=0.25), random_state=np.random.RandomState(seed))
    return base.explain_instance_with_data(rows, probs, distances, label, 100000, feature_selection="auto")


@pytest.mark.parametrize("num_samples,num_segments", [(100, 9), (1000, 60)])
def test_surrogate_is_limes_to_the_bit(num_samples, num_segments):
    rows = sample_rows(11, num_samples, num_segments)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), num_samples).astype(np.float32)
    intercept, local_exp, score, local_pred = _limes(rows, probs, 2, 11)
    ours = fit_surrogate(rows, probs[:, 2], 11)
    assert ours.intercept == intercept
    assert ours.score == score
    assert ours.local_pred == local_pred[0]
    assert ours.order == tuple(f for f, _ in local_exp)
    assert all(ours.weights[f] == w for f, w in local_exp)


def test_linear_model_is_recovered():
    """Known answer: outputs exactly linear in the kept superpixels."""
    rows = sample_rows(3, 2000, 6)
    truth = np.array([0.3, -0.2, 0.0, 0.1, 0.05, -0.15])
    surrogate = fit_surrogate(rows, 0.2 + rows @ truth, 3)
    assert np.allclose(surrogate.weights, truth, atol=2e-3)
    assert surrogate.intercept == pytest.approx(0.2, abs=5e-3)
    assert surrogate.score == pytest.approx(1.0, abs=1e-4)
    assert surrogate.order[:2] == (0, 1)

"""The device surrogate against lime's own LimeBase on the same inputs."""

import numpy as np
import pytest
import sklearn.metrics
import torch
from lime.lime_base import LimeBase

from xai_batch.maths.device_surrogate import fit_surrogates_on_device
from xai_batch.maths.sampling import sample_rows


def limes(rows: np.ndarray, probs: np.ndarray, label: int):
    """(weights by segment, local_exp order, intercept, score, local_pred) from lime's LimeBase, with the
    kernel, distances and settings LimeImageExplainer.explain_instance uses."""
    base = LimeBase(lambda d: np.sqrt(np.exp(-(d**2) / 0.25**2)), random_state=np.random.RandomState(0))
    distances = sklearn.metrics.pairwise_distances(rows, rows[0].reshape(1, -1), metric="cosine").ravel()
    intercept, local_exp, score, local_pred = base.explain_instance_with_data(
        rows, probs, distances, label, 100000, feature_selection="auto")
    weights = np.zeros(rows.shape[1])
    for segment, weight in local_exp:
        weights[segment] = weight
    return weights, tuple(int(s) for s, _ in local_exp), intercept, score, float(np.ravel(local_pred)[0])


def model_outputs(rows: np.ndarray, classes: int, seed: int, temperature: float = 0.3) -> np.ndarray:
    """float32 softmax probabilities that depend on the superpixels kept, like a classifier's."""
    rng = np.random.default_rng(seed)
    logits = rows @ rng.normal(size=(rows.shape[1], classes)) * temperature + rng.normal(size=(len(rows), classes)) * 0.1
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("segments,samples", [(7, 1000), (40, 1000), (85, 1000), (30, 150), (120, 60)])
def test_every_label_within_1e9_of_limes_fit(segments, samples):
    rows = sample_rows(seed=segments, num_samples=samples, num_segments=segments)
    probs = model_outputs(rows, classes=5, seed=segments)
    labels = [3, 0, 4]
    found = fit_surrogates_on_device(rows, probs, labels)
    for label, surrogate in zip(labels, found):
        weights, order, intercept, score, local_pred = limes(rows, probs, label)
        assert np.abs(surrogate.weights - weights).max() < 1e-9
        assert abs(surrogate.intercept - intercept) < 1e-9
        assert abs(surrogate.score - score) < 1e-9
        assert abs(surrogate.local_pred - local_pred) < 1e-9
        assert surrogate.order == order


def test_a_saturated_label_scores_as_scikit_learn_does():
    """A label the model gives probability 0 everywhere: zero weights and lime's score for a constant target."""
    rows = sample_rows(seed=1, num_samples=200, num_segments=12)
    probs = model_outputs(rows, classes=3, seed=1)
    probs[:, 2] = 0
    [surrogate] = fit_surrogates_on_device(rows, probs, [2])
    weights, _, intercept, score, _ = limes(rows, probs, 2)
    assert np.array_equal(surrogate.weights, weights) and not weights.any()
    assert surrogate.intercept == intercept and surrogate.score == score


def test_bad_shapes_are_refused():
    rows = sample_rows(seed=0, num_samples=10, num_segments=4)
    with pytest.raises(ValueError, match="rows \\(N, S\\) and probabilities \\(N, C\\)"):
        fit_surrogates_on_device(rows, np.ones((9, 2)), [0])
    with pytest.raises(ValueError, match="labels to fit"):
        fit_surrogates_on_device(rows, np.ones((10, 2)), [])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_fit_is_still_limes():
    rows = sample_rows(seed=5, num_samples=1000, num_segments=60)
    probs = model_outputs(rows, classes=1000, seed=5)
    labels = [int(i) for i in np.argsort(-probs[0])[:3]]
    found = fit_surrogates_on_device(torch.as_tensor(rows, device="cuda"), torch.as_tensor(probs, device="cuda"), labels, "cuda")
    for label, surrogate in zip(labels, found):
        weights, order, *_ = limes(rows, probs, label)
        assert np.abs(surrogate.weights - weights).max() < 1e-9
        assert surrogate.order == order

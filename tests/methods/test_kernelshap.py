"""KernelSHAP's split into coalitions and solve gives shap's own answer."""

import numpy as np
import pytest
import shap

from xai_batch.methods import explained_labels, method_seed
from xai_batch.methods.kernelshap import METHOD, coalitions, shapley_values


def _model(num_segments: int, seed: int = 0):
    """A smooth two-output function of which superpixels are shown."""
    weights = np.random.default_rng(seed).normal(size=num_segments)
    return lambda z: np.stack([1 / (1 + np.exp(-(z @ weights))), np.tanh(0.3 * (z @ weights) + 0.1)], axis=1)


def _shap(f, num_segments: int, num_samples: int, seed: int):
    np.random.seed(seed)
    explainer = shap.KernelExplainer(f, np.zeros((1, num_segments)))
    values = explainer.shap_values(np.ones((1, num_segments)), nsamples=num_samples, silent=True)
    return np.asarray(values).reshape(num_segments, -1), np.atleast_1d(explainer.expected_value)


@pytest.mark.parametrize("num_segments, num_samples", [(1, 50), (2, 50), (6, 20), (6, 500), (40, 300)])
def test_values_are_shaps_own(num_segments, num_samples):
    """Small S enumerates every coalition, large S samples; both must match shap run directly."""
    f, seed = _model(num_segments), 1234
    rows = coalitions(seed, num_segments, num_samples)
    assert rows.dtype == np.uint8 and set(np.unique(rows)) <= {0, 1}
    assert rows[0].all() and not rows[1].any()
    values, base = shapley_values(rows, f(rows.astype(np.float64)), seed, num_samples)
    expected, expected_base = _shap(f, num_segments, num_samples, seed)
    np.testing.assert_allclose(values, expected, atol=1e-12, rtol=0)
    np.testing.assert_allclose(base, expected_base, atol=1e-12, rtol=0)
    # Shapley values add up to f(all shown) - f(none shown).
    f_all, f_none = f(np.ones((1, num_segments)))[0], f(np.zeros((1, num_segments)))[0]
    np.testing.assert_allclose(values.sum(axis=0), f_all - f_none, atol=1e-9)


def test_the_method_explains_each_label_as_shap_explains_that_output_alone():
    num_segments, num_samples, seed = 30, 200, 77
    weights = np.random.default_rng(3).normal(size=(num_segments, 4))
    probs = lambda z: np.exp(z @ weights) / np.exp(z @ weights).sum(axis=1, keepdims=True)  # noqa: E731
    rows = METHOD.sample(seed, num_segments, num_samples)
    outputs = probs(rows.astype(np.float64))
    labels = explained_labels(outputs[0], 2)
    attributions = METHOD.attribute(rows, None, outputs, labels, seed, num_samples)
    assert [a.label for a in attributions] == labels
    for attribution in attributions:
        expected, base = _shap(lambda z: probs(z)[:, attribution.label], num_segments, num_samples, seed)
        np.testing.assert_allclose(attribution.weights, expected.ravel(), atol=1e-12, rtol=0)
        assert attribution.intercept == pytest.approx(base[0], abs=1e-12)
        assert np.count_nonzero(attribution.weights) <= 10  # shap's default l1_reg keeps 10 superpixels


def test_the_global_generator_is_left_as_it_was():
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    coalitions(9, 20, 100)
    assert np.array_equal(np.random.get_state()[1], before)


def test_outputs_for_other_coalitions_are_refused():
    rows = coalitions(1, 20, 100)
    other = coalitions(2, 20, 100)
    f = _model(20)
    with pytest.raises(RuntimeError, match="other coalitions"):
        shapley_values(other, f(rows.astype(np.float64)), 1, 100)


def test_each_method_has_its_own_seed_but_lime_keeps_the_images():
    assert method_seed(123, "lime") == 123
    seeds = {method_seed(123, "kernelshap"), method_seed(123, "gradcam"), method_seed(124, "kernelshap")}
    assert len(seeds) == 3 and all(0 <= seed < 2**31 for seed in seeds)

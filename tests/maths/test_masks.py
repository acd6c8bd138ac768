import numpy as np
from lime.lime_image import ImageExplanation

from xai_batch.maths import MASK_AGAINST, MASK_FOR, MASK_NONE, explanation_mask, top_features


def test_mask_equals_limes_get_image_and_mask():
    rng = np.random.default_rng(0)
    segments = rng.integers(0, 12, (20, 20))
    weights = rng.normal(size=12)
    weights[4] = 0.0  # lime counts a zero weight as "for"
    order = tuple(int(i) for i in np.argsort(-np.abs(weights), kind="stable"))
    explanation = ImageExplanation(np.zeros((20, 20, 3), np.uint8), segments)
    explanation.local_exp[1] = [(f, weights[f]) for f in order]
    for k in (1, 5, 12):
        _, lime_mask = explanation.get_image_and_mask(1, positive_only=False, num_features=k, hide_rest=False)
        ours = explanation_mask(segments, weights, k, order)
        assert np.array_equal(ours == MASK_FOR, lime_mask == 1)
        assert np.array_equal(ours == MASK_AGAINST, lime_mask == -1)
        assert np.array_equal(ours == MASK_NONE, lime_mask == 0)


def test_top_features_without_order_ranks_by_magnitude():
    assert top_features(np.array([0.1, -0.5, 0.3, 0.0]), 2) == [1, 2]

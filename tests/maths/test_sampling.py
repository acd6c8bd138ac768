import numpy as np
import pytest
from lime.lime_image import LimeImageExplainer

from xai_batch.maths import sample_rows


@pytest.mark.parametrize("seed,num_samples,num_segments", [(0, 50, 7), (123456, 200, 41), (2**31 - 1, 10, 3)])
def test_rows_are_limes_sample_matrix(seed, num_samples, num_segments):
    image = np.zeros((8, num_segments, 3), dtype=np.uint8)
    segments = np.tile(np.arange(num_segments), (8, 1))
    explainer = LimeImageExplainer(random_state=seed)
    data, _ = explainer.data_labels(image, image, segments, lambda b: np.zeros((len(b), 2)), num_samples)
    assert np.array_equal(sample_rows(seed, num_samples, num_segments), data)


def test_row_zero_is_the_original_image():
    rows = sample_rows(7, 30, 12)
    assert rows[0].tolist() == [1] * 12
    assert set(np.unique(rows[1:])) == {0, 1}

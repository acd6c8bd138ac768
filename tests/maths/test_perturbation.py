import numpy as np
import pytest
import torch
from lime.lime_image import LimeImageExplainer

from xai_batch.maths import hidden_image, perturb, quickshift_segments, sample_rows
from xai_batch.maths.superpixels import Quickshift


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("hide_color", [0, 128, None])
def test_perturbed_images_equal_limes(hide_color):
    image = _image()
    segments = quickshift_segments(image, Quickshift(), seed=3)
    seen = []

    def record(batch):
        seen.extend(batch)
        return np.zeros((len(batch), 2))

    explainer = LimeImageExplainer(random_state=5)
    fudged = hidden_image(image, segments, hide_color)
    data, _ = explainer.data_labels(image, fudged, segments, record, num_samples=25)
    assert np.array_equal(data, sample_rows(5, 25, int(segments.max()) + 1))
    ours = perturb(torch.from_numpy(image), torch.from_numpy(fudged), torch.from_numpy(segments), torch.from_numpy(data))
    assert np.array_equal(ours.numpy(), np.stack(seen))


def test_hidden_image_mean_matches_lime():
    image = _image(1)
    segments = quickshift_segments(image, Quickshift(), seed=0)
    expected = image.copy()
    for s in np.unique(segments):
        expected[segments == s] = image[segments == s].mean(axis=0)  # lime truncates into uint8
    assert np.array_equal(hidden_image(image, segments, None), expected)
    assert (hidden_image(image, segments, 17) == 17).all()


def test_row_of_ones_is_the_image_and_zeros_hide_everything():
    image = torch.arange(2 * 3 * 3).reshape(2, 3, 3).float()
    hidden = torch.full_like(image, -1)
    segments = torch.tensor([[0, 1, 1], [0, 0, 2]])
    out = perturb(image, hidden, segments, torch.tensor([[1, 1, 1], [0, 0, 0], [1, 0, 1]]))
    assert torch.equal(out[0], image)
    assert (out[1] == -1).all()
    assert torch.equal(out[2][0, 1], hidden[0, 1]) and torch.equal(out[2][1, 2], image[1, 2])

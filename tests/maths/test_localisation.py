import numpy as np
import pytest

from xai_batch.maths.localisation import area_inside, random_area_inside, top_positive


def test_area_inside_known_answer():
    segments = np.array([[0, 0, 1, 1], [2, 2, 3, 3]])
    truth = np.array([[1, 1, 1, 0], [0, 0, 0, 0]], bool)
    assert area_inside(segments, [0], truth) == 1.0
    assert area_inside(segments, [0, 1], truth) == 0.75
    assert area_inside(segments, [2, 3], truth) == 0.0
    assert area_inside(segments, [], truth) == 0.0


def test_top_positive_skips_negative_weights():
    assert top_positive(np.array([0.2, -1.0, 0.5, 0.0]), 5) == [2, 0]


def test_random_choice_of_all_superpixels_is_the_object_share():
    segments = np.arange(16).reshape(4, 4)
    truth = np.zeros((4, 4), bool)
    truth[0] = True
    assert random_area_inside(segments, 16, truth, seed=0, draws=3) == pytest.approx(0.25)
    assert 0.1 < random_area_inside(segments, 2, truth, seed=0) < 0.4

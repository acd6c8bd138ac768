"""Quality measures against hand-computed answers, on a model that depends on one known superpixel."""

import numpy as np
import pytest

from xai_batch.maths import sample_rows
from xai_batch.maths.localisation import pointing_chance, pointing_hit
from xai_batch.maths.quality import curve_auc, deletion_rows, insertion_rows, random_order, topk_jaccard
from xai_batch.explaining.prepared import PreparedImage
from xai_batch.explaining.steps import ImageHeader, finish, quality_rows, score
from xai_batch.manifest import RowContext

S = 16  # a 4x4 grid of 56x56 superpixels
SEGMENTS = np.repeat(np.repeat(np.arange(S).reshape(4, 4), 56, axis=0), 56, axis=1).astype(np.int32)
KEY = 6  # the one superpixel the model looks at


def _model(rows: np.ndarray) -> np.ndarray:
    """P(class 1) = 0.9 if superpixel KEY is shown, else 0.1: it depends on that region only."""
    shown = rows[:, KEY].astype(np.float64)
    return np.stack([0.9 - 0.8 * shown, 0.1 + 0.8 * shown], axis=1)


def test_curves_and_their_areas_by_hand():
    order = np.array([2, 0, 1])
    assert deletion_rows(order, 3).tolist() == [[1, 1, 1], [1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert insertion_rows(order, 3).tolist() == [[0, 0, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1]]
    assert curve_auc([1.0, 0.0, 0.0, 0.0]) == pytest.approx(1 / 6)  # one trapezoid of width 1/3 and mean 1/2
    assert curve_auc([0.5, 0.5]) == 0.5
    assert sorted(random_order(7, 10)) == list(range(10)) and list(random_order(7, 10)) == list(random_order(7, 10))


def test_topk_jaccard_by_hand():
    a, b = np.array([5.0, -4, 3, 0, 0]), np.array([0.0, -4, 3, 5, 0])
    assert topk_jaccard(a, b, 3) == pytest.approx(2 / 4)
    assert topk_jaccard(a, a, 3) == 1.0


def test_pointing_game_by_hand():
    segments = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    truth = np.zeros((4, 4), bool)
    truth[:2, 1:] = True  # all of superpixel 1, half of superpixel 0: only 1 is mostly on the object
    assert pointing_hit(segments, np.array([0.1, 0.9, 0.2, 0.0]), truth)
    assert not pointing_hit(segments, np.array([0.9, 0.1, 0.2, 0.0]), truth)
    assert pointing_chance(segments, truth) == 0.25


def test_the_measures_of_an_explanation_of_a_one_region_model():
    seed = 11
    image = np.zeros((224, 224, 3), np.uint8)
    truth = SEGMENTS == KEY
    prepared = PreparedImage(image, image, SEGMENTS, sample_rows(seed, 300, S).astype(np.uint8), truth)
    header = ImageHeader("a.png", "0" * 64, 224, 224, seed, S)
    context = RowContext("m", ("other", "key"), {"lime": "h"}, 300, 1, 1, faithfulness=True, stability=True)
    [row] = finish(header, prepared, _model(prepared.rows), context)
    assert row["explained_index"] == 1 and int(np.argmax(row["weights"])) == KEY
    # Localisation: the top superpixel is the object, exactly; 1 of 16 superpixels would hit by chance.
    assert row["on_object"] == 1.0 and row["pointing_hit"] is True
    assert row["pointing_random"] == pytest.approx(1 / S)
    assert row["on_object_random"] == pytest.approx(1 / S, abs=0.03)

    extra = quality_rows(header, prepared, [row], context)
    assert len(extra.rows) == 300 + 4 * (S + 1)
    [scored] = score(header, [row], extra, _model(extra.rows), context)
    # Deleting KEY first drops P to 0.1 at once: area 0.1 + 0.8 * (1/2)/S; inserting it first the mirror.
    assert scored["deletion_auc"] == pytest.approx(0.1 + 0.8 * 0.5 / S)
    assert scored["insertion_auc"] == pytest.approx(0.9 - 0.8 * 0.5 / S)
    # A random order reaches KEY at position j: the curve stays up (down) j steps longer.
    j = int(np.flatnonzero(random_order(seed, S) == KEY)[0])
    assert scored["deletion_auc_random"] == pytest.approx(0.1 + 0.8 * (j + 0.5) / S)
    assert scored["insertion_auc_random"] == pytest.approx(0.9 - 0.8 * (j + 0.5) / S)
    assert scored["deletion_auc"] <= scored["deletion_auc_random"]
    # A second seed finds the same top superpixel.
    assert scored["stability"] == 1.0
    assert {k: v for k, v in scored.items() if k not in ("stability", "deletion_auc", "insertion_auc",
                                                         "deletion_auc_random", "insertion_auc_random")} == row


def test_without_masks_or_measures_there_are_no_quality_columns():
    image = np.zeros((224, 224, 3), np.uint8)
    prepared = PreparedImage(image, image, SEGMENTS, sample_rows(3, 100, S).astype(np.uint8))
    header = ImageHeader("a.png", "0" * 64, 224, 224, 3, S)
    [row] = finish(header, prepared, _model(prepared.rows), RowContext("m", ("other", "key"), {"lime": "h"}, 100, 1, 1))
    assert "on_object" not in row and "deletion_auc" not in row

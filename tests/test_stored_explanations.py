"""A run's manifest read back as lime's ``ImageExplanation`` objects (``xai_batch.read_explanations``)."""

import io
import os
import shutil

import numpy as np
import pytest
from lime.lime_image import ImageExplanation
from PIL import Image

from helpers import limes_explanation
from xai_batch import ExplainConfig, read_explanations, run_explain
from xai_batch.analysis.overlays import RenderOptions, render_row
from xai_batch.errors import ImageError

NUM_SAMPLES = 60

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(ray_session, photos, random_checkpoint, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("stored") / "run")
    run_explain(ExplainConfig(source=photos, out=out, checkpoint=random_checkpoint, num_samples=NUM_SAMPLES, seed=42),
                progress=False)
    return out


def test_each_image_reads_back_as_limes_own_explanation(run, photos, random_checkpoint):
    explanations = list(read_explanations(run))
    assert sorted(e.path for e in explanations) == ["cat/chelsea.jpg", "coffee.jpg", "people/astronaut.png"]
    for explanation in explanations:
        assert isinstance(explanation, ImageExplanation) and explanation.method == "lime"
        lime = limes_explanation(os.path.join(photos, explanation.path), random_checkpoint, explanation.seed,
                                 NUM_SAMPLES)
        assert np.array_equal(explanation.segments, lime.segments) and np.array_equal(explanation.image, lime.image)
        label = lime.top_labels[0]
        assert explanation.top_labels == [label]
        assert [f for f, _ in explanation.local_exp[label]] == [f for f, _ in lime.local_exp[label]]
        np.testing.assert_allclose([w for _, w in explanation.local_exp[label]], [w for _, w in lime.local_exp[label]],
                                   atol=1e-4, rtol=0)
        assert explanation.intercept[label] == pytest.approx(lime.intercept[label], abs=1e-4)
        ours = explanation.get_image_and_mask(label, positive_only=False, num_features=5, hide_rest=False)
        theirs = lime.get_image_and_mask(label, positive_only=False, num_features=5, hide_rest=False)
        assert np.array_equal(ours[1], theirs[1])
        # the notebook's picture is render's
        shown = np.asarray(Image.open(io.BytesIO(explanation._repr_png_())))
        assert np.array_equal(shown, render_row(explanation.rows[0], explanation.image, RenderOptions()))


def test_chosen_paths_and_a_changed_file(run, photos, tmp_path):
    [coffee] = read_explanations(run, paths=["coffee.jpg"])
    assert coffee.path == "coffee.jpg"
    moved = tmp_path / "photos"
    shutil.copytree(photos, moved)
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(moved / "coffee.jpg")
    with pytest.raises(ImageError, match="coffee.jpg: the file changed since it was explained"):
        list(read_explanations(run, source=str(moved), paths=["coffee.jpg"]))

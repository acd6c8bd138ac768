import numpy as np
import skimage.data
from lime.lime_image import LimeImageExplainer
from PIL import Image

from xai_batch.maths.superpixels import Quickshift
from xai_batch.maths import quickshift_segments
from xai_batch.preprocessing import SEEDS


def test_segments_are_limes_quickshift():
    image = SEEDS.frame(Image.fromarray(skimage.data.coffee()))
    explainer = LimeImageExplainer(random_state=4)
    explanation = explainer.explain_instance(
        image, lambda b: np.ones((len(b), 2)) / 2, top_labels=1, hide_color=0, num_samples=2, random_seed=4
    )
    segments = quickshift_segments(image, Quickshift(), seed=4)
    assert np.array_equal(segments, explanation.segments)
    assert set(np.unique(segments)) == set(range(int(segments.max()) + 1))

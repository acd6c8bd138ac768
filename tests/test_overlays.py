import numpy as np
import pytest
from lime.lime_image import ImageExplanation
from PIL import Image
from skimage.segmentation import mark_boundaries

from xai_batch.analysis.overlays import GREY, boundaries, heatmap, hide_rest, side_by_side
from xai_batch.analysis.overlays import overlay_name


@pytest.fixture(scope="module")
def case():
    """A photo-like image, a superpixel grid and signed weights, as lime would hold them."""
    import skimage.data

    image = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((224, 224)))
    segments = (np.arange(224)[:, None] // 28) * 8 + np.arange(224)[None, :] // 28  # 64 squares
    weights = np.random.default_rng(0).normal(0, 0.1, 64)
    return image, segments, weights


def _limes(image, segments, weights, **options):
    """lime's own figure: get_image_and_mask, then the seed's mark_boundaries(temp / 255.0, mask)."""
    explanation = ImageExplanation(image, segments)
    order = np.argsort(-np.abs(weights), kind="stable")
    explanation.local_exp = {3: [(int(s), float(weights[s])) for s in order]}
    temp, mask = explanation.get_image_and_mask(3, **options)
    return np.clip(np.round(mark_boundaries(temp / 255.0, mask) * 255), 0, 255).astype(np.uint8), mask


@pytest.mark.parametrize("positive_only,num_features", [(False, 5), (True, 5), (False, 10)])
def test_boundaries_is_the_seeds_lime_figure_pixel_for_pixel(case, positive_only, num_features):
    image, segments, weights = case
    expected, mask = _limes(image, segments, weights, positive_only=positive_only, num_features=num_features)
    ours = boundaries(image, segments, weights, num_features, positive_only)
    assert ours.dtype == np.uint8 and ours.shape == image.shape
    assert np.array_equal(ours, expected)
    assert (mask != 0).any() and not np.array_equal(ours, image)  # something was drawn


def test_hide_rest_keeps_only_the_selected_superpixels(case):
    image, segments, weights = case
    _, mask = _limes(image, segments, weights, positive_only=True, num_features=5, hide_rest=True)
    ours = hide_rest(image, segments, weights, 5, positive_only=True)
    assert np.array_equal(ours[mask == 1], image[mask == 1])
    assert (ours[mask == 0] == GREY).all()


def test_heatmap_colours_follow_the_weights(case):
    image, segments, weights = case
    picture = heatmap(image, segments, weights)
    assert picture.shape[1] == 224 and picture.shape[0] > 224  # a legend underneath
    most_for, most_against = int(np.argmax(weights)), int(np.argmin(weights))
    inner = np.zeros((224, 224), bool)
    inner[2:-2, 2:-2] = True  # away from the drawn boundaries

    def mean_colour(segment):
        return picture[:224][(segments == segment) & inner].astype(float).mean(axis=0)

    green, red = mean_colour(most_for), mean_colour(most_against)
    assert green[1] > green[0] and red[0] > red[1]
    assert np.array_equal(heatmap(image, segments, weights), picture)  # deterministic


def test_side_by_side_with_and_without_a_caption(case):
    image, segments, weights = case
    explanation = boundaries(image, segments, weights)
    captioned = side_by_side(image, explanation, "tabby  0.91")
    blind = side_by_side(image, explanation, None)
    assert blind.shape == (224, 2 * 224 + 8, 3)
    assert captioned.shape[0] > 224 and captioned.shape[1] == blind.shape[1]
    assert np.array_equal(captioned[:224], blind)
    assert (captioned[224:] < 128).any()  # the caption's text


def test_overlay_names_are_safe_deterministic_and_distinct():
    names = [overlay_name(path, label, "boundaries") for path, label in
             [("cat/chelsea.jpg", 3), ("cat/chelsea.jpg", 4), ("cat__chelsea.jpg", 3), ("../../etc/passwd", 0),
              (".hidden/ü b.png", 1), ("/abs/path.png", 2)]]
    assert len(set(names)) == len(names)
    for name in names:
        assert "/" not in name and "\\" not in name and not name.startswith(".") and name.endswith(".png")
    assert overlay_name("cat/chelsea.jpg", 3, "boundaries") == names[0]
    assert names[0].startswith("cat__chelsea.jpg.label3.lime.boundaries.")
    gradcam = overlay_name("cat/chelsea.jpg", 3, "boundaries", "gradcam")
    assert gradcam.startswith("cat__chelsea.jpg.label3.gradcam.boundaries.") and gradcam not in names

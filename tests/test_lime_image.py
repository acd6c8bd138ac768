"""lime's explainer for many images (``xai_batch.LimeImageExplainer``) against lime 0.2.0.1's own, on a real Ray."""

import threading

import numpy as np
import pytest
import skimage.data
from lime import lime_image
from PIL import Image

from helpers import load_model
from xai_batch import LimeImageExplainer
from xai_batch.errors import ConfigError, ImageError, XaiBatchError
from xai_batch.reference import seed_batch_predict

NUM_SAMPLES = 60


@pytest.fixture(scope="module")
def pictures() -> list[np.ndarray]:
    """Three photos at the seeds' size, and one smaller and not square."""
    return [skimage.data.chelsea()[:224, :224], skimage.data.astronaut()[:224, :224], skimage.data.coffee()[:224, :224],
            skimage.data.rocket()[100:196, 200:328]]


def colour_classifier_of(weights: np.ndarray):
    """A classifier that is not a torch model: softmax of a batch's mean colour through ``weights``. A closure,
    as in a notebook: it travels by value (a function of this test module would be imported by name, and
    Ray's workers cannot import the tests)."""
    def classify(batch: np.ndarray) -> np.ndarray:
        logits = (batch.reshape(len(batch), -1, 3).mean(axis=1) / 255.0) @ weights
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    return classify


colour_classifier = colour_classifier_of(np.array([[2.0, -1.0, 0.5], [-1.5, 2.5, 0.0], [0.5, 0.5, -2.0]]))


def module_level_classifier(batch: np.ndarray) -> np.ndarray:
    """Importable only from this test module, which Ray's workers cannot import."""
    return colour_classifier(batch)


def assert_limes(explanation, image, classifier_fn, **options) -> None:
    """``explanation`` is lime's own for its seed: segments, top labels, weights (1e-4) and intercepts."""
    seed = explanation.seed
    lime = lime_image.LimeImageExplainer(random_state=seed).explain_instance(
        image, classifier_fn, random_seed=seed, **options)
    assert np.array_equal(explanation.segments, lime.segments)
    assert explanation.top_labels == lime.top_labels
    for label in lime.local_exp:
        ours, theirs = dict(explanation.local_exp[label]), dict(lime.local_exp[label])
        assert [feature for feature, _ in explanation.local_exp[label]] == [f for f, _ in lime.local_exp[label]]
        np.testing.assert_allclose([ours[f] for f in theirs], list(theirs.values()), atol=1e-4, rtol=0)
        assert explanation.intercept[label] == pytest.approx(lime.intercept[label], abs=1e-4)
    assert explanation.get_image_and_mask(lime.top_labels[0], num_features=5)[1].tolist() == \
        lime.get_image_and_mask(lime.top_labels[0], num_features=5)[1].tolist()


def test_a_numpy_classifier_gives_limes_explanations(ray_session, pictures):
    """A function that is no torch model, lime's default mean-colour hiding, two labels each."""
    explanations = LimeImageExplainer(random_state=7).explain_instances(
        pictures, colour_classifier, top_labels=2, num_samples=NUM_SAMPLES, progress_bar=False)
    assert len(explanations) == len(pictures)
    for explanation, image in zip(explanations, pictures):
        assert isinstance(explanation, lime_image.ImageExplanation) and explanation.image.shape == image.shape
        assert_limes(explanation, image, colour_classifier, top_labels=2, num_samples=NUM_SAMPLES)


def test_the_seeds_resnet_closure_gives_limes_explanations(ray_session, pictures, random_checkpoint):
    """The seeds' batch_predict over a ResNet18 object: the closure travels to the replicas with its model."""
    batch_predict = seed_batch_predict(load_model(random_checkpoint))
    images = pictures[:3]
    explanations = LimeImageExplainer(random_state=1).explain_instances(
        images, batch_predict, top_labels=1, hide_color=0, num_samples=NUM_SAMPLES, batch_size=25,
        progress_bar=False)
    for explanation, image in zip(explanations, images):
        assert_limes(explanation, image, batch_predict, top_labels=1, hide_color=0, num_samples=NUM_SAMPLES)


def test_seeds_follow_the_pixels_not_the_order_the_batching_or_the_form(ray_session, pictures, tmp_path):
    rocket = pictures[3]
    Image.fromarray(rocket).save(tmp_path / "rocket.png")
    explainer = LimeImageExplainer(random_state=7)
    first = explainer.explain_instances([pictures[0], rocket], colour_classifier, num_samples=NUM_SAMPLES,
                                        progress_bar=False)
    again = explainer.explain_instances([str(tmp_path / "rocket.png"), Image.fromarray(pictures[0])],
                                        colour_classifier, num_samples=NUM_SAMPLES, batch_size=7, progress_bar=False)
    assert [e.seed for e in first] == [e.seed for e in reversed(again)]
    for one, other in zip(first, reversed(again)):
        assert one.local_exp == other.local_exp and np.array_equal(one.segments, other.segments)
    other_state = LimeImageExplainer(random_state=8).explain_instances(
        [rocket], colour_classifier, num_samples=NUM_SAMPLES, progress_bar=False)
    assert other_state[0].seed != first[1].seed


def test_lime_s_own_options_are_honoured(ray_session, pictures):
    """Fixed labels instead of top labels (lime's top_labels=0), a segmentation function whose labels start
    at 1, a regressor, another distance."""
    from lime.wrappers.scikit_image import SegmentationAlgorithm
    from sklearn.linear_model import Lasso

    # slic numbers its segments from 1: lime's column z hides label z, and the last label is never hidden
    options = dict(labels=(0, 2), top_labels=0, hide_color=128, num_samples=NUM_SAMPLES,
                   segmentation_fn=SegmentationAlgorithm("slic", n_segments=20, compactness=10),
                   model_regressor=Lasso(alpha=1e-4), distance_metric="euclidean")
    [explanation] = LimeImageExplainer(random_state=2, kernel_width=0.5).explain_instances(
        [pictures[1]], colour_classifier, progress_bar=False, **options)
    assert sorted(explanation.local_exp) == [0, 2]
    lime = lime_image.LimeImageExplainer(random_state=explanation.seed, kernel_width=0.5).explain_instance(
        pictures[1], colour_classifier, random_seed=explanation.seed, **options)
    assert np.array_equal(explanation.segments, lime.segments)
    for label in (0, 2):
        np.testing.assert_allclose([w for _, w in explanation.local_exp[label]], [w for _, w in lime.local_exp[label]],
                                   atol=1e-6, rtol=0)


def test_bad_input_is_one_line_naming_what(ray_session, pictures):
    explainer = LimeImageExplainer(random_state=0)

    def raises(batch):
        raise RuntimeError("the model is not loaded")

    with pytest.raises(XaiBatchError) as failed:
        explainer.explain_instances(pictures[:2], raises, num_samples=NUM_SAMPLES, progress_bar=False)
    assert str(failed.value).startswith("image 0: classifier_fn failed: RuntimeError: the model is not loaded")
    assert "\n" not in str(failed.value) and failed.value.__suppress_context__

    with pytest.raises(XaiBatchError, match=r"image 0: classifier_fn failed: ValueError: classifier_fn returned an "
                                            r"array of shape \(\d+,\) for \d+ images"):
        explainer.explain_instances(pictures[:1], lambda batch: np.ones(len(batch)), num_samples=NUM_SAMPLES,
                                    progress_bar=False)

    with pytest.raises(ImageError, match=r"image 1 is a float64 array of shape \(8, 8, 3\): explain_instances takes"):
        explainer.explain_instances([pictures[0], np.zeros((8, 8, 3))], colour_classifier, progress_bar=False)
    with pytest.raises(ImageError, match="image 0 is a uint8 array of shape"):
        explainer.explain_instances([np.zeros((8, 8, 4), np.uint8)], colour_classifier, progress_bar=False)
    with pytest.raises(ImageError, match=r"image 0 \(.*missing.png\)"):
        explainer.explain_instances(["missing.png"], colour_classifier, progress_bar=False)

    with pytest.raises(XaiBatchError, match="its module 'test_lime_image' cannot be imported by Ray's workers"):
        explainer.explain_instances(pictures[:1], module_level_classifier, progress_bar=False)
    lock = threading.Lock()
    with pytest.raises(ConfigError, match="classifier_fn cannot be sent to Ray's workers"):
        explainer.explain_instances(pictures[:1], lambda batch, lock=lock: colour_classifier(batch), progress_bar=False)
    with pytest.raises(ConfigError, match="distance_metric 'nearby' is not one"):
        explainer.explain_instances(pictures[:1], colour_classifier, distance_metric="nearby", progress_bar=False)
    with pytest.raises(ConfigError, match="num_samples must be a whole number"):
        explainer.explain_instances(pictures[:1], colour_classifier, num_samples=0, progress_bar=False)
    with pytest.raises(ConfigError, match="random_state must be"):
        LimeImageExplainer(random_state="seven").explain_instances(pictures[:1], colour_classifier, progress_bar=False)
    assert explainer.explain_instances([], colour_classifier) == []

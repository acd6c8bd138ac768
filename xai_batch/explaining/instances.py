"""lime's ``explain_instance`` cut in two around the model, for images held in memory.

:func:`prepare_instance` is everything before lime calls ``classifier_fn``
(the segments, the image hidden superpixels show, the sample rows) and
:func:`lime_explanation` everything after (the distances, the labels to
explain, lime's own ``LimeBase`` fit for each), both as lime 0.2.0.1 does
them for an explainer made with ``random_state=seed``, so an image's
:class:`lime.lime_image.ImageExplanation` is the one
``LimeImageExplainer(random_state=seed).explain_instance(image, classifier_fn, ...,
random_seed=seed)`` returns. The model's answers in between come from the
replicas. Plain code: Ray runs these as tasks, tests call them directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from xai_batch.explaining.prepared import PreparedImage
from xai_batch.maths import hidden_image, sample_rows

__all__ = ["InstanceRecipe", "prepare_instance", "lime_explanation"]


@dataclass(frozen=True)
class InstanceRecipe:
    """lime's options for one ``explain_instance`` call, the explainer's included; lime's names and defaults.

    ``random_seed`` is lime's segmentation seed; None means each image's own
    seed (lime would draw one from the explainer's random state).
    """

    labels: tuple[int, ...] = (1,)
    hide_color: int | float | None = None
    top_labels: int | None = 5
    num_features: int = 100000
    num_samples: int = 1000
    segmentation_fn: Callable[[np.ndarray], np.ndarray] | None = None
    distance_metric: str = "cosine"
    model_regressor: object | None = None
    random_seed: int | None = None
    kernel_width: float = 0.25
    kernel: Callable | None = None
    verbose: bool = False
    feature_selection: str = "auto"


def prepare_instance(image: np.ndarray, seed: int, recipe: InstanceRecipe) -> PreparedImage:
    """The image's superpixels (lime's quickshift seeded with ``recipe.random_seed`` or else ``seed``, or
    the recipe's ``segmentation_fn``), the image hidden superpixels show (``hide_color``; None: each
    superpixel's mean colour) and lime's sample rows for ``seed``."""
    from lime.wrappers.scikit_image import SegmentationAlgorithm

    segmentation = recipe.segmentation_fn or SegmentationAlgorithm(
        "quickshift", kernel_size=4, max_dist=200, ratio=0.2,
        random_seed=seed if recipe.random_seed is None else recipe.random_seed)
    segments = segmentation(image)
    rows = sample_rows(seed, recipe.num_samples, np.unique(segments).shape[0])
    return PreparedImage(image, hidden_image(image, segments, recipe.hide_color), segments, rows.astype(np.uint8))


def lime_explanation(prepared: PreparedImage, answers: Sequence[np.ndarray], seed: int, recipe: InstanceRecipe):
    """lime's ``ImageExplanation`` of the image from the model's ``answers`` to its sample rows, in order,
    with the attribute ``seed`` added: lime's own code from the sample rows on."""
    import sklearn.metrics
    from lime.lime_image import ImageExplanation, LimeImageExplainer

    explainer = LimeImageExplainer(kernel_width=recipe.kernel_width, kernel=recipe.kernel, verbose=recipe.verbose,
                                   feature_selection=recipe.feature_selection, random_state=seed)
    segments = prepared.segments
    # lime's own draw from the explainer's random state, leaving it where lime's fit finds it
    data = explainer.random_state.randint(0, 2, recipe.num_samples * np.unique(segments).shape[0]) \
        .reshape((recipe.num_samples, -1))
    data[0, :] = 1
    labels = np.concatenate([np.asarray(answer) for answer in answers])
    distances = sklearn.metrics.pairwise_distances(data, data[0].reshape(1, -1), metric=recipe.distance_metric).ravel()
    explanation = ImageExplanation(prepared.image, segments)
    top = list(recipe.labels)
    if recipe.top_labels:
        top = np.argsort(labels[0])[-recipe.top_labels:]
        explanation.top_labels = list(top)
        explanation.top_labels.reverse()
    for label in top:
        (explanation.intercept[label], explanation.local_exp[label], explanation.score,
         explanation.local_pred) = explainer.base.explain_instance_with_data(
            data, labels, distances, label, recipe.num_features, model_regressor=recipe.model_regressor,
            feature_selection=recipe.feature_selection)
    explanation.seed = seed
    return explanation

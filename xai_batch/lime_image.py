"""lime's ``LimeImageExplainer`` for many images at once: lime's calls and objects, the work on Ray.

In a notebook, instead of lime's loop over ``explain_instance``::

    from xai_batch import LimeImageExplainer

    explainer = LimeImageExplainer(random_state=0)
    explanations = explainer.explain_instances(images, batch_predict, top_labels=1, hide_color=0,
                                               num_samples=1000)
    temp, mask = explanations[0].get_image_and_mask(explanations[0].top_labels[0], positive_only=False,
                                                    num_features=5, hide_rest=False)

Each result is lime's own :class:`lime.lime_image.ImageExplanation`. The
user's ``batch_predict`` (lime's ``classifier_fn``) runs in model replicas
on Ray, on many perturbed images a call; segmentation and lime's fit run as
Ray tasks beside them, so the images of a call are explained at once.

**Seeds.** Image ``i`` is explained with its own seed, ``explanations[i].seed``,
derived from the explainer's ``random_state`` and the image's pixels (never
its position, its neighbours or the batching), and its explanation is the one
``lime.lime_image.LimeImageExplainer(random_state=seed).explain_instance(image,
classifier_fn, ..., random_seed=seed)`` gives: the same segments, top labels
and weights within lime's tolerance (the function sees more images per call).
With an int ``random_state`` the seeds are the same on every call; with a
``numpy.random.RandomState`` one number is drawn from it per call, and with
None (lime's default) from numpy's global random state, so
``np.random.seed(...)`` makes a call reproducible as it does lime's.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence

import numpy as np

from xai_batch.errors import ConfigError, ImageError
from xai_batch.images import DEFAULT_MAX_PIXELS, file_bytes, image_seed, open_rgb

__all__ = ["LimeImageExplainer"]

SEED_RANGE = 2**31  # the seeds lime's RandomState takes


class LimeImageExplainer:
    """lime's ``LimeImageExplainer``, its constructor's arguments and defaults, with ``explain_instances``.

    ``replicas`` is how many copies of ``classifier_fn`` run (default: one
    per GPU; without GPUs one per core, at most four, each on its share of
    the cores); ``address`` the Ray to join when this process has
    none (default: a local Ray started for each call and stopped after it;
    call ``ray.init()`` once to keep one between calls).
    """

    def __init__(self, kernel_width: float = 0.25, kernel: Callable | None = None, verbose: bool = False,
                 feature_selection: str = "auto", random_state: int | np.random.RandomState | None = None,
                 replicas: int | None = None, address: str | None = None) -> None:
        if feature_selection not in ("auto", "forward_selection", "lasso_path", "highest_weights", "none"):
            raise ConfigError(f"feature_selection must be lime's auto, forward_selection, lasso_path, "
                              f"highest_weights or none, got {feature_selection!r}", "feature_selection")
        if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1):
            raise ConfigError(f"replicas must be a whole number of at least 1, got {replicas!r}", "replicas")
        self.kernel_width = float(kernel_width)
        self.kernel = kernel
        self.verbose = verbose
        self.feature_selection = feature_selection
        self.random_state = random_state
        self.replicas = replicas
        self.address = address

    def explain_instances(
        self, images: Sequence, classifier_fn: Callable[[np.ndarray], np.ndarray], labels: Sequence[int] = (1,),
        hide_color: int | float | None = None, top_labels: int | None = 5, num_features: int = 100000,
        num_samples: int = 1000, batch_size: int | None = None, segmentation_fn: Callable | None = None,
        distance_metric: str = "cosine", model_regressor: object | None = None, random_seed: int | None = None,
        progress_bar: bool = True,
    ) -> list:
        """lime's ``explain_instance`` over ``images`` (HxWx3 uint8 arrays, PIL images or paths): one
        ``ImageExplanation`` per image, in order, each with its ``seed``.

        The parameters are lime's. ``classifier_fn`` takes a batch of
        perturbed images (N, H, W, 3) uint8 and returns (N, classes)
        probabilities; it is sent to the replicas with whatever it closes
        over. ``batch_size`` is the images per call of it; None means 128 in
        a replica with a GPU (lime's 10 would leave it idle) and lime's 10 on
        a CPU, where the seeds' ResNet18 function ran fastest; never more than
        512 MB of images a call, however large the images.
        ``random_seed`` is lime's segmentation seed (default: each image's
        own seed). ``progress_bar`` shows one bar of images.
        """
        from tqdm.auto import tqdm

        from xai_batch.distributed.instances import explain_on_replicas
        from xai_batch.engines.function_engine import ClassifierFunction
        from xai_batch.explaining.instances import InstanceRecipe

        if not callable(classifier_fn):
            raise ConfigError(f"classifier_fn must be a function, got {type(classifier_fn).__name__}",
                              "classifier_fn")
        _check_count("num_samples", num_samples, 1)
        _check_count("num_features", num_features, 1)
        if batch_size is not None:
            _check_count("batch_size", batch_size, 1)
        if top_labels:  # lime's: None or 0 explains ``labels`` instead
            _check_count("top_labels", top_labels, 1)
        _check_distance(distance_metric)
        pixels = [_pixels(image, index) for index, image in enumerate(images)]
        base = self._base_seed()
        seeds = [image_seed(base, _digest(image)) for image in pixels]
        recipe = InstanceRecipe(
            labels=tuple(labels), hide_color=hide_color, top_labels=top_labels, num_features=num_features,
            num_samples=num_samples, segmentation_fn=segmentation_fn, distance_metric=distance_metric,
            model_regressor=model_regressor, random_seed=random_seed, kernel_width=self.kernel_width,
            kernel=self.kernel, verbose=self.verbose, feature_selection=self.feature_selection)
        function = ClassifierFunction(classifier_fn, batch_size)
        if not pixels:
            return []
        with tqdm(total=len(pixels), unit="img", desc="explain_instances", disable=not progress_bar) as bar:
            return explain_on_replicas(pixels, seeds, function, recipe, self.replicas, self.address, bar)

    def _base_seed(self) -> int:
        """The number every image's seed is derived from: the int given, else one drawn (see the module)."""
        state = self.random_state
        if state is None:
            return int(np.random.randint(0, SEED_RANGE))
        if isinstance(state, np.random.RandomState):
            return int(state.randint(0, SEED_RANGE))
        if isinstance(state, (int, np.integer)) and not isinstance(state, bool):
            return int(state)
        raise ConfigError(f"random_state must be an int, a numpy RandomState or None, got {type(state).__name__}",
                          "random_state")


def _pixels(image: object, index: int) -> np.ndarray:
    """An input as lime takes it: an (H, W, 3) uint8 array (a grey (H, W) one made RGB, as lime does)."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        from xai_batch.storage import locate

        try:
            data = locate(os.fspath(image)).read_bytes(file_bytes(DEFAULT_MAX_PIXELS))
            return np.asarray(open_rgb(data))
        except (OSError, ImageError) as exc:
            raise ImageError(f"image {index} ({os.fspath(image)}): {exc}") from None
    if isinstance(image, Image.Image):
        if image.width * image.height > DEFAULT_MAX_PIXELS:
            raise ImageError(f"image {index} has {image.width * image.height} pixels, over {DEFAULT_MAX_PIXELS}")
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image {index} is a {type(image).__name__}: explain_instances takes HxWx3 uint8 arrays, "
                         "PIL images or paths")
    if image.ndim == 2 and image.dtype == np.uint8:
        from skimage.color import gray2rgb

        image = gray2rgb(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or not image.shape[0] or not image.shape[1]:
        raise ImageError(f"image {index} is a {image.dtype} array of shape {image.shape}: explain_instances takes "
                         "HxWx3 uint8 arrays, PIL images or paths")
    if image.shape[0] * image.shape[1] > DEFAULT_MAX_PIXELS:
        raise ImageError(f"image {index} has {image.shape[0] * image.shape[1]} pixels, over {DEFAULT_MAX_PIXELS}")
    return np.ascontiguousarray(image)


def _digest(pixels: np.ndarray) -> str:
    """The SHA-256 of an image's shape and pixels: what its seed is derived from."""
    return hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()


def _check_distance(metric: object) -> None:
    """Refuse, before any work, a distance scikit-learn's ``pairwise_distances`` (lime's) does not know."""
    import sklearn.metrics

    try:
        sklearn.metrics.pairwise_distances(np.ones((2, 2)), np.ones((1, 2)), metric=metric)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"distance_metric {metric!r} is not one scikit-learn's pairwise_distances knows: "
                          f"{str(exc).splitlines()[0]}", "distance_metric") from None


def _check_count(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ConfigError(f"{name} must be a whole number of at least {least}, got {value!r}", name)

"""Explanation methods, chosen by name: LIME, KernelSHAP and Grad-CAM.

Each method turns the model's outputs on one image into one weight per
superpixel for each explained label (an :class:`Attribution`), so that
their explanations compare superpixel by superpixel on the same quickshift
segments. There are two kinds, two small interfaces: a
:class:`PerturbationMethod` (LIME, KernelSHAP) draws 0/1 sample rows, which
the model replicas evaluate like any others; a :class:`GradientMethod`
(Grad-CAM) gives the replica a gradient pass to run on the image instead.
The runner tells them apart in one place (the pipeline's ``_queue_work``);
everything else asks the method. Adding a method is a module here with a
subclass of one of them and an entry in ``_MODULES``. May import the maths,
the engines and the checkpoint loader (a gradient method runs the model
itself); nothing of the config, the manifest, Ray or the commands.
"""

from __future__ import annotations

import abc
import hashlib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where a gradient pass is built, not with the registry
    from xai_batch.models import LoadedCheckpoint

__all__ = [
    "METHODS", "DEFAULT_METHOD", "LIME", "Attribution", "Method", "PerturbationMethod", "GradientMethod", "GradientOutputs",
    "get_method", "method_seed", "explained_labels",
]

LIME = "lime"  # the method rows had before there were methods: its hash, seeds and old rows stay LIME's
METHODS: tuple[str, ...] = (LIME, "kernelshap", "gradcam")
DEFAULT_METHOD = LIME
_MODULES = {"lime": "lime", "kernelshap": "kernelshap", "gradcam": "gradcam"}


@dataclass(frozen=True)
class Attribution:
    """One method's explanation of one label: a weight per superpixel.

    ``intercept`` is the surrogate's intercept (LIME) or the base value
    (KernelSHAP); ``score`` and ``local_pred`` are LIME's fit statistics;
    ``order`` is the ranking that picks the mask's top superpixels, when the
    method has its own (lime's ``local_exp``); ``heatmap`` Grad-CAM's map.
    """

    label: int
    weights: np.ndarray  # (S,) float64
    intercept: float | None = None
    score: float | None = None
    local_pred: float | None = None
    order: tuple[int, ...] | None = None
    heatmap: np.ndarray | None = None  # (crop, crop) float32 in [0, 1]


class PerturbationMethod(abc.ABC):
    """A method that explains from the model's outputs on perturbed copies of the image (LIME, KernelSHAP).

    captum's shape: ``sample(seed, num_segments, num_samples)`` draws the
    perturbations, a (n, S) 0/1 matrix over the superpixels (1 keeps one);
    the model replicas evaluate them in chunks like any others; and
    ``attribute(rows, segments, outputs, labels, seed, num_samples, device)``
    fits the method's surrogate or solver to ``outputs``, the (n, C)
    probabilities on the first n ``rows``, returning one :class:`Attribution`
    per label in ``labels``. ``seed`` and ``num_samples`` are what ``sample``
    drew with; ``device``, where given, is a torch device the method may fit
    on (LIME does, in the replica's stage on CUDA); without one every method
    runs its reference's own code on the CPU.

    Both kinds answer ``combine`` (the replicas' outputs as ``attribute``
    takes them), ``explained`` (the probabilities on the image and the labels
    to explain) and ``samples_used``, so the stages around the model never
    ask which kind a method is.
    """

    name: str
    heatmaps = False  # whether its rows carry a pixel map besides the superpixel weights

    @abc.abstractmethod
    def sample(self, seed: int, num_segments: int, num_samples: int) -> np.ndarray: ...

    @abc.abstractmethod
    def attribute(
        self, rows: np.ndarray, segments: np.ndarray, outputs: np.ndarray, labels: list[int], seed: int,
        num_samples: int, device: str | None = None,
    ) -> list[Attribution]: ...

    def combine(self, chunks: Sequence[np.ndarray]) -> np.ndarray:
        """The replicas' outputs, chunk by chunk, as the one (n, C) block ``attribute`` takes."""
        return np.concatenate(chunks)

    def explained(self, outputs: np.ndarray, top_labels: int) -> tuple[np.ndarray, list[int]]:
        """The probabilities on the whole image (row 0) and the labels to explain, as lime ranks them."""
        return outputs[0], explained_labels(outputs[0], top_labels)

    def samples_used(self, outputs: np.ndarray) -> int:
        return len(outputs)


@dataclass(frozen=True)
class GradientOutputs:
    """What a gradient pass gives: the (C,) probabilities of its forward pass, the labels explained
    (most probable first, as lime ranks them) and one (H, W) map in [0, 1] per label."""

    probs: np.ndarray
    labels: list[int]
    maps: np.ndarray


class GradientMethod(abc.ABC):
    """A method that explains from the model's gradients on the image itself (Grad-CAM).

    ``gradient_pass(loaded, device, layer)`` builds from the parsed checkpoint, once per model
    replica, what the replica calls with a (crop, crop, 3) uint8 image and the
    number of labels to explain; it returns :class:`GradientOutputs`.
    ``attribute(rows, segments, outputs, labels, seed, num_samples)`` turns
    those outputs into one :class:`Attribution` per label; there are no
    sample rows (``sample`` draws none), so nothing is perturbed.
    """

    name: str
    heatmaps = True

    @abc.abstractmethod
    def gradient_pass(
        self, loaded: LoadedCheckpoint, device: str, layer: str | None = None
    ) -> Callable[[np.ndarray, int], GradientOutputs]:
        """``layer`` is the dotted path of the layer to explain; None for the method's default for the family."""

    def sample(self, seed: int, num_segments: int, num_samples: int) -> np.ndarray:
        """No sample rows: the replica's gradient pass takes their place."""
        return np.zeros((0, num_segments), dtype=np.uint8)

    @abc.abstractmethod
    def attribute(
        self, rows: np.ndarray, segments: np.ndarray, outputs: GradientOutputs, labels: list[int], seed: int,
        num_samples: int, device: str | None = None,
    ) -> list[Attribution]: ...

    def combine(self, chunks: Sequence[GradientOutputs]) -> GradientOutputs:
        """The replica's one gradient pass."""
        (found,) = chunks
        return found

    def explained(self, outputs: GradientOutputs, top_labels: int) -> tuple[np.ndarray, list[int]]:
        """The probabilities of the pass's forward pass and the labels it explained."""
        return outputs.probs, outputs.labels

    def samples_used(self, outputs: GradientOutputs) -> None:
        """None: nothing was sampled."""
        return None


Method = PerturbationMethod | GradientMethod


def get_method(name: str) -> Method:
    """The method called ``name``; a ``ValueError`` names the valid ones."""
    if name not in _MODULES:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {name!r}")
    return importlib.import_module(f"xai_batch.methods.{_MODULES[name]}").METHOD


def method_seed(image_seed: int, method: str) -> int:
    """The seed a method draws its samples with for one image.

    LIME keeps the image's own seed (so its rows are what they always were);
    the others get their own, from the image seed and the method's name, so
    two methods never share a random stream yet any sharding reproduces both.
    """
    if method == LIME:
        return image_seed
    material = f"xai-batch/{image_seed}/{method}".encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big") % (2**31)


def explained_labels(original: np.ndarray, top_labels: int) -> list[int]:
    """The ``top_labels`` most probable labels, most probable first, ranked as lime ranks them."""
    return [int(label) for label in np.argsort(original)[-top_labels:][::-1]]

"""The model's input: how a picture becomes the array the model sees and LIME perturbs.

Preprocessing is part of the model, not of the job: a network trained on
224-pixel crops normalised with ImageNet's statistics answers something else
for any other input. So it travels with the model:

- our checkpoints record it (``"preprocessing"``; a checkpoint without it has
  the seeds'), and ``train`` writes what it trained with;
- torchvision's pretrained weights bring theirs (``weights.transforms()``,
  read by :meth:`Preprocessing.of_torchvision`);
- a TorchScript or ONNX file gets it from the JSON beside it.

It has two halves. ``frame`` (Pillow only, so CPU workers need not import
torch) resizes and centre-crops the upright RGB picture into the uint8
``(crop, crop, 3)`` array LIME perturbs; superpixels, masks, heatmaps and
overlays are all in that frame. ``mean`` and ``std`` are what the engines
normalise each perturbed image with (``ToTensor`` then ``Normalize``).

The seeds' preprocessing (:data:`SEEDS`) is ``Resize((256, 256))`` (square,
not aspect-preserving), ``CenterCrop(224)``, ImageNet's mean and std;
torchvision's weights resize the shorter side instead (``square=False``).
Both are reproduced as torchvision does them on a PIL image, pixel for
pixel (tests check both against torchvision's own transforms).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import numpy as np
from PIL import Image

from xai_batch.errors import ImageError

__all__ = ["Preprocessing", "SEEDS", "IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "MIN_CROP", "MAX_CROP",
           "MAX_RESIZE", "MAX_RESIZED_PIXELS"]

# The normalisation torchvision's ImageNet weights were trained with; our own checkpoints train with it too.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's InterpolationMode values, as Pillow resamples them (torchvision hands PIL images to Pillow).
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING, "lanczos": Image.Resampling.LANCZOS,
}
MIN_CROP = 16
MAX_CROP = 1024  # torchvision's largest input is 600 (EfficientNet-B7); a batch of 256 at 1024 is 3 GB
MAX_RESIZE = 2048
# The aspect-preserving resize scales the shorter side: a long thin picture would become a long thin picture
# of millions of pixels before its centre is cropped. Past this many the picture is refused.
MAX_RESIZED_PIXELS = 64 * 2**20


@dataclass(frozen=True)
class Preprocessing:
    """How a picture becomes the model's input; validated when made.

    ``resize`` is the side a picture is resized to: both sides when
    ``square`` (the seeds' ``Resize((256, 256))``), else the shorter side,
    the aspect kept (torchvision's ``Resize(256)``); then the centre
    ``crop`` x ``crop`` pixels are the model's input. ``interpolation`` is
    the resampling filter, by torchvision's name.
    """

    resize: int = 256
    crop: int = 224
    square: bool = True
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if isinstance(self.crop, bool) or not isinstance(self.crop, int) or not MIN_CROP <= self.crop <= MAX_CROP:
            raise ValueError(f"crop must be a whole number of pixels {MIN_CROP}..{MAX_CROP}, got {self.crop!r}")
        if (isinstance(self.resize, bool) or not isinstance(self.resize, int)
                or not self.crop <= self.resize <= MAX_RESIZE):
            raise ValueError(f"resize must be a whole number of pixels from the crop ({self.crop}) to {MAX_RESIZE}, "
                             f"got {self.resize!r}")
        if not isinstance(self.square, bool):
            raise ValueError(f"square must be true or false, got {self.square!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        for name, minimum in (("mean", -math.inf), ("std", 0.0)):
            values = getattr(self, name)
            if (not isinstance(values, (tuple, list)) or len(values) != 3
                    or not all(_finite(v) and v > minimum for v in values)):
                kind = "positive numbers" if name == "std" else "numbers"
                raise ValueError(f"{name} must be three {kind} (red, green, blue), got {values!r}")
            object.__setattr__(self, name, tuple(float(v) for v in values))

    def frame(self, rgb: Image.Image) -> np.ndarray:
        """The (crop, crop, 3) uint8 input of the upright RGB ``rgb``: resized, then its centre cropped,
        as torchvision's ``Resize`` and ``CenterCrop`` do on a PIL image."""
        width, height = rgb.size
        if self.square:
            size = (self.resize, self.resize)
        else:  # torchvision's _compute_resized_output_size: the shorter side to ``resize``, the longer truncated
            short, long = sorted((width, height))
            longer = int(self.resize * long / short)
            size = (self.resize, longer) if width <= height else (longer, self.resize)
            if size[0] * size[1] > MAX_RESIZED_PIXELS:
                raise ImageError(f"too elongated: {width}×{height} would be resized to {size[0]}×{size[1]} "
                                 f"before the model's centre crop (limit {MAX_RESIZED_PIXELS} pixels)")
        resized = rgb.resize(size, INTERPOLATIONS[self.interpolation])
        left = int(round((size[0] - self.crop) / 2.0))
        top = int(round((size[1] - self.crop) / 2.0))
        return np.asarray(resized.crop((left, top, left + self.crop, top + self.crop)), dtype=np.uint8).copy()

    def to_dict(self) -> dict:
        """As checkpoints, job records and the JSON beside a model file write it."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: Mapping) -> Preprocessing:
        """Read ``to_dict``'s form; a field left out keeps the seeds' value. ``ValueError`` names what is wrong."""
        if not isinstance(values, Mapping):
            raise ValueError(f"preprocessing must be a mapping of {', '.join(_FIELDS)}, got {type(values).__name__}")
        unknown = sorted(set(map(str, values)) - set(_FIELDS))
        if unknown:
            raise ValueError(f"unknown preprocessing field(s) {', '.join(unknown)}: "
                             f"the fields are {', '.join(_FIELDS)}")
        return cls(**{name: tuple(v) if isinstance(v, list) else v for name, v in values.items()})

    @classmethod
    def of_torchvision(cls, weights) -> Preprocessing:
        """What torchvision's pretrained ``weights`` are used with: ``weights.transforms()``'s values."""
        transform = weights.transforms()
        return cls(resize=int(transform.resize_size[0]), crop=int(transform.crop_size[0]), square=False,
                   interpolation=transform.interpolation.value, mean=tuple(transform.mean), std=tuple(transform.std))

    def describe(self) -> str:
        """One line for people: ``Resize((256, 256)), CenterCrop(224), bilinear``."""
        resize = f"Resize(({self.resize}, {self.resize}))" if self.square else f"Resize({self.resize})"
        return f"{resize}, CenterCrop({self.crop}), {self.interpolation}"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_FIELDS = tuple(field.name for field in fields(Preprocessing))
SEEDS = Preprocessing()  # the seeds' workflow: Resize((256, 256)), CenterCrop(224), ImageNet's mean and std

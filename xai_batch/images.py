"""Finding input images, reading them, and the seed's preprocessing.

Preprocessing reproduces the workflow in CONTEXT.md exactly: EXIF orientation,
RGB, ``Resize((256, 256))`` (square, not aspect-preserving), ``CenterCrop(224)``.
It is written with Pillow alone, so CPU workers need not import torch; a test
checks it against torchvision's transforms pixel for pixel.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from xai_batch.errors import ImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "INPUT_SIZE",
    "LoadedImage",
    "discover_images",
    "load_image",
    "image_seed",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
RESIZE_TO = 256
INPUT_SIZE = 224


@dataclass(frozen=True)
class LoadedImage:
    """One decoded input: the 224x224 RGB array LIME perturbs, and its facts."""

    pixels: np.ndarray  # (224, 224, 3) uint8
    sha256: str
    width: int  # original width, after EXIF orientation
    height: int


def discover_images(source: str) -> list[str]:
    """Image files under ``source``, as sorted ``/``-separated relative paths."""
    return sorted(_walk(source))


def _walk(source: str) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for name in filenames:
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                rel = os.path.relpath(os.path.join(dirpath, name), source)
                yield rel.replace(os.sep, "/")


def load_image(data: bytes) -> LoadedImage:
    """Decode file bytes into the preprocessed 224x224 RGB array.

    Raises ``ImageError`` with a one-line reason for anything Pillow cannot
    decode, so the caller can record an error row and go on.
    """
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as opened:
            upright = ImageOps.exif_transpose(opened)
            rgb = upright.convert("RGB")
    except Exception as exc:  # Pillow raises many types for bad files
        raise ImageError(f"not an image: {_one_line(exc)}") from exc
    width, height = rgb.size
    return LoadedImage(pixels=preprocess(rgb), sha256=digest, width=width, height=height)


def preprocess(rgb: Image.Image) -> np.ndarray:
    """``Resize((256, 256))`` then ``CenterCrop(224)``, as torchvision does on PIL."""
    resized = rgb.resize((RESIZE_TO, RESIZE_TO), Image.Resampling.BILINEAR)
    offset = int(round((RESIZE_TO - INPUT_SIZE) / 2.0))
    box = (offset, offset, offset + INPUT_SIZE, offset + INPUT_SIZE)
    return np.asarray(resized.crop(box), dtype=np.uint8).copy()


def image_seed(job_seed: int, sha256: str) -> int:
    """Per-image seed in [0, 2**31), from the job seed and the file's content.

    It does not depend on the file's name, its order or the actor that runs it,
    so any sharding of a job reproduces the same explanations.
    """
    material = f"xai-batch/{job_seed}/{sha256}".encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big") % (2**31)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())

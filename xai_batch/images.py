"""Finding input images, reading them, and the seed's preprocessing.

Preprocessing reproduces the workflow in CONTEXT.md exactly: EXIF orientation,
RGB, ``Resize((256, 256))`` (square, not aspect-preserving), ``CenterCrop(224)``.
It is written with Pillow alone, so CPU workers need not import torch; a test
checks it against torchvision's transforms pixel for pixel.

Inputs are whatever users have lying around, so decoding is defensive: any
mode Pillow opens becomes RGB (16-bit and float images scaled to 8 bits,
animations give their first frame), and every failure is an ``ImageError``
with a one-line reason a person understands. The size guard (``max_pixels``)
is checked on the header, before a single pixel is decoded; it replaces
Pillow's own decompression-bomb check, which would fire first with its own
message.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xai_batch.errors import ImageError, one_line

__all__ = [
    "IMAGE_EXTENSIONS",
    "INPUT_SIZE",
    "DEFAULT_MAX_PIXELS",
    "LoadedImage",
    "load_image",
    "open_rgb",
    "preprocess",
    "load_object_mask",
    "read_object_mask",
    "MASK_SUFFIXES",
    "image_seed",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
RESIZE_TO = 256
INPUT_SIZE = 224
DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels: 300 MB decoded as RGB

Image.MAX_IMAGE_PIXELS = None  # our max_pixels guard replaces Pillow's (see module docstring)


@dataclass(frozen=True)
class LoadedImage:
    """One decoded input: the 224x224 RGB array LIME perturbs, and its facts."""

    pixels: np.ndarray  # (224, 224, 3) uint8
    sha256: str
    width: int  # original width, after EXIF orientation
    height: int


def load_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode file bytes into the preprocessed 224x224 RGB array.

    Raises ``ImageError`` with a one-line reason for anything that cannot be
    explained, so the caller can record an error row and go on.
    """
    digest = hashlib.sha256(data).hexdigest()
    rgb = open_rgb(data, max_pixels)
    width, height = rgb.size
    return LoadedImage(pixels=preprocess(rgb), sha256=digest, width=width, height=height)


def open_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The upright RGB image in ``data`` (first frame of an animation)."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        opened = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image: no known image format recognised") from None
    except Exception as exc:
        raise ImageError(f"not an image: {one_line(exc)}") from exc
    kind = opened.format or "image"
    width, height = opened.size
    if width * height > max_pixels:
        raise ImageError(f"image too large: {width}×{height} > limit {max_pixels} pixels (--max-pixels)")
    try:
        opened.load()
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc) else "corrupt"
        raise ImageError(f"{reason} {kind}: {one_line(exc)}") from exc
    except Exception as exc:
        raise ImageError(f"corrupt {kind}: {one_line(exc)}") from exc
    try:
        upright = ImageOps.exif_transpose(opened)
    except Exception:  # unreadable EXIF: the pixels are still good
        upright = opened
    return _to_rgb(upright)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, scaling high-bit-depth grey to 8 bits instead of clipping it."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.float64)
        scale = 257.0 if values.max(initial=0) > 255 else 1.0
        return Image.fromarray(np.clip(np.rint(values / scale), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = np.nan_to_num(values * (255.0 if values.max(initial=0) <= 1.0 else 1.0))
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def preprocess(rgb: Image.Image) -> np.ndarray:
    """``Resize((256, 256))`` then ``CenterCrop(224)``, as torchvision does on PIL."""
    resized = rgb.resize((RESIZE_TO, RESIZE_TO), Image.Resampling.BILINEAR)
    offset = int(round((RESIZE_TO - INPUT_SIZE) / 2.0))
    box = (offset, offset, offset + INPUT_SIZE, offset + INPUT_SIZE)
    return np.asarray(resized.crop(box), dtype=np.uint8).copy()


MASK_SUFFIXES = (".png", ".mask.pgm")  # a same-named PNG, or what the generated datasets write beside an image


def read_object_mask(masks: str, path: str, image: str | None = None) -> np.ndarray | None:
    """The object mask of image ``path`` from the folder ``masks``, or None if it has none.

    ``a/b.jpg``'s mask is ``masks/a/b.png`` or ``masks/a/b.mask.pgm``. A
    candidate that is the image file itself (``image``, its full location:
    ``masks`` may be SOURCE, where ``a/b.png`` is the picture) is passed over.
    An unreadable mask is an ``ImageError``.
    """
    from xai_batch.storage import locate

    stem = os.path.splitext(path)[0]
    for suffix in MASK_SUFFIXES:
        candidate = locate(masks).child(*(stem + suffix).split("/"))
        if candidate.target == image or not candidate.is_file():
            continue
        try:
            return load_object_mask(candidate.read_bytes())
        except (OSError, ImageError) as exc:
            raise ImageError(f"object mask {stem + suffix}: {exc}") from exc
    return None


def load_object_mask(data: bytes) -> np.ndarray:
    """A ground-truth object mask (any image; bright is object) in the 224x224 frame LIME saw."""
    try:
        with Image.open(io.BytesIO(data)) as mask:
            return preprocess(ImageOps.exif_transpose(mask).convert("RGB"))[..., 0] > 127
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ImageError(f"unreadable object mask: {one_line(exc)}") from exc


def image_seed(job_seed: int, sha256: str) -> int:
    """Per-image seed in [0, 2**31), from the job seed and the file's content.

    It does not depend on the file's name, its order or the actor that runs it,
    so any sharding of a job reproduces the same explanations.
    """
    material = f"xai-batch/{job_seed}/{sha256}".encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big") % (2**31)

"""Finding input images and reading them into the model's input frame.

A picture is turned upright (EXIF orientation) and made RGB here; the
model's preprocessing (:mod:`xai_batch.preprocessing`: the seeds'
``Resize((256, 256))``, ``CenterCrop(224)`` unless the model says otherwise)
then gives the array LIME perturbs. Pillow alone, so CPU workers need not
import torch.

Inputs are whatever users have lying around, so decoding is defensive:
- Pillow opens only the formats ``IMAGE_EXTENSIONS`` promise (``IMAGE_FORMATS``),
  whatever a file's name says, so no file reaches a decoder, or an external
  program, that the tool does not mean to run; anything else is "not an image".
- A file is read up to what an image within ``max_pixels`` can take
  (:func:`file_bytes`), no further. The size guard (``max_pixels``, at most
  ``MAX_PIXELS_LIMIT``) is checked on the header, before a single pixel is decoded. Pillow's own
  decompression-bomb check stays on for the whole process at that ceiling,
  for every other image anything opens.
- Any mode becomes RGB: 16-bit and float images are scaled to 8 bits a strip
  of rows at a time, so the conversion needs little memory beyond the decoded
  image; animations give their first frame.
- Every failure is an ``ImageError`` with a one-line reason a person understands.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xai_batch.errors import ImageError, one_line
from xai_batch.preprocessing import SEEDS, Preprocessing

__all__ = [
    "IMAGE_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "MAX_PIXELS_LIMIT",
    "IMAGE_FORMATS",
    "decode_memory",
    "file_bytes",
    "open_stored_png",
    "LoadedImage",
    "load_image",
    "open_rgb",
    "load_object_mask",
    "read_object_mask",
    "MASK_SUFFIXES",
    "image_seed",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")  # Pillow's names for what the extensions promise
MASK_FORMATS = (*IMAGE_FORMATS, "PPM")  # and the generated datasets' .mask.pgm
DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels: 400 MB decoded (Pillow keeps RGB in 4 bytes a pixel)
MAX_PIXELS_LIMIT = 1_000_000_000  # the most --max-pixels allows: a gigapixel, 12 GB to decode and convert
DECODE_BYTES_PER_PIXEL = 12  # decoded, turned upright and converted: three 4-byte copies at the peak
FILE_BYTES_PER_PIXEL = 8  # the most a file within --max-pixels holds: 16-bit RGBA, stored uncompressed
FILE_BYTES_SLACK = 16 << 20  # and its metadata (EXIF, ICC profiles, thumbnails)
STRIP_ROWS = 256  # rows converted to 8 bits at once
STORED_PNG_PIXELS = 4096 * 4096  # segments, masks and heatmaps are in the model's frame: far smaller

Image.MAX_IMAGE_PIXELS = MAX_PIXELS_LIMIT  # Pillow's bomb check for every open, at our own ceiling
warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # past the ceiling our own check refuses first


@dataclass(frozen=True)
class LoadedImage:
    """One decoded input: the RGB array LIME perturbs, in the model's frame, and its facts."""

    pixels: np.ndarray  # (crop, crop, 3) uint8
    sha256: str
    width: int  # original width, after EXIF orientation
    height: int


def decode_memory(max_pixels: int) -> int:
    """Bytes one decode may need at its peak: the file's bytes and the most an image within ``max_pixels`` takes."""
    return max_pixels * DECODE_BYTES_PER_PIXEL + file_bytes(max_pixels)


def file_bytes(max_pixels: int) -> int:
    """The most bytes an input file is read to: what an image within ``max_pixels`` can take, stored
    uncompressed at 16 bits a channel with an alpha channel, and its metadata. A larger file is not
    read (a small valid header on gigabytes of anything would otherwise fill a worker's memory)."""
    return max_pixels * FILE_BYTES_PER_PIXEL + FILE_BYTES_SLACK


def load_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, preprocessing: Preprocessing = SEEDS) -> LoadedImage:
    """Decode file bytes into the model's input frame (``preprocessing``: the seeds' 224x224 crop by default).

    Raises ``ImageError`` with a one-line reason for anything that cannot be
    explained, so the caller can record an error row and go on.
    """
    digest = hashlib.sha256(data).hexdigest()
    rgb = open_rgb(data, max_pixels)
    width, height = rgb.size
    return LoadedImage(pixels=preprocessing.frame(rgb), sha256=digest, width=width, height=height)


def open_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The upright RGB image in ``data`` (first frame of an animation)."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    opened = _open_checked(data, IMAGE_FORMATS, max_pixels, "image")
    kind = opened.format or "image"
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


def _open_checked(data: bytes, formats: tuple[str, ...], max_pixels: int, what: str) -> Image.Image:
    """``data`` opened as one of ``formats``, its header's size within ``max_pixels``; nothing decoded yet."""
    try:
        opened = Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        named = formats[0] if len(formats) == 1 else f"{', '.join(formats[:-1])} or {formats[-1]}"
        raise ImageError(f"not an image: not a {named} file") from None
    except Image.DecompressionBombError:  # Pillow refuses past twice its ceiling before the size is ours to see
        raise ImageError(f"{what} too large: over {2 * MAX_PIXELS_LIMIT} pixels, past any --max-pixels") from None
    except Exception as exc:
        raise ImageError(f"not an image: {one_line(exc)}") from exc
    width, height = opened.size
    if width * height > max_pixels:
        raise ImageError(f"{what} too large: {width}×{height} > limit {max_pixels} pixels (--max-pixels)")
    return opened


def open_stored_png(data: bytes) -> Image.Image:
    """A PNG the tools wrote into a manifest (segments, masks, heatmaps), header-checked like an image.

    A manifest may come from anywhere, so its PNGs are opened as PNG only and
    refused past ``STORED_PNG_PIXELS`` before any pixel is decoded.
    """
    return _open_checked(data, ("PNG",), STORED_PNG_PIXELS, "stored PNG")


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, scaling high-bit-depth grey to 8 bits instead of clipping it."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return Image.fromarray(_grey_to_8_bits(image), "L").convert("RGB")
    return image.convert("RGB")


def _grey_to_8_bits(image: Image.Image) -> np.ndarray:
    """A 16-bit, 32-bit or float grey image as 8 bits, ``STRIP_ROWS`` rows at a time.

    Integers above 255 are scaled by 1/257 (65535 -> 255), floats within [0, 1]
    by 255; both are rounded and clipped. Working in strips keeps the float64
    temporaries to a strip's size: a whole 50-megapixel 16-bit image would need
    2 GB of them.
    """
    width, height = image.size

    def strips():
        for top in range(0, height, STRIP_ROWS):
            yield top, np.asarray(image.crop((0, top, width, min(top + STRIP_ROWS, height))), dtype=np.float64)

    peaks = [values.max(initial=0) for _, values in strips()]  # NaN when a strip holds one
    if image.mode == "F":
        unit = not np.isnan(peaks).any() and max(peaks, default=0.0) <= 1.0
        rescale = (lambda values: np.multiply(values, 255.0, out=values)) if unit else None
    else:  # divided by 257, not multiplied by 1/257: the same rounding as ever
        rescale = (lambda values: np.divide(values, 257.0, out=values)) if max(peaks, default=0) > 255 else None
    out = np.empty((height, width), dtype=np.uint8)
    for top, values in strips():  # in place: a strip's one float64 copy is all the temporary there is
        if rescale is not None:
            rescale(values)
        np.nan_to_num(values, copy=False)
        np.clip(np.rint(values, out=values), 0, 255, out=values)
        out[top:top + len(values)] = values
    return out


MASK_SUFFIXES = (".png", ".mask.pgm")  # a same-named PNG, or what the generated datasets write beside an image


def read_object_mask(masks: str, path: str, image: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                     preprocessing: Preprocessing = SEEDS) -> np.ndarray | None:
    """The object mask of image ``path`` from the folder ``masks``, or None if it has none.

    ``a/b.jpg``'s mask is ``masks/a/b.png`` or ``masks/a/b.mask.pgm``. A
    candidate that is the image file itself (``image``, its full location:
    ``masks`` may be SOURCE, where ``a/b.png`` is the picture) is passed over.
    An unreadable mask, or one larger than ``max_pixels``, is an ``ImageError``.
    """
    from xai_batch.storage import locate

    stem = os.path.splitext(path)[0]
    for suffix in MASK_SUFFIXES:
        candidate = locate(masks).child(*(stem + suffix).split("/"))
        if candidate.target == image or not candidate.is_file():
            continue
        try:
            return load_object_mask(candidate.read_bytes(file_bytes(max_pixels)), max_pixels, preprocessing)
        except (OSError, ImageError) as exc:
            raise ImageError(f"object mask {stem + suffix}: {exc}") from exc
    return None


def load_object_mask(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                     preprocessing: Preprocessing = SEEDS) -> np.ndarray:
    """A ground-truth object mask (an image; bright is object) in the frame LIME saw (``preprocessing``'s).

    Opened with the same formats and header check as images.
    """
    with _open_checked(data, MASK_FORMATS, max_pixels, "mask") as mask:
        try:
            return preprocessing.frame(ImageOps.exif_transpose(mask).convert("RGB"))[..., 0] > 127
        except (OSError, ValueError) as exc:
            raise ImageError(f"unreadable object mask: {one_line(exc)}") from exc


def explained_pixels(source, row: dict, preprocessing: Preprocessing) -> np.ndarray:
    """The pixels of the image a manifest ``row`` explained, read from ``source`` (a storage ``Location``)
    in the model's frame; an ``ImageError`` if the file changed since (its SHA-256 is not the row's)."""
    data = source.child(row["path"]).read_bytes(file_bytes(DEFAULT_MAX_PIXELS))
    if hashlib.sha256(data).hexdigest() != row["sha256"]:
        raise ImageError("the file changed since it was explained; run explain again")
    return load_image(data, preprocessing=preprocessing).pixels


def image_seed(job_seed: int, sha256: str) -> int:
    """Per-image seed in [0, 2**31), from the job seed and the file's content.

    It does not depend on the file's name, its order or the actor that runs it,
    so any sharding of a job reproduces the same explanations.
    """
    material = f"xai-batch/{job_seed}/{sha256}".encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big") % (2**31)

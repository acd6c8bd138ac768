"""Pictures of an explanation: pure functions from (image, segments, weights) to RGB arrays.

``boundaries`` is the seed's figure, lime's ``get_image_and_mask`` colouring
drawn with scikit-image's ``mark_boundaries``, pixel for pixel. The other
styles show the same explanation for other audiences: ``heatmap`` every
superpixel's weight, ``hide_rest`` only the selected superpixels, and
``side_by_side`` the original next to the explanation with a caption.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.segmentation import mark_boundaries

from xai_batch.errors import ConfigError
from xai_batch.manifest import decode_segments
from xai_batch.maths.masks import top_features
from xai_batch.methods import DEFAULT_METHOD

__all__ = ["STYLES", "boundaries", "heatmap", "hide_rest", "side_by_side", "selected_features", "RenderOptions",
           "overlay_name", "render_row"]

STYLES: tuple[str, ...] = ("boundaries", "heatmap", "hide-rest", "side-by-side")
GREY = 128  # what hide_rest shows instead of unselected superpixels
_FOR = np.array([0, 158, 115], np.float64)  # green: speaks for the label
_AGAINST = np.array([213, 94, 0], np.float64)  # vermilion: speaks against it
_WHITE = np.array([255, 255, 255], np.float64)


def selected_features(
    weights: np.ndarray, num_features: int, positive_only: bool = False, order: Sequence[int] | None = None
) -> list[int]:
    """The superpixels an overlay marks, chosen as lime's ``get_image_and_mask`` chooses them.

    By decreasing |weight|, the first ``num_features``; with ``positive_only``
    the first ``num_features`` of those with a positive weight.
    """
    ranked = top_features(weights, len(weights), order)
    if positive_only:
        ranked = [segment for segment in ranked if weights[segment] > 0]
    return ranked[:num_features]


def boundaries(
    image: np.ndarray, segments: np.ndarray, weights: np.ndarray, num_features: int = 5,
    positive_only: bool = False, order: Sequence[int] | None = None,
) -> np.ndarray:
    """The seed's figure: ``mark_boundaries(temp / 255.0, mask)`` of lime's ``get_image_and_mask``.

    Without ``positive_only`` a superpixel for the label gets its green channel
    at the image's maximum, one against it its red channel; with it the
    selected superpixels are outlined only. Returns (H, W, 3) uint8.
    """
    temp = image.astype(np.float64)
    mask = np.zeros(segments.shape, np.int64)
    peak = image.max()
    for segment in selected_features(weights, num_features, positive_only, order):
        where = segments == segment
        against = weights[segment] < 0
        mask[where] = -1 if against else 1
        if not positive_only:
            temp[where, 0 if against else 1] = peak
    return _to_uint8(mark_boundaries(temp / 255.0, mask))


def heatmap(image: np.ndarray, segments: np.ndarray, weights: np.ndarray, legend: bool = True) -> np.ndarray:
    """Every superpixel tinted by its weight: white at 0, green for, vermilion against.

    The scale is symmetric, ±max |weight|, so colours compare within an image;
    a legend strip underneath gives the scale. Returns (H [+ legend], W, 3) uint8.
    """
    scale = float(np.abs(weights).max()) or 1.0
    value = (np.asarray(weights, np.float64) / scale)[segments]  # -1..1 per pixel
    colour = _diverging(value)
    tinted = 0.45 * image.astype(np.float64) + 0.55 * colour
    picture = mark_boundaries(tinted / 255.0, segments, color=(0.3, 0.3, 0.3))
    picture = _to_uint8(picture)
    return np.concatenate([picture, _legend(picture.shape[1], scale)]) if legend else picture


def hide_rest(
    image: np.ndarray, segments: np.ndarray, weights: np.ndarray, num_features: int = 5,
    positive_only: bool = True, order: Sequence[int] | None = None,
) -> np.ndarray:
    """Only the selected superpixels, the rest grey (lime's ``hide_rest``, grey instead of black)."""
    keep = np.isin(segments, selected_features(weights, num_features, positive_only, order))
    picture = np.full_like(image, GREY)
    picture[keep] = image[keep]
    return picture


def side_by_side(original: np.ndarray, explanation: np.ndarray, caption: str | None) -> np.ndarray:
    """The original and the explanation in one picture, with a caption line under them (or none)."""
    gap = 8
    height = max(original.shape[0], explanation.shape[0])
    canvas = np.full((height, original.shape[1] + gap + explanation.shape[1], 3), 255, np.uint8)
    canvas[: original.shape[0], : original.shape[1]] = original
    canvas[: explanation.shape[0], original.shape[1] + gap :] = explanation
    if not caption:
        return canvas
    strip = Image.new("RGB", (canvas.shape[1], 28), "white")
    ImageDraw.Draw(strip).text((6, 5), caption, fill="black", font=_font(16))
    return np.concatenate([canvas, np.asarray(strip)])


def _diverging(value: np.ndarray) -> np.ndarray:
    """-1..1 to RGB: vermilion, white, green."""
    amount = np.abs(value)[..., None]
    end = np.where((value < 0)[..., None], _AGAINST, _FOR)
    return (1 - amount) * _WHITE + amount * end


def _legend(width: int, scale: float) -> np.ndarray:
    """A colour bar from -scale to +scale with its end labels."""
    strip = Image.new("RGB", (width, 30), "white")
    bar = _diverging(np.linspace(-1, 1, width - 16))
    strip.paste(Image.fromarray(np.repeat(bar[None], 10, axis=0).astype(np.uint8)), (8, 2))
    draw = ImageDraw.Draw(strip)
    font = _font(11)
    draw.text((8, 15), f"-{scale:.3g}", fill="black", font=font)
    draw.text((width // 2 - 3, 15), "0", fill="black", font=font)
    label = f"+{scale:.3g}"
    draw.text((width - 8 - draw.textlength(label, font=font), 15), label, fill="black", font=font)
    return np.asarray(strip)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _to_uint8(picture: np.ndarray) -> np.ndarray:
    return np.clip(np.round(picture * 255), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class RenderOptions:
    """How to draw: the style, how many superpixels, and whether to caption side-by-side pictures."""

    style: str = "boundaries"
    num_features: int = 5
    positive_only: bool = False
    blind: bool = False


def overlay_name(path: str, label: int, style: str, method: str = DEFAULT_METHOD) -> str:
    """A deterministic, safe file name for one row's overlay: no folders, no leading dot.

    Readable (the image's path with '/' as '__', the label, the method) and
    unique (a hash of path, label and method), so two paths that flatten
    alike still get two files.
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.replace("/", "__")).lstrip("._-")[:100] or "image"
    digest = hashlib.sha256(f"{path}\0{label}\0{method}".encode()).hexdigest()[:8]
    return f"{stem}.label{label}.{method}.{style}.{digest}.png"


def render_row(row: dict, image: np.ndarray, options: RenderOptions) -> np.ndarray:
    """One row's overlay as an RGB array."""
    segments = decode_segments(row["segments"])
    weights = np.asarray(row["weights"], np.float64)
    style, k = options.style, options.num_features
    if style == "boundaries":
        return boundaries(image, segments, weights, k, options.positive_only)
    if style == "heatmap":
        return heatmap(image, segments, weights)
    if style == "hide-rest":
        return hide_rest(image, segments, weights, k, positive_only=options.positive_only)
    if style == "side-by-side":
        caption = None if options.blind else f"{row['explained_name']}  {row['explained_prob']:.2f}"
        return side_by_side(image, boundaries(image, segments, weights, k, options.positive_only), caption)
    raise ConfigError(f"unknown style {style!r}", "style")

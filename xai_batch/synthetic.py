"""A generated class-per-folder dataset with ground truth for explanations.

Each image shows one object whose class is its shape and hue (a red disc, a
green square, a blue triangle, a yellow cross) on a textured, cluttered
background of paler colours, with the object's pixel mask saved beside it as
``<name>.mask.pgm`` (a format ``explain`` does not pick up). A class "none"
shows the background alone, so that no shape class can be learnt as "no other
object here": only the object tells its class, and a good explanation lands on
it. The demo and the tests get
a real case with a known answer where ImageNet weights cannot be downloaded,
and one a ResNet18 learns from scratch in a minute or two on a CPU.
"""

from __future__ import annotations

import colorsys
import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["SHAPES", "NO_OBJECT", "render_scene", "generate_dataset", "mask_path"]

SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "cross")
NO_OBJECT = "none"
_HUES = {"disc": 0.0, "square": 0.33, "triangle": 0.62, "cross": 0.15}
SIZE = 256


def mask_path(image_path: str) -> str:
    """Where the object mask of a generated image lies."""
    return os.path.splitext(image_path)[0] + ".mask.pgm"


def render_scene(shape: str, rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One (size, size, 3) uint8 scene and its (size, size) bool object mask."""
    if shape not in SHAPES and shape != NO_OBJECT:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)} or {NO_OBJECT!r}, got {shape!r}")
    canvas = Image.fromarray(_background(rng, size))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(10, 18))):
        _clutter(draw, rng, size)
    for _ in range(int(rng.integers(0, 3))):
        _silhouette(draw, rng, size)
    mask_image = Image.new("L", (size, size), 0)
    if shape == NO_OBJECT:
        return np.asarray(canvas).copy(), np.zeros((size, size), bool)
    centre = rng.uniform(0.32 * size, 0.68 * size, 2)
    radius = rng.uniform(0.13 * size, 0.2 * size)
    polygon = _outline(shape, centre, radius, rng.uniform(0, 2 * math.pi))
    colour = _colour(rng, saturation=(0.75, 1.0), hue=_HUES[shape] + rng.uniform(-0.03, 0.03))
    ImageDraw.Draw(mask_image).polygon(polygon, fill=255)
    mask = np.asarray(mask_image) > 127
    pixels = np.asarray(canvas).astype(np.int16)
    shading = rng.normal(0, 10, (size, size, 1)) + np.linspace(-20, 20, size)[None, :, None]
    pixels[mask] = np.clip(np.array(colour)[None, :] + shading[mask], 0, 255)
    return pixels.astype(np.uint8), mask


def generate_dataset(
    root: str, per_class: int, seed: int, shapes: Sequence[str] = (*SHAPES[:3], NO_OBJECT)
) -> dict[str, list[str]]:
    """Write ``root/<shape>/<shape>_NNNN.png`` plus masks; returns the image paths."""
    rng = np.random.default_rng(seed)
    written: dict[str, list[str]] = {}
    for shape in shapes:
        folder = os.path.join(root, shape)
        os.makedirs(folder, exist_ok=True)
        written[shape] = []
        for index in range(per_class):
            pixels, mask = render_scene(shape, rng)
            path = os.path.join(folder, f"{shape}_{index:04d}.png")
            Image.fromarray(pixels).save(path)
            Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path(path))
            written[shape].append(path)
    return written


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour blotches plus fine grain and stripes."""
    grey = rng.uniform(70, 190, (6, 6, 1))
    coarse = np.clip(grey + rng.uniform(-35, 35, (6, 6, 3)), 0, 255).astype(np.uint8)
    blotches = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    period = rng.uniform(10, 40)
    angle = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = 14 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    grain = rng.normal(0, 12, (size, size, 3))
    background = blotches + stripes[..., None] + grain
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(0.6)))


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """A small distractor: a line, a blob or a small box, in any colour."""
    kind = rng.integers(0, 3)
    colour = _colour(rng, saturation=(0.0, 0.45))
    x, y = rng.uniform(0, size, 2)
    extent = rng.uniform(0.02 * size, 0.06 * size)
    if kind == 0:
        angle = rng.uniform(0, math.pi)
        length = rng.uniform(0.1 * size, 0.3 * size)
        end = (x + length * math.cos(angle), y + length * math.sin(angle))
        draw.line([(x, y), end], fill=colour, width=int(rng.integers(2, 6)))
    elif kind == 1:
        draw.ellipse([x - extent, y - extent * 0.7, x + extent, y + extent * 0.7], fill=colour)
    else:
        draw.rectangle([x - extent, y - extent / 2, x + extent / 2, y + extent], fill=colour)


def _silhouette(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """A black shape of any class: what hiding an object with ``hide_color=0``
    leaves behind. Seeing these in every class teaches the model that a black
    silhouette is not the object, so LIME's perturbations stay in distribution."""
    shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
    centre = rng.uniform(0.1 * size, 0.9 * size, 2)
    radius = rng.uniform(0.06 * size, 0.16 * size)
    grey = int(rng.integers(0, 12))
    draw.polygon(_outline(shape, centre, radius, rng.uniform(0, 2 * math.pi)), fill=(grey, grey, grey))


def _outline(shape: str, centre: np.ndarray, radius: float, angle: float) -> list[tuple[float, float]]:
    cx, cy = centre
    if shape == "disc":
        corners = [(radius, 2 * math.pi * k / 48) for k in range(48)]
    elif shape == "square":
        corners = [(radius, angle + math.pi / 4 + k * math.pi / 2) for k in range(4)]
    elif shape == "triangle":
        corners = [(radius * 1.15, angle + k * 2 * math.pi / 3) for k in range(3)]
    else:  # cross: 12 corners alternating between the arm ends and the inner corners
        arm, inner = radius, radius * 0.45
        corners = []
        for k in range(4):
            base = angle + k * math.pi / 2
            corners += [
                (inner * math.sqrt(2), base - math.pi / 4),
                (math.hypot(arm, inner), base - math.atan2(inner, arm)),
                (math.hypot(arm, inner), base + math.atan2(inner, arm)),
            ]
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in corners]


def _colour(
    rng: np.random.Generator, saturation: tuple[float, float], hue: float | None = None
) -> tuple[int, int, int]:
    hue = rng.uniform(0, 1) if hue is None else hue % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(*saturation), rng.uniform(0.55, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)

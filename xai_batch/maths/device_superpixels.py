"""Quickshift on the model's device, its labels lime's (scikit-image's) by construction.

scikit-image's Cython core (``skimage/segmentation/_quickshift_cy.pyx``) is
reproduced operation for operation in float64: the image is converted to Lab
by scikit-image itself on the CPU (cheap, and exact by definition), scaled by
``ratio``; the densities start from the tie-breaking noise of
``default_rng(42)`` and add ``exp(dist * inv)`` tap by tap over the clipped
window in raster order, ``dist`` summed channel 0, 1, 2, then the row offset
squared, then the column offset squared; each pixel's parent is the first tap
in raster order with a strictly greater density and a strictly smaller
distance. Every step is an elementwise tensor operation over all pixels at
once, one tap at a time, so each pixel sees the same sequence of IEEE
roundings as in the C loop: no reduction, no fused multiply-add.

The distances are plain arithmetic and come out bit for bit. Only ``exp`` may
not: a device's (or torch's vectorised CPU) ``exp`` may differ from the C
library's by an ulp, so two densities can differ by a few ulps from the
CPU's. Each density carries a rigorous bound on that difference; every
density comparison closer than the two bounds is *unsure*, and each pixel
with an unsure comparison is settled on the CPU the way scikit-image does it
(its densities recomputed with the C library's ``exp``, its taps walked in
order). The labels are therefore scikit-image's whatever the device's
``exp``; ``settled`` says how many pixels that took.

torch is used as a numeric library only; nothing here knows of Ray or the
config.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from xai_batch.maths.superpixels import Quickshift

__all__ = ["DeviceSegments", "quickshift_on_device", "EXP_ULPS"]

# How far a device's exp may be from the C library's, in ulps of the result: CUDA documents 1 ulp for
# double exp, torch's vectorised CPU exp (SLEEF u10) 1 ulp, glibc's under 1; twice their sum for margin.
EXP_ULPS = 4
_EPS = 2.0**-52
_NEVER = float(np.finfo(np.float64).max)  # scikit-image's DBL_MAX: a root's distance to its parent


@dataclass(frozen=True)
class DeviceSegments:
    """Quickshift's labels for a batch of images on the device, and the pixels settled on the CPU."""

    segments: torch.Tensor  # (N, H, W) int64: each image's segment ids 0..S-1, numbered by their root's raster index
    settled: tuple[int, ...]  # per image


@functools.lru_cache(maxsize=8)
def _tie_noise(height: int, width: int) -> np.ndarray:
    """scikit-image's tie-breaking noise: it depends only on the image's shape (the seed is always 42)."""
    noise = np.random.default_rng(42).normal(scale=0.00001, size=(height, width))
    noise.setflags(write=False)
    return noise


def _lab_scaled(image: np.ndarray, params: Quickshift) -> np.ndarray:
    """What scikit-image's wrapper hands its Cython core: float Lab (its own rgb2lab) times ``ratio``."""
    from skimage.color import rgb2lab
    from skimage.util import img_as_float

    return np.ascontiguousarray(rgb2lab(img_as_float(np.atleast_3d(image))) * params.ratio)


def _taps(half_width: int) -> list[tuple[int, int]]:
    """The window's offsets in raster order: row offset outer, column offset inner."""
    return [(dr, dc) for dr in range(-half_width, half_width + 1) for dc in range(-half_width, half_width + 1)]


def _overlap(height: int, width: int, dr: int, dc: int) -> tuple[tuple, tuple]:
    """(pixels, their taps) of every image: the pixels whose tap at (dr, dc) is inside it, and those taps."""
    pixels = (slice(None), slice(max(0, -dr), height - max(0, dr)), slice(max(0, -dc), width - max(0, dc)))
    taps = (slice(None), slice(max(0, dr), height - max(0, -dr)), slice(max(0, dc), width - max(0, -dc)))
    return pixels, taps


def _window_sizes(height: int, width: int, half_width: int) -> np.ndarray:
    """(H, W) float64: how many taps of each pixel's window are inside the image (the window is clipped)."""
    def inside(size: int) -> np.ndarray:
        at = np.arange(size)
        return np.minimum(at + half_width + 1, size) - np.maximum(at - half_width, 0)

    return np.outer(inside(height), inside(width)).astype(np.float64)


def _distance(lab: torch.Tensor, pixels, taps, dr: int, dc: int) -> torch.Tensor:
    """scikit-image's squared distance, in its order: channels 0, 1, 2, then dr², then dc²."""
    here, there = lab[pixels], lab[taps]
    t = here[..., 0] - there[..., 0]
    dist = t * t  # 0 + t*t, exactly
    for channel in (1, 2):
        t = here[..., channel] - there[..., channel]
        dist = dist + t * t
    dist = dist + float(dr * dr)
    return dist + float(dc * dc)


def quickshift_on_device(images: np.ndarray, params: Quickshift, device: torch.device | str = "cpu",
                     margin: float = 1.0) -> DeviceSegments:
    """Quickshift segments of (N, H, W, 3) uint8 images on ``device``, each equal to lime's ``SegmentationAlgorithm``.

    The images of a batch are segmented together, one tensor operation per
    window tap for all of them. ``margin`` scales the bound below which a
    density comparison counts as unsure (1 is rigorous for an ``exp`` within
    :data:`EXP_ULPS`; larger values settle more pixels on the CPU and change
    nothing else).
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"quickshift takes (N, H, W, 3) uint8 images, got {images.dtype} {images.shape}")
    count, height, width, _ = images.shape
    labs = [_lab_scaled(image, params) for image in images]  # one by one, as lime converts each
    half_width = int(math.ceil(3 * params.kernel_size))
    inv = -0.5 / (params.kernel_size * params.kernel_size)
    lab = torch.from_numpy(np.stack(labs)).to(device)
    noise = _tie_noise(height, width)
    taps = _taps(half_width)

    density = torch.tensor(noise, dtype=torch.float64, device=device).repeat(count, 1, 1)
    for dr, dc in taps:
        pixels, there = _overlap(height, width, dr, dc)
        density[pixels] += torch.exp(_distance(lab, pixels, there, dr, dc) * inv)
    terms = torch.from_numpy(_window_sizes(height, width, half_width)).to(device)  # the taps each pixel added
    # |this density - the C library's| <= eps (EXP_ULPS + n) |density|: each of the n terms' exp within
    # EXP_ULPS ulps, each of the n additions one rounding apart; doubled, plus the noise's scale.
    bound = margin * 2 * _EPS * (EXP_ULPS + terms) * (density.abs() + 1e-4)

    index = torch.arange(height * width, device=device).reshape(1, height, width)
    parent = index.repeat(count, 1, 1)
    closest = torch.full((count, height, width), _NEVER, dtype=torch.float64, device=device)
    unsure = torch.zeros((count, height, width), dtype=torch.bool, device=device)
    for dr, dc in taps:
        pixels, there = _overlap(height, width, dr, dc)
        gap = density[there] - density[pixels]
        if dr or dc:  # a pixel's own tap is never higher than itself, however rounded
            unsure[pixels] |= gap.abs() <= bound[there] + bound[pixels]
        dist = _distance(lab, pixels, there, dr, dc)
        take = (gap > 0) & (dist < closest[pixels])
        closest[pixels] = torch.where(take, dist, closest[pixels])
        parent[pixels] = torch.where(take, index[pixels] + (dr * width + dc), parent[pixels])

    settled = unsure.sum(dim=(1, 2)).tolist()
    if any(settled):
        parent, closest = parent.cpu(), closest.cpu()
        density_cpu, bound_cpu = density.cpu().numpy(), bound.cpu().numpy()
        for n in (n for n, unsure_here in enumerate(settled) if unsure_here):
            _settle(unsure[n].nonzero().tolist(), labs[n], noise, half_width, inv, density_cpu[n], bound_cpu[n],
                    parent[n], closest[n])
        parent, closest = parent.to(device), closest.to(device)

    # roots (no higher tap) and links longer than max_dist point to themselves
    parent = torch.where(closest.sqrt() > params.max_dist, index, parent).reshape(count, -1)
    while True:  # pointer jumping: every pixel to its tree's root
        jumped = torch.gather(parent, 1, parent)
        if torch.equal(jumped, parent):
            break
        parent = jumped
    segments = torch.stack([torch.unique(roots, sorted=True, return_inverse=True)[1] for roots in parent])
    return DeviceSegments(segments.reshape(count, height, width), tuple(settled))


def _settle(pixels: list[list[int]], lab: np.ndarray, noise: np.ndarray, half_width: int, inv: float,
            density: np.ndarray, bound: np.ndarray, parent: torch.Tensor, closest: torch.Tensor) -> None:
    """Set the parents of one image's ``pixels`` as scikit-image finds them, on the CPU with the C library's exp.

    Sure comparisons keep the device's answer (it is the CPU's); unsure ones
    compare densities recomputed exactly as scikit-image computes them.
    """
    height, width, _ = lab.shape
    exact: dict[tuple[int, int], float] = {}

    def exact_density(r: int, c: int) -> float:
        if (r, c) not in exact:
            total = float(noise[r, c])
            for r_ in range(max(r - half_width, 0), min(r + half_width + 1, height)):
                for c_ in range(max(c - half_width, 0), min(c + half_width + 1, width)):
                    total += math.exp(_scalar_distance(lab, r, c, r_, c_) * inv)  # the C library's exp
            exact[r, c] = total
        return exact[r, c]

    for r, c in pixels:
        best, best_index = _NEVER, r * width + c
        for r_ in range(max(r - half_width, 0), min(r + half_width + 1, height)):
            for c_ in range(max(c - half_width, 0), min(c + half_width + 1, width)):
                if (r_, c_) == (r, c):
                    continue
                if abs(density[r_, c_] - density[r, c]) <= bound[r_, c_] + bound[r, c]:
                    higher = exact_density(r_, c_) > exact_density(r, c)
                else:
                    higher = density[r_, c_] > density[r, c]
                if higher:
                    dist = _scalar_distance(lab, r, c, r_, c_)
                    if dist < best:
                        best, best_index = dist, r_ * width + c_
        parent[r, c] = best_index
        closest[r, c] = best


def _scalar_distance(lab: np.ndarray, r: int, c: int, r_: int, c_: int) -> float:
    """scikit-image's squared distance between two pixels, one double operation at a time."""
    dist = 0.0
    for channel in range(3):
        t = float(lab[r, c, channel]) - float(lab[r_, c_, channel])
        dist += t * t
    t = float(r - r_)
    dist += t * t
    t = float(c - c_)
    dist += t * t
    return dist

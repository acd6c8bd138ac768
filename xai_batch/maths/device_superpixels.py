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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from xai_batch.maths.superpixels import Quickshift

__all__ = ["DeviceSegments", "quickshift_on_device", "lab_scaled", "memory_per_image", "EXP_ULPS"]

# How far a device's exp may be from the C library's, in ulps of the result: CUDA documents 1 ulp for
# double exp, torch's vectorised CPU exp (SLEEF u10) 1 ulp, glibc's under 1; twice their sum for margin.
EXP_ULPS = 4
_EPS = 2.0**-52
BYTES_PER_TAP = 96  # a pixel's peak memory for each tap of a window row (measured: about 90; the CPU's peak RSS)
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


def lab_scaled(image: np.ndarray, params: Quickshift) -> np.ndarray:
    """What scikit-image's wrapper hands its Cython core: float Lab (its own rgb2lab) times ``ratio``.

    The CPU's part of quickshift, (H, W, 3) float64: a caller with CPUs to
    spare (the replica's decoding tasks) computes it there and passes it to
    :func:`quickshift_on_device`, so the device does not wait on it."""
    from skimage.color import rgb2lab
    from skimage.util import img_as_float

    return np.ascontiguousarray(rgb2lab(img_as_float(np.atleast_3d(image))) * params.ratio)


def _window_sizes(height: int, width: int, half_width: int) -> np.ndarray:
    """(H, W) float64: how many taps of each pixel's window are inside the image (the window is clipped)."""
    def inside(size: int) -> np.ndarray:
        at = np.arange(size)
        return np.minimum(at + half_width + 1, size) - np.maximum(at - half_width, 0)

    return np.outer(inside(height), inside(width)).astype(np.float64)


def memory_per_image(height: int, width: int, params: Quickshift) -> int:
    """The bytes of device memory :func:`quickshift_on_device` takes for each image of ``height`` x ``width``."""
    return BYTES_PER_TAP * (2 * int(math.ceil(3 * params.kernel_size)) + 1) * height * width


def _row_of_taps(padded: torch.Tensor, dr: int, half_width: int, height: int, width: int) -> torch.Tensor:
    """(..., K, H, W) views of ``padded`` (..., H + 2w, W + 2w): at [..., k, r, c] the tap (dr, k - w) of
    pixel (r, c); one window row of K = 2w + 1 taps, for every pixel at once."""
    return padded[..., half_width + dr : half_width + dr + height, :].unfold(-1, width, 1).movedim(-2, -3)


def _distances(here: tuple[torch.Tensor, ...], padded: torch.Tensor, dr: int, dc_squared: torch.Tensor,
               half_width: int) -> torch.Tensor:
    """(N, K, H, W): scikit-image's squared distance from each pixel to the taps of window row ``dr``, in its
    order: channels 0, 1, 2, then dr², then dc². A tap outside the image (``padded`` is +inf there) is inf."""
    height, width = here[0].shape[2:]
    taps = _row_of_taps(padded, dr, half_width, height, width).unbind(1)  # (N, K, H, W) per channel
    dist = None
    for pixel, tap in zip(here, taps):
        t = pixel - tap
        dist = t * t if dist is None else dist + t * t  # 0 + t*t is t*t exactly
    dist = dist + float(dr * dr)
    return dist + dc_squared


def quickshift_on_device(images: np.ndarray, params: Quickshift, device: torch.device | str = "cpu",
                         margin: float = 1.0, labs: Sequence[np.ndarray] | None = None) -> DeviceSegments:
    """Quickshift segments of (N, H, W, 3) uint8 images on ``device``, each equal to lime's ``SegmentationAlgorithm``.

    The images of a call are segmented together, a window row of taps (K =
    2w + 1, w = ceil(3 * kernel_size)) at a time, so a call costs the same
    ~1,900 tensor operations whatever the number of images in it: one addition
    per tap (the densities are summed in scikit-image's order) and a few
    dozen per window row. Its memory on the device is :func:`memory_per_image`
    for each image, taken while a window row is computed: 120 MB for a
    224x224 image at lime's kernel size (K = 25), 350 MB at 384x384. ``margin`` scales
    the bound below which a density comparison counts as unsure (1 is
    rigorous for an ``exp`` within :data:`EXP_ULPS`; larger values settle
    more pixels on the CPU and change nothing else). ``labs`` are the images'
    :func:`lab_scaled`, where the caller has them already.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"quickshift takes (N, H, W, 3) uint8 images, got {images.dtype} {images.shape}")
    count, height, width, _ = images.shape
    if labs is None:
        labs = [lab_scaled(image, params) for image in images]  # one by one, as lime converts each
    half_width = int(math.ceil(3 * params.kernel_size))
    inv = -0.5 / (params.kernel_size * params.kernel_size)
    lab = torch.from_numpy(np.stack(labs)).to(device).permute(0, 3, 1, 2)  # (N, 3, H, W)
    pad = (half_width,) * 4
    padded = torch.nn.functional.pad(lab, pad, value=float("inf"))  # outside the image: infinitely far
    here = tuple(lab[:, channel, None] for channel in range(3))  # (N, 1, H, W): each pixel, per channel
    dc_squared = torch.arange(-half_width, half_width + 1, dtype=torch.float64, device=device).square()[:, None, None]
    rows = range(-half_width, half_width + 1)

    # The densities, tap by tap in scikit-image's raster order; a tap outside the window adds exp(-inf) = 0,
    # which leaves the sum as it was.
    noise = _tie_noise(height, width)
    density = torch.tensor(noise, dtype=torch.float64, device=device).repeat(count, 1, 1)
    for dr in rows:
        for term in torch.exp(_distances(here, padded, dr, dc_squared, half_width) * inv).unbind(1):
            density += term
    terms = torch.from_numpy(_window_sizes(height, width, half_width)).to(device)  # the taps each pixel added
    # |this density - the C library's| <= eps (EXP_ULPS + n) |density|: each of the n terms' exp within
    # EXP_ULPS ulps, each of the n additions one rounding apart; doubled, plus the noise's scale.
    bound = margin * 2 * _EPS * (EXP_ULPS + terms) * (density.abs() + 1e-4)

    # Each pixel's parent: of the taps with a strictly greater density, the nearest, the first in raster order
    # among equals (the first minimum of a window row; an earlier row wins a tie). A tap outside the image has
    # density -inf: never higher, never unsure.
    around = torch.nn.functional.pad(torch.stack([density, bound], 1), pad, value=float("-inf"))
    pixel_density, pixel_bound = density[:, None], bound[:, None]
    index = torch.arange(height * width, device=device).reshape(1, height, width)
    parent = index.repeat(count, 1, 1)
    closest = torch.full((count, height, width), _NEVER, dtype=torch.float64, device=device)
    unsure = torch.zeros((count, height, width), dtype=torch.bool, device=device)
    for dr in rows:
        tap_density, tap_bound = _row_of_taps(around, dr, half_width, height, width).unbind(1)
        gap = tap_density - pixel_density
        doubt = gap.abs() <= tap_bound + pixel_bound
        if dr == 0:  # a pixel's own tap is never higher than itself, however rounded
            doubt[:, half_width] = False
        unsure |= doubt.any(dim=1)
        dist = torch.where(gap > 0, _distances(here, padded, dr, dc_squared, half_width), float("inf"))
        nearest, at = dist.min(dim=1)  # the first of equal minima
        take = nearest < closest
        closest = torch.where(take, nearest, closest)
        parent = torch.where(take, index + (dr * width - half_width) + at, parent)

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
    # Each image's segments numbered by their roots' raster index: ranks among every image's roots (offset
    # by image), less the rank of the image's first.
    offset = torch.arange(count, device=device)[:, None] * (height * width)
    ranks = torch.unique(parent + offset, sorted=True, return_inverse=True)[1]
    segments = ranks - ranks.amin(dim=1, keepdim=True)
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

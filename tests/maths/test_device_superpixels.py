"""Quickshift on the device against lime's own SegmentationAlgorithm (scikit-image's Cython), label for label."""

import numpy as np
import pytest
import skimage.data
import torch
from lime.wrappers.scikit_image import SegmentationAlgorithm
from PIL import Image

from xai_batch.preprocessing import SEEDS
from xai_batch.maths.superpixels import Quickshift
from xai_batch.maths.device_superpixels import quickshift_on_device
from xai_batch.synthetic import SHAPES, render_scene

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def limes(images: np.ndarray, params: Quickshift = Quickshift()) -> np.ndarray:
    """lime's own segments, one image at a time."""
    algorithm = SegmentationAlgorithm("quickshift", kernel_size=params.kernel_size, max_dist=params.max_dist,
                                      ratio=params.ratio, random_seed=0)
    return np.stack([algorithm(image) for image in images])


def generated(count: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([render_scene(SHAPES[i % len(SHAPES)], rng, size=size)[0] for i in range(count)])


def photo_crops(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Crops of scikit-image's photographs: real textures, edges and flat skies."""
    rng = np.random.default_rng(seed)
    photos = [np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB")) for name in PHOTOS]
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        r, c = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
        crops.append(photo[r:r + size, c:c + size])
    return np.stack(crops)


def photos_as_lime_sees_them() -> np.ndarray:
    return np.stack([SEEDS.frame(Image.fromarray(getattr(skimage.data, name)()).convert("RGB")) for name in PHOTOS])


def assert_same_segments(images: np.ndarray, found, params: Quickshift = Quickshift()) -> None:
    reference = limes(images, params)
    got = found.segments.cpu().numpy()
    differ = [n for n in range(len(images)) if not np.array_equal(got[n], reference[n])]
    assert not differ, f"{len(differ)} of {len(images)} images segmented differently, first {differ[:5]}"
    assert got.dtype == np.int64 and found.segments.shape == images.shape[:3]


def test_a_few_hundred_images_segmented_as_lime_segments_them():
    images = np.concatenate([generated(180, 32), photo_crops(120, 32)])
    found = quickshift_on_device(images, Quickshift())
    assert_same_segments(images, found)
    assert len(found.settled) == len(images)


def test_photos_at_limes_size():
    images = photos_as_lime_sees_them()
    assert_same_segments(images, quickshift_on_device(images, Quickshift()))


@pytest.mark.parametrize("params", [Quickshift(kernel_size=2, max_dist=10, ratio=0.5), Quickshift(max_dist=3)])
def test_other_parameters_and_links_cut_at_max_dist(params):
    images = np.concatenate([generated(12, 32, seed=1), photo_crops(12, 32, seed=1)])
    found = quickshift_on_device(images, params)
    assert_same_segments(images, found, params)
    if params.max_dist == 3:  # links cut: more segments than at lime's settings (a flat crop stays one)
        cut, uncut = found.segments.amax(dim=(1, 2)), quickshift_on_device(images, Quickshift()).segments.amax(dim=(1, 2))
        assert (cut >= uncut).all() and (cut > uncut).sum() > len(images) / 2


def test_pixels_settled_on_the_cpu_come_out_as_limes():
    """A wider margin sends many pixels down the CPU path; the labels are unchanged."""
    images = np.concatenate([generated(12, 32, seed=2), photo_crops(12, 32, seed=2)])
    found = quickshift_on_device(images, Quickshift(), margin=1e7)
    assert sum(found.settled) > 100
    assert_same_segments(images, found)


def test_near_ties_are_settled_on_the_cpu_whatever_the_devices_exp(monkeypatch):
    """Flat images are full of near-ties: interior pixels' densities differ only by the tie-breaking
    noise, and some pairs by less than the bound. Those pixels go down the CPU path, here with a
    device whose exp is two ulps off the C library's, and the labels are lime's."""
    exact_exp = torch.exp
    generator = torch.Generator().manual_seed(0)

    def device_exp(x):
        value = exact_exp(x)
        up = torch.rand(value.shape, generator=generator) < 0.5
        towards = torch.where(up, torch.tensor(float("inf"), dtype=value.dtype), torch.tensor(0.0, dtype=value.dtype))
        return torch.nextafter(torch.nextafter(value, towards), towards)

    images = np.full((2, 224, 224, 3), 128, np.uint8)
    images[1, :, 112:] = 100  # two flat halves
    monkeypatch.setattr(torch, "exp", device_exp)
    found = quickshift_on_device(images, Quickshift())
    assert min(found.settled) > 10
    assert_same_segments(images, found)


def test_only_uint8_rgb_batches():
    with pytest.raises(ValueError, match=r"takes \(N, H, W, 3\) uint8 images, got float64"):
        quickshift_on_device(np.zeros((1, 8, 8, 3)), Quickshift())
    with pytest.raises(ValueError, match=r"got uint8 \(8, 8, 3\)"):
        quickshift_on_device(np.zeros((8, 8, 3), np.uint8), Quickshift())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_segments_are_still_limes():
    images = np.concatenate([generated(180, 32), photo_crops(120, 32), photos_as_lime_sees_them()[:, :32, :32]])
    found = quickshift_on_device(images, Quickshift(), device="cuda")
    assert found.segments.device.type == "cuda"
    assert_same_segments(images, found)
    photos = photos_as_lime_sees_them()
    assert_same_segments(photos, quickshift_on_device(photos, Quickshift(), device="cuda"))

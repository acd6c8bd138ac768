"""The model's preprocessing: the seeds' and torchvision's weights' transforms, pixel for pixel, and its bounds."""

import numpy as np
import pytest
import skimage.data
import torch
import torchvision
from PIL import Image
from torchvision import transforms

from xai_batch.engines import normalise
from xai_batch.errors import ImageError
from xai_batch.images import load_image
from xai_batch.preprocessing import MAX_RESIZED_PIXELS, SEEDS, Preprocessing

PHOTOS = ["chelsea", "astronaut", "coffee", "rocket"]  # landscape, square, landscape, portrait


@pytest.mark.parametrize("name", PHOTOS)
def test_the_seeds_frame_equals_their_torchvision_transforms(name):
    photo = Image.fromarray(getattr(skimage.data, name)())
    expected = transforms.Compose([transforms.Resize((256, 256)), transforms.CenterCrop(224)])(photo)
    assert np.array_equal(SEEDS.frame(photo), np.asarray(expected))


# Each a different resize, crop or filter: ResNet50's 232, EfficientNet's bicubic, Inception's 342 -> 299,
# a SWAG ViT's 384 with no crop at all.
WEIGHTS = [("resnet50", "IMAGENET1K_V2"), ("efficientnet_b0", "IMAGENET1K_V1"), ("inception_v3", "IMAGENET1K_V1"),
           ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1")]


@pytest.mark.parametrize("arch, name", WEIGHTS)
def test_pretrained_weights_get_exactly_their_own_transforms(arch, name):
    """The frame, then the engines' normalisation, is ``weights.transforms()`` of the PIL image."""
    weights = torchvision.models.get_model_weights(arch)[name]
    preprocessing = Preprocessing.of_torchvision(weights)
    assert not preprocessing.square and preprocessing.crop == weights.transforms().crop_size[0]
    for photo in (Image.fromarray(getattr(skimage.data, photo)()) for photo in PHOTOS[:2] + PHOTOS[3:]):
        expected = weights.transforms()(photo)
        ours = normalise(preprocessing.frame(photo), torch.device("cpu"), preprocessing).permute(2, 0, 1)
        assert ours.shape == expected.shape
        torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_records_round_trip_and_bad_values_are_named():
    custom = Preprocessing(resize=180, crop=160, square=False, interpolation="bicubic", mean=(0.5, 0.5, 0.5),
                           std=(0.25, 0.25, 0.25))
    assert Preprocessing.from_dict(custom.to_dict()) == custom
    assert Preprocessing.from_dict({}) == SEEDS and Preprocessing.from_dict({"crop": 160}).resize == 256
    for values, named in [({"crop": 8}, "crop"), ({"crop": 4096}, "crop"), ({"crop": 2.5}, "crop"),
                          ({"resize": 200}, "resize"), ({"interpolation": "cubic"}, "interpolation"),
                          ({"std": [0.2, 0, 0.2]}, "std"), ({"mean": [0.5, 0.5]}, "mean"),
                          ({"mean": [0.5, float("nan"), 0.5]}, "mean"), ({"square": "yes"}, "square"),
                          ({"size": 3}, r"unknown preprocessing field\(s\) size")]:
        with pytest.raises(ValueError, match=f"^{named}"):
            Preprocessing.from_dict(values)


def test_another_input_size_is_the_frame_of_everything_downstream():
    photo = Image.fromarray(skimage.data.coffee())
    small = Preprocessing(resize=183, crop=160)
    assert small.frame(photo).shape == (160, 160, 3)
    expected = transforms.Compose([transforms.Resize((183, 183)), transforms.CenterCrop(160)])(photo)
    assert np.array_equal(small.frame(photo), np.asarray(expected))


def test_a_picture_too_thin_for_an_aspect_preserving_resize_is_refused_before_it_is_resized():
    """Scaling a 2 x 20000 strip's shorter side to 256 would make a 2.5-gigapixel picture; the square resize
    and a picture that fits are fine."""
    strip = Image.new("RGB", (20000, 2), (200, 10, 10))
    shorter = Preprocessing(square=False)
    with pytest.raises(ImageError, match=r"^too elongated: 20000×2 would be resized to 2560000×256"):
        shorter.frame(strip)
    assert SEEDS.frame(strip).shape == (224, 224, 3)
    wide = Image.new("RGB", (MAX_RESIZED_PIXELS // 256 // 256 * 10, 10))
    assert shorter.frame(wide).shape == (224, 224, 3)
    assert load_image(_png(strip), preprocessing=SEEDS).pixels.shape == (224, 224, 3)


def _png(picture: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image
from torchvision import transforms

from xai_batch.errors import ImageError
from xai_batch.images import image_seed, load_image, preprocess
from xai_batch.sources import discover_images


@pytest.mark.parametrize("name", ["chelsea", "astronaut", "coffee", "rocket"])
def test_preprocess_equals_the_seeds_torchvision_transforms(name):
    photo = Image.fromarray(getattr(skimage.data, name)())
    expected = transforms.Compose([transforms.Resize((256, 256)), transforms.CenterCrop(224)])(photo)
    assert np.array_equal(preprocess(photo), np.asarray(expected))


def test_discovery_is_recursive_sorted_relative_and_case_blind(tmp_path):
    for rel in ["b/x.PNG", "a/deep/y.jpeg", "z.TIFF", "notes.txt", "a/model.pt", "c d/é.webp"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert discover_images(str(tmp_path)) == ["a/deep/y.jpeg", "b/x.PNG", "c d/é.webp", "z.TIFF"]


def test_exif_orientation_is_applied():
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, :5] = 255  # white band on the left
    image = Image.fromarray(wide)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=100)
    loaded = load_image(buffer.getvalue())
    assert (loaded.width, loaded.height) == (10, 30)
    assert loaded.pixels.shape == (224, 224, 3)
    assert loaded.pixels[:20].mean() > 200 and loaded.pixels[-20:].mean() < 50  # the band is now on top


def test_not_an_image_is_a_one_line_error():
    with pytest.raises(ImageError, match=r"^not an image: ") as info:
        load_image(b"hello, this is text")
    assert "\n" not in str(info.value)


def test_image_seed_depends_on_job_seed_and_content_only():
    a = image_seed(0, "ab" * 32)
    assert a == image_seed(0, "ab" * 32)
    assert a != image_seed(1, "ab" * 32)
    assert a != image_seed(0, "cd" * 32)
    assert all(0 <= image_seed(s, "ef" * 32) < 2**31 for s in range(50))


def test_modes_become_rgb_sensibly():
    from xai_batch.images import open_rgb

    def encode(image, fmt="PNG", **options):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        return buffer.getvalue()

    grey16 = Image.fromarray(np.full((4, 4), 40000, np.uint16))
    assert np.asarray(open_rgb(encode(grey16)))[0, 0].tolist() == [156, 156, 156]  # scaled, not clipped to 255
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert np.asarray(open_rgb(gif))[0, 0].tolist() == [255, 0, 0]  # the first frame
    assert open_rgb(encode(Image.new("CMYK", (3, 2)), "JPEG")).mode == "RGB"


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty file (0 bytes)"),
        (b"plain text", "not an image: no known image format recognised"),
    ],
)
def test_unusable_bytes_give_one_line_reasons(data, reason):
    with pytest.raises(ImageError) as info:
        load_image(data)
    assert str(info.value) == reason


def test_size_guard_reads_the_header_only():
    from hostile import png_claiming

    with pytest.raises(ImageError, match=r"^image too large: 40000×40000 > limit 100000000 pixels \(--max-pixels\)$"):
        load_image(png_claiming(40000, 40000))
    with pytest.raises(ImageError, match="image too large: 30×20 > limit 500"):
        load_image(png_claiming(30, 20), max_pixels=500)


def test_discovery_skips_hidden_files_and_links_out_of_the_folder(tmp_path):
    from hostile import make_hostile_folder

    expect = make_hostile_folder(str(tmp_path / "src"), str(tmp_path / "outside"))
    assert discover_images(str(tmp_path / "src")) == sorted(p for p, e in expect.items() if e is not None)

import io

import numpy as np
import pytest
from PIL import Image

from xai_batch.errors import ImageError
from xai_batch.images import image_seed, load_image
from xai_batch.sources import discover_images


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
        (b"plain text", "not an image: not a JPEG, PNG, BMP, GIF, WEBP or TIFF file"),
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
    with pytest.raises(ImageError, match=r"^image too large: over 2000000000 pixels, past any --max-pixels$"):
        load_image(png_claiming(60000, 60000))  # where Pillow's own check, left on, speaks first


def test_discovery_skips_hidden_files_and_links_out_of_the_folder(tmp_path):
    from hostile import make_hostile_folder

    expect = make_hostile_folder(str(tmp_path / "src"), str(tmp_path / "outside"))
    assert discover_images(str(tmp_path / "src")) == sorted(p for p, e in expect.items() if e is not None)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PCX", "TGA", "PPM", "EPS"])
def test_only_the_formats_the_extensions_promise_are_opened(fmt):
    """A file whose content is another format, whatever its name, reaches no decoder (EPS would run Ghostscript)."""
    from xai_batch.images import load_object_mask

    data = _encoded(Image.new("RGB", (8, 8), (200, 30, 30)), fmt)
    with pytest.raises(ImageError, match=r"^not an image: not a JPEG, PNG, BMP, GIF, WEBP or TIFF file$"):
        load_image(data)
    if fmt != "PPM":  # the generated datasets' masks are .mask.pgm
        with pytest.raises(ImageError, match=r"^not an image: "):
            load_object_mask(data)
    assert load_object_mask(_encoded(Image.new("L", (8, 8), 255), "PPM")).all()


def test_a_mask_is_header_checked_like_an_image(tmp_path):
    """A small mask file claiming a huge size is refused before a pixel is decoded: the image's error row
    names the mask and its size."""
    from hostile import png_claiming
    from xai_batch.config import ExplainConfig
    from xai_batch.explaining.steps import decode
    from xai_batch.preprocessing import SEEDS
    from xai_batch.storage import locate

    (tmp_path / "photos" / "a").mkdir(parents=True)
    (tmp_path / "masks" / "a").mkdir(parents=True)
    (tmp_path / "photos" / "a" / "b.jpg").write_bytes(_encoded(Image.new("RGB", (30, 20), (9, 99, 199)), "JPEG"))
    (tmp_path / "masks" / "a" / "b.png").write_bytes(png_claiming(3000, 2000))
    config = ExplainConfig(str(tmp_path / "photos"), str(tmp_path / "out"), masks=str(tmp_path / "masks"),
                           max_pixels=1_000_000)
    header, decoded = decode(locate(str(tmp_path / "photos")), "a/b.jpg", config, SEEDS)
    assert decoded is None
    assert header.error == "object mask a/b.png: mask too large: 3000×2000 > limit 1000000 pixels (--max-pixels)"


def test_pngs_read_back_from_a_manifest_are_header_checked():
    from hostile import png_claiming
    from xai_batch.manifest.rows import decode_heatmap, decode_mask, decode_segments

    for decoder in (decode_segments, decode_mask, decode_heatmap):
        with pytest.raises(ImageError, match=r"^stored PNG too large: 5000×5000 > limit 16777216 pixels"):
            decoder(png_claiming(5000, 5000))
    with pytest.raises(ImageError, match=r"^not an image: not a PNG file$"):
        decode_mask(_encoded(Image.new("L", (8, 8)), "BMP"))


def test_16_bit_images_are_converted_in_strips():
    """The conversion to 8 bits needs a strip's float64 temporaries, not the whole image's (8 bytes a pixel
    each); the result is the same rounding as before."""
    import tracemalloc

    from xai_batch.images import open_rgb

    height, width = 4000, 1000
    ramp = (np.arange(height * width, dtype=np.uint32) % 65536).astype(np.uint16).reshape(height, width)
    data = _encoded(Image.fromarray(ramp), "PNG")
    tracemalloc.start()
    try:
        rgb = open_rgb(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * height * width  # numpy's own: the 8-bit image and a strip's, not 8 bytes a pixel, four times
    expected = np.clip(np.rint(ramp.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(rgb)[..., 0], expected)
    floats = Image.fromarray(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64), "F")
    grey = np.asarray(open_rgb(_encoded(floats, "TIFF")))[..., 0]
    assert grey[0, 0] == 0 and grey[-1, -1] == 255  # [0, 1] floats scaled by 255


def _linked_source(tmp_path):
    """SOURCE with a good image, a file link out of it and a folder link out of it, and a listing of all three;
    outside it, a private picture the links reach."""
    source, outside = tmp_path / "src", tmp_path / "private"
    source.mkdir()
    outside.mkdir()
    (source / "good.png").write_bytes(_encoded(Image.new("RGB", (30, 20), (9, 99, 199)), "PNG"))
    (outside / "private.png").write_bytes(_encoded(Image.new("RGB", (30, 20), (250, 0, 0)), "PNG"))
    (source / "link.png").symlink_to(outside / "private.png")
    (source / "dirlink").symlink_to(outside)
    (source / "list.txt").write_text("good.png\nlink.png\ndirlink/private.png\n")
    return source, outside


def test_a_listing_cannot_read_through_a_link_out_of_its_folder(tmp_path):
    """Issue 31, finding 2: a listing naming link.png (to a file outside) or dirlink/private.png (through a
    linked folder) had the outside file explained and its sha256 written. The read refuses, for decode, masks
    and render alike; a link that stays inside still reads."""
    from xai_batch.config import ExplainConfig
    from xai_batch.explaining.steps import decode
    from xai_batch.preprocessing import SEEDS
    from xai_batch.sources import discover_images
    from xai_batch.storage import OutsideLocation, locate

    source, outside = _linked_source(tmp_path)
    (source / "inside.png").symlink_to(source / "good.png")
    listing = str(source / "list.txt")
    assert discover_images(listing) == ["dirlink/private.png", "good.png", "link.png"]  # the text is inside
    config = ExplainConfig(listing, str(tmp_path / "out"))
    for path in ("link.png", "dirlink/private.png"):
        header, decoded = decode(locate(str(source)), path, config, SEEDS)
        assert decoded is None and header.sha256 is None, path
        assert header.error.startswith("cannot read: ") and "leads out of" in header.error, header.error
        with pytest.raises(OutsideLocation):
            locate(str(source)).child(path).read_bytes()
    for path in ("good.png", "inside.png"):
        header, decoded = decode(locate(str(source)), path, config, SEEDS)
        assert header.error is None and decoded is not None, header.error
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "good.png").symlink_to(outside / "private.png")
    masked = ExplainConfig(listing, str(tmp_path / "out"), masks=str(tmp_path / "masks"))
    header, _ = decode(locate(str(source)), "good.png", masked, SEEDS)
    assert header.error.startswith("object mask good.png: ") and "leads out of" in header.error, header.error


def test_render_cannot_read_through_a_link_out_of_source(tmp_path):
    from xai_batch.analysis.overlays import RenderOptions
    from xai_batch.distributed.rendering import _render_batch
    from xai_batch.preprocessing import SEEDS
    from xai_batch.storage import locate

    source, _ = _linked_source(tmp_path)
    rows = [({"path": path, "method": "lime", "explained_index": 0, "sha256": "0" * 64}, f"{n}.png")
            for n, path in enumerate(["link.png", "dirlink/private.png"])]
    entries = _render_batch(rows, locate(str(source)), locate(str(tmp_path / "o")), RenderOptions(), SEEDS)
    assert [entry["file"] for entry in entries] == ["", ""]
    assert all("leads out of" in entry["error"] for entry in entries), entries


def test_a_file_past_what_its_pixels_can_take_is_not_read(tmp_path):
    """Issue 31, finding 11: a multi-GB file with a small valid header was read whole. The read stops at
    what an image within --max-pixels can take: an error row, the file unread."""
    from xai_batch.config import ExplainConfig
    from xai_batch.explaining.steps import decode
    from xai_batch.images import file_bytes
    from xai_batch.preprocessing import SEEDS
    from xai_batch.storage import TooLarge, locate

    (tmp_path / "src").mkdir()
    padded = tmp_path / "src" / "padded.png"
    padded.write_bytes(_encoded(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG"))
    limit = file_bytes(1000)
    with open(padded, "r+b") as handle:  # a sparse tail: gigabytes on a real disk, nothing here
        handle.truncate(limit + 1)
    config = ExplainConfig(str(tmp_path / "src"), str(tmp_path / "out"), max_pixels=1000)
    header, decoded = decode(locate(str(tmp_path / "src")), "padded.png", config, SEEDS)
    assert decoded is None
    assert header.error == (f"file too large: {limit + 1} bytes, more than an image within --max-pixels 1000 can "
                            f"take ({limit} bytes)")
    with pytest.raises(TooLarge):
        locate(str(tmp_path / "src")).child("padded.png").read_bytes(limit)
    with open(padded, "r+b") as handle:
        handle.truncate(limit)
    header, decoded = decode(locate(str(tmp_path / "src")), "padded.png", config, SEEDS)
    assert header.error is None and decoded is not None  # at the bound, it is read: Pillow stops at IEND

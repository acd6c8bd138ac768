"""A folder of every kind of hostile input, generated (no binary blobs committed).

``make_hostile_folder(root)`` returns what each path must become: ``"ok"``,
an error row whose reason starts with the given text, or nothing at all.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image

OK = "ok"


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width, dtype=np.float64)[None, :, None] * np.ones((height, 1, 3))
    return np.clip(base + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)


def _save(path: str, image: Image.Image, **options) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, **options)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def make_hostile_folder(root: str, outside: str) -> dict[str, str | None]:
    """Write the hostile inputs under ``root`` (and one target under ``outside``)."""
    expect: dict[str, str | None] = {}
    photo = Image.fromarray(_photo(64, 48))

    def ok(rel: str, image: Image.Image, **options) -> None:
        _save(os.path.join(root, rel), image, **options)
        expect[rel] = OK

    ok("grey.png", photo.convert("L"))
    ok("rgba.png", photo.convert("RGBA"))
    ok("palette.gif", photo.convert("P"))
    ok("sixteen-bit.png", Image.fromarray((np.asarray(photo.convert("L")).astype(np.uint16) * 257)))
    ok("cmyk.jpg", photo.convert("CMYK"))
    ok("one-pixel.png", Image.new("RGB", (1, 1), (200, 30, 30)))
    ok("strip.png", Image.fromarray(_photo(3000, 6, seed=1)))
    exif = photo.getexif()
    exif[0x0112] = 6  # shown rotated by 90 degrees: 48 wide, 64 high
    ok("rotated.jpg", photo, exif=exif.tobytes())
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    ok("animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0)
    ok("animated.webp", frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0)
    ok("UPPER.JPG", photo)
    ok("nested/deeper/inner.png", photo)
    ok("with spaces é ü 日本.png", photo)
    ok("tiff.TIF", photo)
    ok("bitmap.bmp", photo)

    def error(rel: str, data: bytes, reason: str) -> None:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
        expect[rel] = reason

    jpeg = io.BytesIO()
    photo.save(jpeg, format="JPEG")
    error("empty.png", b"", "empty file (0 bytes)")
    error("truncated.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "truncated JPEG: ")
    error("text.png", b"Dear diary, today I saved a text file as PNG.\n", "not an image: ")
    error("random.jpeg", np.random.default_rng(3).bytes(5000), "not an image: ")
    error("bomb.png", png_claiming(40000, 40000), "image too large: 40000×40000 > limit ")

    for rel in ("notes.txt", "model.pt", ".DS_Store", ".hidden.png", ".cache/thumb.png"):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(jpeg.getvalue())
        expect[rel] = None
    os.makedirs(outside, exist_ok=True)
    _save(os.path.join(outside, "elsewhere.png"), photo)
    os.symlink(os.path.join(outside, "elsewhere.png"), os.path.join(root, "link-outside.png"))
    expect["link-outside.png"] = None
    os.symlink(os.path.join(outside), os.path.join(root, "linked-folder"))
    expect["linked-folder/elsewhere.png"] = None
    os.symlink(os.path.join(root, "grey.png"), os.path.join(root, "link-inside.png"))
    expect["link-inside.png"] = OK
    return expect

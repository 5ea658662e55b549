"""Decoding: formats, orientation, colour modes and limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kyb.config import ImageLimits
from kyb.errors import ImageTooLarge, InvalidImage
from kyb.imageio import decode_image

LIMITS = ImageLimits()


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _marked(width: int = 120, height: int = 80) -> Image.Image:
    """Red block at the top-left corner, so orientation can be checked."""
    array = np.zeros((height, width, 3), np.uint8)
    array[:20, :30] = (255, 0, 0)
    return Image.fromarray(array)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_formats_decode_to_rgb(fmt: str) -> None:
    decoded = decode_image(_save(_marked(), fmt), LIMITS)
    assert decoded.format == fmt
    assert decoded.rgb.shape == (80, 120, 3) and decoded.rgb.dtype == np.uint8
    assert decoded.rgb[5, 5, 0] > 200 and decoded.rgb[5, 5, 2] < 60


def test_exif_orientation_is_applied() -> None:
    image = _marked()
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    decoded = decode_image(_save(image, "JPEG", exif=exif), LIMITS)
    assert decoded.rgb.shape[:2] == (120, 80)
    assert (decoded.original_width, decoded.original_height) == (80, 120)
    # The red block moves from the top-left to the top-right corner.
    assert decoded.rgb[5, 75, 0] > 200 and decoded.rgb[5, 5, 0] < 60


def test_grey_alpha_sixteen_bit_and_cmyk() -> None:
    grey = decode_image(_save(Image.new("L", (64, 64), 90), "PNG"), LIMITS)
    assert grey.rgb.shape == (64, 64, 3) and int(grey.rgb[0, 0, 0]) == 90

    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # fully transparent -> white, as a viewer shows it
    assert int(decode_image(_save(rgba, "PNG"), LIMITS).rgb.min()) == 255

    deep = Image.fromarray(np.full((64, 64), 65535 // 2, np.uint16))
    value = int(decode_image(_save(deep, "PNG"), LIMITS).rgb[0, 0, 0])
    assert 120 <= value <= 135

    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red in CMYK
    red = decode_image(_save(cmyk, "JPEG"), LIMITS).rgb[10, 10]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_bounding_the_longest_side_reports_the_scale() -> None:
    decoded = decode_image(_save(_marked(2000, 1000), "JPEG"), LIMITS, max_side=1024)
    assert max(decoded.rgb.shape[:2]) <= 1024
    assert decoded.original_width == 2000
    assert decoded.scale == pytest.approx(2000 / decoded.width, rel=1e-3)


def test_limits() -> None:
    with pytest.raises(ImageTooLarge, match="bytes"):
        decode_image(b"x" * 101, ImageLimits(max_bytes=100))
    bomb = _save(Image.new("L", (5000, 5000)), "PNG")  # tiny file, 25 Mpx
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode_image(bomb, ImageLimits(max_pixels=10_000_000))
    with pytest.raises(InvalidImage, match="unsupported image type"):
        decode_image(_save(Image.new("RGB", (64, 64)), "BMP"), LIMITS)
    with pytest.raises(InvalidImage, match="expected image bytes"):
        decode_image("not bytes", LIMITS)  # type: ignore[arg-type]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (no real pixels behind it: a bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("width", "height"), [(9_000, 9_000), (20_000, 20_000), (60_000, 60_000)])
def test_every_pixel_limit_answer_is_the_projects_own(width: int, height: int) -> None:
    # Past ~179 Mpx Pillow refuses the header itself; the answer still names the configured limit.
    with pytest.raises(ImageTooLarge, match=r"^image is .*pixels; the limit is 60000000$"):
        decode_image(_png_header(width, height), ImageLimits())

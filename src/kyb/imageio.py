"""Decoding untrusted image bytes once, safely, into the pixels every stage works on.

JPEG, PNG and WebP are accepted (Pillow decodes; it already handles CMYK, palettes and EXIF). The
header is checked against :class:`~kyb.config.ImageLimits` before any pixel is decoded, so a
decompression bomb costs nothing; EXIF orientation is applied so boxes and outlines are in the frame
a person sees; grey, alpha, 16-bit and CMYK inputs all come out as 8-bit RGB.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from kyb.config import ImageLimits
from kyb.errors import ImageTooLarge, InvalidImage

__all__ = [
    "SUPPORTED_FORMATS",
    "DecodedImage",
    "ImageHeader",
    "decode_image",
    "over_byte_limit",
    "read_header",
    "resize_longest",
]

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})


@dataclass(frozen=True)
class DecodedImage:
    """An upright 8-bit RGB image plus what is known about the bytes it came from.

    ``rgb`` is H×W×3 uint8, possibly downscaled at decode time; ``scale`` maps its pixel coordinates
    back to the upright original (``original = pixel * scale``).
    """

    rgb: np.ndarray
    sha256: str
    format: str
    original_width: int
    original_height: int
    scale: float
    size_bytes: int

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    def gray(self, region: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Luma (H×W uint8) with the BT.601 weights OpenCV uses, of the whole image or of ``region``
        (x1, y1, x2, y2 integer pixels) only."""
        rgb = self.rgb if region is None else self.rgb[region[1] : region[3], region[0] : region[2]]
        r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
        return np.clip(0.299 * r + 0.587 * g + 0.114 * b + 0.5, 0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB, compositing transparency over white (how a viewer shows it)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = float(array.max()) if array.size else 0.0
        # 16-bit PNGs use the full 0..65535 range; scale by the nominal range, or the peak if larger.
        top = max(65535.0 if image.mode.startswith("I;16") or peak > 255 else 255.0, peak, 1.0)
        image = Image.fromarray(np.clip(array * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = float(array.min()), float(array.max())
        span = high - low if high > low else 1.0
        image = Image.fromarray(((array - low) * (255.0 / span)).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGB" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        image = image.convert("RGB")  # L, 1, CMYK (Pillow undoes Adobe's inverted CMYK), YCbCr, ...
    return image


@dataclass(frozen=True)
class ImageHeader:
    """What :func:`read_header` learns without decoding a pixel: enough to validate and route."""

    sha256: str
    format: str
    original_width: int  # upright (EXIF orientation applied)
    original_height: int
    size_bytes: int


@contextmanager
def _pillow_errors() -> Iterator[None]:
    """Pillow's failures as one-line :class:`InvalidImage` / :class:`ImageTooLarge` errors."""
    try:
        with warnings.catch_warnings():
            # Our own pixel limit applies (see _open); Pillow's global bomb warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except (InvalidImage, ImageTooLarge):
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb_error(exc, None) from None
    except UnidentifiedImageError:
        raise InvalidImage("not an image: the bytes match no JPEG, PNG or WebP signature") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidImage(f"corrupt or truncated image: {reason}") from None


def over_byte_limit(size: int | None, limit: int) -> ImageTooLarge:
    """The one message for a photo over ``limits.max_bytes``, from the decoder or from a server that
    refuses a body before reading it all (``size`` None: how far over is not known)."""
    told = f"{size} bytes" if size is not None else f"over {limit} bytes"
    return ImageTooLarge(f"image is {told}; the limit is {limit}")


def _bomb_error(exc: Image.DecompressionBombError, limit: int | None) -> ImageTooLarge:
    """Pillow's own bomb refusal in the words of our pixel limit (``limit`` None: not known here)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{found.group(1)} pixels" if found else "too many pixels"
    return ImageTooLarge(f"image is {size}; " + (f"the limit is {limit}" if limit else "over the pixel limit"))


def _open(data: bytes, limits: ImageLimits) -> tuple[Image.Image, str, str]:
    """(lazily opened image, format, sha256) once the header passes ``limits``; no pixel decoded yet.

    Call inside :func:`_pillow_errors`.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidImage(f"expected image bytes, got {type(data).__name__}")
    if not data:
        raise InvalidImage("empty file: 0 bytes")
    if len(data) > limits.max_bytes:
        raise over_byte_limit(len(data), limits.max_bytes)
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = Image.open(io.BytesIO(data), formats=None)
    except Image.DecompressionBombError as exc:
        # Pillow refuses far larger headers itself, before ours is read: the same answer in our words.
        raise _bomb_error(exc, limits.max_pixels) from None
    fmt = image.format or "unknown"
    if fmt not in SUPPORTED_FORMATS:
        raise InvalidImage(f"unsupported image type {fmt}; send JPEG, PNG or WebP")
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}")
    if min(width, height) < limits.min_side:
        raise InvalidImage(f"image is {width}x{height}; both sides must be >= {limits.min_side} px")
    return image, fmt, digest


def _upright_size(image: Image.Image) -> tuple[int, int]:
    # EXIF orientations 5..8 rotate by 90 degrees: the upright frame swaps width and height.
    width, height = image.size
    return (height, width) if image.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (width, height)


def read_header(data: bytes, limits: ImageLimits) -> ImageHeader:
    """Validates ``data`` as far as its header goes (type, bytes, pixels, sides) without decoding it.

    Raises what :func:`decode_image` raises for those checks; a body that is corrupt or truncated
    is found only by decoding. Costs a hash and a header parse (well under a millisecond).
    """
    with _pillow_errors():
        image, fmt, digest = _open(data, limits)
        width, height = _upright_size(image)
    return ImageHeader(digest, fmt, int(width), int(height), len(data))


def decode_image(data: bytes, limits: ImageLimits, *, max_side: int | None = None) -> DecodedImage:
    """Decodes ``data`` into an upright RGB image whose longest side is at most ``max_side``.

    Raises :class:`InvalidImage` (empty, not an image, unsupported type, corrupt, truncated, too small)
    or :class:`ImageTooLarge` (over ``limits.max_bytes`` or ``limits.max_pixels``), each with one line
    saying why. JPEGs are decoded at a reduced DCT scale when that is enough for ``max_side``.
    """
    with _pillow_errors():
        image, fmt, digest = _open(data, limits)
        if max_side is not None and fmt == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale when the result is still >= max_side: much faster.
            image.draft("RGB", (max_side, max_side))
        image.load()
        upright_w, upright_h = _upright_size(image)
        image = ImageOps.exif_transpose(image)
        rgb_image = _to_rgb(image)
    rgb = np.asarray(rgb_image, dtype=np.uint8)
    scale = upright_w / rgb.shape[1]
    if max_side is not None and max(rgb.shape[:2]) > max_side:
        rgb, factor = resize_longest(rgb, max_side)
        scale *= factor
    return DecodedImage(
        rgb=np.ascontiguousarray(rgb),
        sha256=digest,
        format=fmt,
        original_width=int(upright_w),
        original_height=int(upright_h),
        scale=float(scale),
        size_bytes=len(data),
    )


def resize_longest(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscales so the longest side is ``max_side`` (area interpolation); returns (image, old/new)."""
    import cv2

    height, width = image.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return image, 1.0
    factor = longest / max_side
    size = (max(1, round(width / factor)), max(1, round(height / factor)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return resized, width / size[0]

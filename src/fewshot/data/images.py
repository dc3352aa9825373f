"""Decoding one image file, within bounds: the one place loaders turn bytes into pixels.

An image may be hostile or unusual: a "decompression bomb" (a small PNG that claims
tens of thousands of pixels a side) is refused from its header, before any pixel is
decoded, and 16- and 32-bit images (``I;16``, ``I``) and float ones (``F``) are scaled to
8 bits rather than clipped (PIL's own conversion would turn every value above 255 white).
Training data and the images given to ``fit`` and ``predict`` are decoded here alike.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

#: The most pixels an image may have (8,192 × 8,192), far above any dataset's images;
#: Pillow's own, global, limit (its decompression-bomb check) applies too.
MAX_PIXELS = 1 << 26

# Pillow's mode of 16- and 32-bit grayscale images, and the value each maps to white.
_WIDE = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}


def open_image(source: bytes | str | Path, label: str) -> Image.Image:
    """The image in ``source`` (bytes or a file), decoded only after its header showed at most
    :data:`MAX_PIXELS` pixels: the one bounded decoder every image file goes through (dataset
    loaders, ``fit``, ``predict``). Anything unreadable or too large is a :class:`DataError`
    naming ``label``."""
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 M pixels; check_size refuses from 67 M, in fewshot's words.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                check_size(image, label)
                image.load()
                return image.copy()  # the pixels, detached from the file being closed
    except Image.DecompressionBombError as e:  # Pillow's own refusal, from 179 M pixels (in the header)
        raise DataError(f"{label} claims more pixels than fewshot decodes ({MAX_PIXELS:,}, 8,192 x 8,192): {e}; "
                        "it is damaged or hostile, or shrink it first") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{label} is not a readable image ({e}); fix or remove it") from None


def check_size(image: Image.Image, label: str) -> None:
    """Refuse an image of more than :data:`MAX_PIXELS` pixels (known from its header alone)."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise DataError(f"{label} claims {width}x{height} pixels, more than fewshot decodes ({MAX_PIXELS:,}, "
                        "8,192 x 8,192); it is damaged or hostile, or shrink it first")


def to_pixels(image: Image.Image, mode: str, size: tuple[int, int], label: str) -> np.ndarray:
    """``image`` as uint8 pixels in Pillow ``mode`` (``"L"``: (h, w); ``"RGB"``: (h, w, 3)) of
    ``size`` (width, height), turned as its EXIF orientation says, resized with Lanczos: how
    training decodes every image (files and PIL images alike), 16-bit,
    32-bit and float ones scaled to 8 bits rather than clipped."""
    check_size(image, label)
    try:
        # A photo as it is shown: a camera's EXIF orientation turns the stored pixels.
        image = _eight_bit(ImageOps.exif_transpose(image), label).convert(mode)
        if image.size != tuple(size):
            image = image.resize(tuple(size), Image.Resampling.LANCZOS)
        return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError) as e:  # a lazily opened image that cannot be decoded
        raise DataError(f"{label} is not a readable image ({e}); fix or remove it") from None


def decode_image(source: bytes | str | Path, mode: str, size: int, label: str) -> np.ndarray:
    """The image in ``source`` (bytes or a file) as a ``size`` × ``size`` array of uint8 in
    Pillow ``mode`` (see :func:`to_pixels`), decoded within bounds (see :func:`open_image`)."""
    return to_pixels(open_image(source, label), mode, (size, size), label)


def _eight_bit(image: Image.Image, label: str) -> Image.Image:
    """A 16- or 32-bit integer or a float grayscale image scaled to 8 bits; others as they are.

    Integers: ``round(v * 255 / 65535)`` (an ``I`` image whose values all lie in 0-255 is
    8-bit values in a 32-bit container, kept). Floats (``F``): values in [0, 1] are scaled by
    255, values in [0, 255] kept; any other range has no meaning fewshot can guess (refused).
    """
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise DataError(f"{label} holds NaN or infinite pixel values; fix or remove it")
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise DataError(f"{label} is a float image with values {lo:.3g}..{hi:.3g}; fewshot reads float images "
                            "in [0, 1] or [0, 255]; rescale it")
        scale = 255.0 if hi <= 1.0 else 1.0
        return Image.fromarray(np.rint(values * scale).clip(0, 255).astype(np.uint8), "L")
    if image.mode not in _WIDE:
        return image
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "I" and values.max(initial=0) <= 255:  # 8-bit values in a 32-bit container
        return Image.fromarray(values.clip(0, 255).astype(np.uint8), "L")
    scaled = np.rint(values.clip(0, _WIDE[image.mode]) * (255 / _WIDE[image.mode]))
    return Image.fromarray(scaled.astype(np.uint8), "L")


__all__ = ["MAX_PIXELS", "check_size", "decode_image", "open_image", "to_pixels"]

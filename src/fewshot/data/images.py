"""Decoding one image file, within bounds: the one place loaders turn bytes into pixels.

An image may be hostile or unusual: a "decompression bomb" (a small PNG that claims
tens of thousands of pixels a side) is refused from its header, before any pixel is
decoded, and 16-bit images (``I;16``, ``I``) are scaled to 8 bits rather than clipped
(PIL's own conversion would turn every value above 255 white).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

#: The most pixels an image may have (8,192 × 8,192), far above any dataset's images;
#: Pillow's own, global, limit (its decompression-bomb check) applies too.
MAX_PIXELS = 1 << 26

# Pillow's mode of 16- and 32-bit grayscale images, and the value each maps to white.
_WIDE = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}


def decode_image(source: bytes | str | Path, mode: str, size: int, label: str) -> np.ndarray:
    """The image in ``source`` (bytes or a file) as a ``size`` × ``size`` array of uint8 in
    Pillow ``mode`` (``"L"``: (h, w); ``"RGB"``: (h, w, 3)), resized with Lanczos.
    Anything unreadable, or too large, is a :class:`DataError` naming ``label``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise DataError(f"{label} claims {width}x{height} pixels, more than any dataset image "
                                    f"({MAX_PIXELS:,}); it is damaged or hostile: remove it")
                image = _eight_bit(image).convert(mode)
                if image.size != (size, size):
                    image = image.resize((size, size), Image.Resampling.LANCZOS)
                return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise DataError(f"{label} is not a readable image ({e}); fix or remove it") from None


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit grayscale image scaled to 8 bits (``round(v * 255 / 65535)``); others as they are."""
    if image.mode not in _WIDE:
        return image
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "I" and values.max(initial=0) <= 255:  # 8-bit values in a 32-bit container
        return Image.fromarray(values.clip(0, 255).astype(np.uint8), "L")
    scaled = np.rint(values.clip(0, _WIDE[image.mode]) * (255 / _WIDE[image.mode]))
    return Image.fromarray(scaled.astype(np.uint8), "L")


__all__ = ["MAX_PIXELS", "decode_image"]

"""Decoding any accepted image file to RGB uint8, with one documented rule per mode.

Conversion to RGB (H, W, 3) uint8:
- ``RGB``: as is.                          - ``L`` (grey): replicated to 3 channels.
- ``RGBA`` / ``LA`` / ``P`` with transparency: composited onto black (spectrogram backgrounds are
  dark; white would invent signal), alpha dropped.
- ``P`` (palette) without transparency: palette lookup.
- ``I;16`` / ``I`` / 16-bit PNG: the full 16-bit range is scaled linearly to 0-255 (``v / 257``
  for 16-bit; 32-bit ``I`` is scaled by its maximum over 65535 first), then grey -> RGB.
- ``F`` (float TIFF): min-max scaled to 0-255 per image, then grey -> RGB.
- ``CMYK`` / ``YCbCr`` / others: Pillow's ``convert("RGB")``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
"""File extensions step 3 accepts (lower case)."""


def to_rgb(img: Image.Image) -> np.ndarray:
    """A decoded Pillow image -> RGB uint8 array (H, W, 3), by the rules in the module docstring."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        if mode == "I" and a.size and a.max() > 65535:
            a = a * (65535.0 / a.max())
        grey = np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        scaled = np.zeros_like(a) if hi <= lo else 255 * (a - lo) / (hi - lo)
        grey = np.round(scaled).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(black, rgba).convert("RGB"))
    if mode == "RGB":
        return np.asarray(img)
    return np.asarray(img.convert("RGB"))


FINGERPRINT_BANDS = 64
"""Frequency rows of a fingerprint (box-averaged): keeps speckle detail at 1/4 of the work of 256 rows."""
FINGERPRINT_COLUMNS = 512
"""Time columns of a fingerprint; wider images are box-resized (a crop then matches to about a column)."""

DECOMPRESSION_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)
"""What ``open_image`` raises for an image with more than ``Image.MAX_IMAGE_PIXELS`` pixels."""


@contextlib.contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """``Image.open`` that refuses decompression bombs instead of only warning about them.

    Pillow raises ``DecompressionBombError`` above twice ``Image.MAX_IMAGE_PIXELS`` (89.5 M by default)
    but between one and two times the limit it only warns and then decodes (up to ~180 M pixels, about
    0.5 GB of RGB): a tiny file could still take the memory of a Kaggle session. Here both raise
    (one of ``DECOMPRESSION_BOMB``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            yield img


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode ``path`` fully and return RGB uint8 (H, W, 3); Pillow errors (and bombs) propagate."""
    with open_image(path) as img:
        img.load()
        return to_rgb(img)


def load_rgb_resized(path: str | Path, size: int) -> np.ndarray:
    """Decode ``path`` and resize to (size, size) with bicubic filtering -> uint8 (size, size, 3).

    Non-square images are resized without cropping (the whole time/velocity window is kept);
    step 3 records each image's size so an aspect change is visible in ``dataset.json``.
    """
    rgb = load_rgb(path)
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC))


def fingerprint(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> grey uint8 (min(H, 64), min(W, 512)), box-averaged: the near-duplicate input.

    Kept small so step 3 holds one per image (32 KB at most) for :mod:`aetune.data.neardup`.
    """
    grey = Image.fromarray(rgb).convert("L")
    size = (min(grey.width, FINGERPRINT_COLUMNS), min(grey.height, FINGERPRINT_BANDS))
    return np.asarray(grey.resize(size, Image.Resampling.BOX) if size != grey.size else grey)

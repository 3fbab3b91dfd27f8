"""Every accepted image mode decodes to RGB uint8 by the documented rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aetune.data.images import fingerprint, load_rgb, load_rgb_resized


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_grey_is_replicated(tmp_path: Path) -> None:
    a = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    rgb = load_rgb(_save(Image.fromarray(a, "L"), tmp_path / "g.png"))
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3)
    assert (rgb == a[..., None]).all()


def test_rgba_is_composited_on_black(tmp_path: Path) -> None:
    a = np.zeros((16, 16, 4), np.uint8)
    a[..., 0] = 200
    a[..., 3] = 128  # half transparent red
    rgb = load_rgb(_save(Image.fromarray(a, "RGBA"), tmp_path / "a.png"))
    assert rgb[0, 0].tolist() == [100, 0, 0]


def test_la_and_palette_with_transparency(tmp_path: Path) -> None:
    la = Image.fromarray(np.stack([np.full((16, 16), 255, np.uint8), np.zeros((16, 16), np.uint8)], -1), "LA")
    assert load_rgb(_save(la, tmp_path / "la.png")).max() == 0  # fully transparent white -> black
    p = Image.fromarray(np.full((16, 16), 1, np.uint8), "P")
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert load_rgb(_save(p, tmp_path / "p.png"))[0, 0].tolist() == [10, 20, 30]
    p.info["transparency"] = 1
    assert load_rgb(_save(p, tmp_path / "pt.png", transparency=1))[0, 0].tolist() == [0, 0, 0]


def test_sixteen_bit_png_is_scaled_to_eight_bit(tmp_path: Path) -> None:
    a = np.array([[0, 257 * 100, 65535, 65535]] * 16, dtype=np.uint16).repeat(4, axis=1)
    img = Image.fromarray(a)
    path = _save(img, tmp_path / "i16.png")
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    rgb = load_rgb(path)
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[0, 4].tolist() == [100, 100, 100]
    assert rgb[0, 8].tolist() == [255, 255, 255]


def test_float_tiff_is_min_max_scaled(tmp_path: Path) -> None:
    a = np.linspace(-1.0, 3.0, 16 * 16, dtype=np.float32).reshape(16, 16)
    rgb = load_rgb(_save(Image.fromarray(a, "F"), tmp_path / "f.tif"))
    assert rgb.min() == 0 and rgb.max() == 255


@pytest.mark.parametrize("ext", ["png", "jpg", "bmp", "tiff", "webp"])
def test_formats_decode(tmp_path: Path, ext: str) -> None:
    a = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    rgb = load_rgb(_save(Image.fromarray(a), tmp_path / f"x.{ext}"))
    assert rgb.shape == (20, 24, 3)
    if ext in ("png", "bmp", "tiff"):
        assert (rgb == a).all()


def test_resize_keeps_the_whole_frame(tmp_path: Path) -> None:
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, 40:] = 255
    out = load_rgb_resized(_save(Image.fromarray(a), tmp_path / "w.png"), 32)
    assert out.shape == (32, 32, 3)
    assert out[:, :14].max() < 10 and out[:, 18:].min() > 245  # left/right halves survive, no crop


def test_fingerprint_is_a_small_grey_copy() -> None:
    big = np.zeros((300, 1000, 3), np.uint8)
    big[:, 500:] = 255  # right half white
    fp = fingerprint(big)
    assert fp.shape == (64, 512) and fp.dtype == np.uint8  # box-averaged to 64 rows, 512 columns
    assert fp[:, :255].max() == 0 and fp[:, 257:].min() == 255
    small = np.full((20, 30, 3), 7, np.uint8)
    assert fingerprint(small).shape == (20, 30) and (fingerprint(small) == 7).all()  # never upsampled

"""secondread.io.raster: stored values kept, colour to luminance, errors as one line.

References are arrays written here with Pillow (known values) and Pillow's own decoding of the
real mini-MIAS files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage

from secondread.errors import SecondreadError
from secondread.io import load_image
from secondread.io.raster import luminance, read_raster

RNG = np.random.default_rng(20240601)


def test_8bit_png_keeps_values(tmp_path):
    a = RNG.integers(0, 256, (37, 53), dtype=np.uint8)
    PILImage.fromarray(a).save(tmp_path / "a.png")
    img = read_raster(tmp_path / "a.png")
    assert img.pixels.dtype == np.float32 and img.shape == (37, 53)
    np.testing.assert_array_equal(img.pixels, a)
    assert img.modality == "OT" and img.spacing is None


def test_16bit_png_keeps_values_above_255(tmp_path):
    a = RNG.integers(0, 65536, (40, 30), dtype=np.uint16)
    a[0, 0], a[0, 1] = 0, 65535
    PILImage.fromarray(a).save(tmp_path / "a16.png")
    img = load_image(tmp_path / "a16.png")
    np.testing.assert_array_equal(img.pixels, a)
    assert img.pixels.max() == 65535


def test_rgb_png_becomes_bt601_luminance(tmp_path):
    rgb = RNG.integers(0, 256, (25, 35, 3), dtype=np.uint8)
    PILImage.fromarray(rgb).save(tmp_path / "rgb.png")
    img = read_raster(tmp_path / "rgb.png", modality="XC")
    assert img.shape == (25, 35) and img.modality == "XC"
    exact = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(img.pixels, exact, atol=1e-3)
    pillow_l = np.asarray(PILImage.fromarray(rgb).convert("L"), dtype=np.float64)  # rounds to uint8
    assert np.abs(img.pixels - pillow_l).max() <= 1.0


def test_pure_colours_have_their_bt601_weights():
    primaries = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(luminance(primaries)[0], [76.245, 149.685, 29.07, 255.0], atol=1e-3)


@pytest.mark.parametrize("suffix", [".jpg", ".tif", ".pgm", ".bmp"])
def test_other_formats(tmp_path, suffix):
    a = RNG.integers(0, 256, (16, 24), dtype=np.uint8)
    path = tmp_path / f"a{suffix}"
    PILImage.fromarray(a).save(path)
    expected = np.asarray(PILImage.open(path), dtype=np.float32)  # lossy JPEG: compare with Pillow's decoding
    np.testing.assert_array_equal(load_image(path).pixels, expected)


def test_mini_mias_png_equals_pillow(data_root):
    folder = data_root / "mammography" / "mini-mias"
    files = sorted(folder.glob("mdb*.png"))[:3]
    if not files:
        pytest.skip("no mini-MIAS PNG in the data folder")
    for path in files:
        with PILImage.open(path) as im:
            expected = np.asarray(im)
        img = load_image(path)
        assert img.shape == expected.shape == (1024, 1024)
        np.testing.assert_array_equal(img.pixels, expected)


def test_garbage_and_truncated_png_raise_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png at all" * 10)
    a = RNG.integers(0, 256, (64, 64), dtype=np.uint8)
    PILImage.fromarray(a).save(tmp_path / "full.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes((tmp_path / "full.png").read_bytes()[:200])
    for path in (garbage, cut, tmp_path / "missing.png", tmp_path):
        with pytest.raises(SecondreadError) as info:
            read_raster(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)

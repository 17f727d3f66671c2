"""Real pixels re-encoded by pydicom's own encoders, and real files rewritten to exercise the
corners of the pixel pipeline the samples lack (multi-valued windows, VOI LUT Sequence, signed
values and garbage above Bits Stored, uncompressed RGB and YBR).

References are independent of our code: the original stored values, pydicom's own
``apply_modality_lut``/``apply_voi_lut``, or arithmetic written out here from PS3.3/PS3.5.
"""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space
from pydicom.uid import (JPEG2000, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless,
                         JPEGLSNearLossless, RLELossless)

from secondread.io.dicom import read_dicom

BT601 = np.array([0.299, 0.587, 0.114])


def _dcm(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def sources(data_root):
    return {"MR_small": data_root / "dicom" / "MR_small.dcm",
            "CT_small": data_root / "dicom" / "CT_small.dcm",
            "LIDC_43": data_root / "ct" / "LIDC-IDRI-0001" / "series" / "000043.dcm"}


def _encode(src, dst, syntax, **kw):
    ds = _dcm(src)
    original = ds.pixel_array.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.compress(syntax, **kw)
    if syntax in (JPEG2000, JPEGLSNearLossless):
        ds.LossyImageCompression = "01"  # PS3.3 C.7.6.1.1.5: a lossy copy must say so
    ds.save_as(dst)
    return original


def _pydicom_display(path):
    """pydicom's own Modality then VOI output (the sources are MONOCHROME2 grey-scale)."""
    ds = _dcm(path)
    return apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)


# --- re-encoding -----------------------------------------------------------------------------

LOSSLESS = [RLELossless, JPEG2000Lossless, JPEGLSLossless]


@pytest.mark.parametrize("syntax", LOSSLESS, ids=lambda s: s.name)
@pytest.mark.parametrize("name", ["MR_small", "CT_small", "LIDC_43"])
def test_lossless_reencoding_is_exact(sources, tmp_path, name, syntax):
    out = tmp_path / f"{name}.dcm"
    original = _encode(sources[name], out, syntax)
    assert str(_dcm(out).file_meta.TransferSyntaxUID) == syntax
    np.testing.assert_array_equal(_dcm(out).pixel_array, original)
    ours = read_dicom(out)
    np.testing.assert_allclose(ours.pixels, _pydicom_display(out), rtol=1e-6, atol=1e-3)
    np.testing.assert_array_equal(ours.pixels, read_dicom(sources[name]).pixels)
    assert ours.metadata["transfer_syntax"] == syntax


@pytest.mark.parametrize("name", ["MR_small", "CT_small", "LIDC_43"])
def test_jpeg_ls_near_lossless_stays_within_its_stated_error(sources, tmp_path, name):
    # JPEG-LS NEAR = 3 guarantees |decoded - original| <= 3 for every stored value (ISO 14495-1)
    out = tmp_path / f"{name}.dcm"
    original = _encode(sources[name], out, JPEGLSNearLossless, jls_error=3)
    err = np.abs(_dcm(out).pixel_array.astype(np.int64) - original)
    assert err.max() <= 3
    hu = read_dicom(out, apply_voi=False)
    ref = apply_modality_lut(original, _dcm(sources[name]))
    assert np.abs(hu.pixels - ref).max() <= 3 * float(_dcm(out).get("RescaleSlope", 1))
    np.testing.assert_allclose(read_dicom(out).pixels, _pydicom_display(out), rtol=1e-6, atol=1e-3)
    assert hu.metadata["lossy_compression"] is True


@pytest.mark.parametrize("name", ["MR_small", "CT_small", "LIDC_43"])
def test_jpeg2000_lossy_stays_within_its_stated_error(sources, tmp_path, name):
    # Stated error: the encoder's PSNR target of 90 dB over the 16-bit range means an RMS error of
    # 65535 / 10**(90/20) = 2.07 stored values; we allow 2 % above that, and at most 16 for any pixel.
    out = tmp_path / f"{name}.dcm"
    original = _encode(sources[name], out, JPEG2000, j2k_psnr=[90])
    err = _dcm(out).pixel_array.astype(np.float64) - original
    assert np.sqrt(np.mean(err**2)) <= 65535 / 10 ** (90 / 20) * 1.02
    assert np.abs(err).max() <= 16
    np.testing.assert_allclose(read_dicom(out).pixels, _pydicom_display(out), rtol=1e-6, atol=1e-3)
    assert read_dicom(out).metadata["lossy_compression"] is True


# --- pipeline corners, on rewritten real files -----------------------------------------------

def test_multi_valued_window_uses_the_first_pair(sources, tmp_path):
    ds = _dcm(sources["MR_small"])
    ds.WindowCenter, ds.WindowWidth = [600, 100], [1600, 50]
    ds.WindowCenterWidthExplanation = ["WIDE", "NARROW"]
    ds.save_as(tmp_path / "multi.dcm")
    ds.WindowCenter, ds.WindowWidth = 600, 1600
    ds.save_as(tmp_path / "single.dcm")
    img = read_dicom(tmp_path / "multi.dcm")
    assert img.metadata["window"] == {"center": 600.0, "width": 1600.0, "function": "LINEAR"}
    np.testing.assert_array_equal(img.pixels, read_dicom(tmp_path / "single.dcm").pixels)
    # PS3.3 C.11.2.1.2.1 linear window by hand: y = ((x - (c - 0.5)) / (w - 1) + 0.5) * (ymax - ymin) + ymin
    x = _dcm(sources["MR_small"]).pixel_array.astype(np.float64)
    ymin, ymax = -(2**15), 2**15 - 1  # signed 16 bits, no rescale
    y = np.clip(((x - 599.5) / 1599 + 0.5) * (ymax - ymin) + ymin, ymin, ymax)
    y[x <= 599.5 - 799.5] = ymin
    y[x > 599.5 + 799.5] = ymax
    np.testing.assert_allclose(img.pixels, y, atol=1e-2)


def _with_voi_lut(ds, first, data, bits):
    item = pydicom.Dataset()
    item.LUTDescriptor = [len(data), first, bits]
    item.LUTData = [int(v) for v in data]
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = pydicom.Sequence([item])
    return ds


def test_voi_lut_sequence_is_preferred_to_the_window(sources, tmp_path):
    ds = _dcm(sources["MR_small"])
    first, n = 100, 2048
    # a gamma-like LUT with 16-bit entries (8-bit entries would be packed two to a word, PS3.3 C.11.2.1.1)
    table = (np.sqrt(np.arange(n) / (n - 1)) * 65535).round().astype(np.uint16)
    _with_voi_lut(ds, first, table, 16).save_as(tmp_path / "voilut.dcm")
    img = read_dicom(tmp_path / "voilut.dcm")  # MR_small also has a window: the LUT wins (PS3.3 C.11.2)
    assert img.metadata["voi"] == "lut" and img.metadata["output_range"] == [0.0, 65535.0]
    x = _dcm(sources["MR_small"]).pixel_array.astype(np.int64)
    by_hand = table[np.clip(x - first, 0, n - 1)]  # PS3.3 C.11.2.1.1: below/above the range clamp
    np.testing.assert_array_equal(img.pixels, by_hand)
    np.testing.assert_array_equal(img.pixels, _pydicom_display(tmp_path / "voilut.dcm"))


def _with_garbage_high_bits(src, dst, signed):
    """Rewrite MR_small as 12 of 16 bits, with random bits 12-15 (PS3.5 8.1.1: not pixel data)."""
    ds = _dcm(src)
    rng = np.random.default_rng(7)
    low = rng.integers(0, 4096, ds.pixel_array.shape).astype(np.uint16) if signed else \
        (ds.pixel_array.astype(np.uint16) & 0x0FFF)
    raw = low | (rng.integers(0, 16, low.shape).astype(np.uint16) << 12)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, int(signed)
    ds.PixelData = raw.tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    del ds.WindowCenter, ds.WindowWidth
    ds.save_as(dst)
    value = low.astype(np.int64)
    if signed:  # two's complement in 12 bits
        value = np.where(value >= 2048, value - 4096, value)
    return value


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_bits_above_bits_stored_are_ignored(sources, tmp_path, signed):
    value = _with_garbage_high_bits(sources["MR_small"], tmp_path / "g.dcm", signed)
    if signed:
        assert value.min() < 0
    img = read_dicom(tmp_path / "g.dcm", apply_voi=False)
    np.testing.assert_array_equal(img.pixels, value * 2 - 100)
    lo, hi = ((-2048, 2047) if signed else (0, 4095))
    assert img.metadata["output_range"] == [lo * 2 - 100, hi * 2 - 100]


def _native_rgb(src):
    ds = _dcm(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.decompress(as_rgb=True)
    return ds


@pytest.mark.parametrize("planar", [0, 1])
def test_uncompressed_rgb_becomes_its_luminance(data_root, tmp_path, planar):
    ds = _native_rgb(data_root / "dicom" / "SC_rgb_jpeg_dcmtk.dcm")
    rgb = ds.pixel_array.copy()
    assert ds.PhotometricInterpretation == "RGB" and rgb.shape == (100, 100, 3)
    ds.PlanarConfiguration = planar
    ds.PixelData = (np.moveaxis(rgb, -1, 0) if planar else rgb).tobytes()
    ds.save_as(tmp_path / "rgb.dcm")
    img = read_dicom(tmp_path / "rgb.dcm")
    np.testing.assert_allclose(img.pixels, rgb @ BT601, atol=1e-3)


def test_uncompressed_ybr_full_becomes_its_y(data_root, tmp_path):
    ds = _native_rgb(data_root / "dicom" / "SC_rgb_jpeg_dcmtk.dcm")
    ybr = convert_color_space(ds.pixel_array, "RGB", "YBR_FULL")
    ds.PhotometricInterpretation, ds.PlanarConfiguration = "YBR_FULL", 0
    ds.PixelData = ybr.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(tmp_path / "ybr.dcm")
    img = read_dicom(tmp_path / "ybr.dcm")
    # PS3.3 C.7.6.3.1.2: Y of YBR_FULL is the BT.601 luminance; YBR->RGB->Y rounds twice
    assert np.abs(img.pixels - ybr[..., 0]).max() <= 2.0

"""secondread.io.dicom on the 23 real DICOM samples, checked against pydicom's own functions and
against facts computed here from the header (never against earlier output of our code)."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from secondread.errors import SecondreadError
from secondread.io import load_image
from secondread.io.dicom import METADATA_KEYS, read_dicom

def _index(data_root):
    with open(data_root / "dicom" / "index.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def dicom_dir(data_root):
    return data_root / "dicom"


@pytest.fixture(scope="module")
def index(data_root):
    return _index(data_root)


def _dcm(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _mono1_mirror(ds) -> float:
    """lo + hi of the window output range, from the header (PS3.3 C.11.2.1.2: the range the window
    maps into is the stored range through Rescale Slope/Intercept)."""
    bits = int(ds.BitsStored)
    lo, hi = (0, 2**bits - 1) if ds.PixelRepresentation == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    return (lo * slope + intercept) + (hi * slope + intercept)


# --- every file ------------------------------------------------------------------------------

def test_every_file_in_the_index_decodes_with_the_indexed_shape(dicom_dir, index):
    assert len(index) == 23
    for row in index:
        img = load_image(dicom_dir / row["file"])
        frames, rows, cols = int(row["frames"]), int(row["rows"]), int(row["columns"])
        expected = (rows, cols) if frames == 1 else (frames, rows, cols)
        assert img.shape == expected, row["file"]
        assert img.pixels.dtype == np.float32
        assert np.isfinite(img.pixels).all(), row["file"]
        assert img.modality == (row["modality"] or "OT")
        assert img.metadata["photometric_interpretation"] == row["photometric"]
        assert img.metadata["transfer_syntax"] == row["transfer_syntax_uid"]
        assert img.metadata["bits_stored"] == int(row["bits_stored"])
        assert set(img.metadata) <= set(METADATA_KEYS)  # the whitelist
        json.dumps(img.metadata)  # plain values only


def test_single_frame_grey_equals_pydicom_modality_then_voi(dicom_dir, index):
    rows = [r for r in index if r["frames"] == "1" and r["photometric"].startswith("MONOCHROME")]
    assert len(rows) >= 15
    for row in rows:
        ds = _dcm(dicom_dir / row["file"])
        ref = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
        if row["photometric"] == "MONOCHROME1":
            ref = _mono1_mirror(ds) - ref
        ours = read_dicom(dicom_dir / row["file"]).pixels
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-3, err_msg=row["file"])


@pytest.mark.parametrize("name", ["RG3_UNCR.dcm", "6154"])
def test_monochrome1_is_inverted(dicom_dir, name):
    ds = _dcm(dicom_dir / name)
    raw = ds.pixel_array.astype(np.float64)
    img = read_dicom(dicom_dir / name)
    ours = img.pixels.astype(np.float64)
    assert img.metadata["inverted"] is True
    assert np.corrcoef(ours.ravel(), raw.ravel())[0, 1] < -0.9
    # the darkest stored value (white in MONOCHROME1) becomes our brightest
    assert ours.flat[np.argmin(raw)] == ours.max()
    assert ours.flat[np.argmax(raw)] == ours.min()


def test_monochrome1_formula_on_rg3(dicom_dir):
    # unsigned 10-bit, no rescale: output range [0, 1023], so displayed = 1023 - windowed
    ds = _dcm(dicom_dir / "RG3_UNCR.dcm")
    assert (ds.BitsStored, ds.PixelRepresentation, ds.get("RescaleSlope")) == (10, 0, None)
    img = read_dicom(dicom_dir / "RG3_UNCR.dcm")
    np.testing.assert_allclose(img.pixels, 1023.0 - apply_voi_lut(ds.pixel_array, ds), atol=1e-3)
    assert img.metadata["output_range"] == [0.0, 1023.0]


def test_monochrome1_formula_with_rescale_6154(dicom_dir):
    # 12 bits unsigned, slope 0.684, intercept 200: range [200, 4095 * 0.684 + 200]
    img = read_dicom(dicom_dir / "6154")
    lo, hi = 200.0, 4095 * 0.684 + 200.0
    np.testing.assert_allclose(img.metadata["output_range"], [lo, hi])
    ds = _dcm(dicom_dir / "6154")
    windowed = apply_voi_lut(ds.pixel_array * 0.684 + 200.0, ds)
    np.testing.assert_allclose(img.pixels, lo + hi - windowed, atol=1e-3)


def test_monochrome1_without_voi_is_inverted_within_the_rescaled_range(dicom_dir):
    ds = _dcm(dicom_dir / "6154")
    img = read_dicom(dicom_dir / "6154", apply_voi=False)
    rescaled = ds.pixel_array * 0.684 + 200.0
    np.testing.assert_allclose(img.pixels, (200.0 + 4095 * 0.684 + 200.0) - rescaled, atol=1e-3)
    assert img.metadata["voi"] == "not applied"


# --- CT --------------------------------------------------------------------------------------

def test_ct_small_hounsfield_range_and_spacing(dicom_dir):
    ds = _dcm(dicom_dir / "CT_small.dcm")
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    img = read_dicom(dicom_dir / "CT_small.dcm")
    assert img.metadata["units"] == "HU"
    assert img.metadata["rescaled_min"] == pytest.approx(hu.min())
    assert img.metadata["rescaled_max"] == pytest.approx(hu.max())
    assert img.spacing == tuple(float(v) for v in ds.PixelSpacing)
    assert img.orientation == tuple(float(v) for v in ds.ImageOrientationPatient)
    assert -1100 <= hu.min() < -800  # air is near -1000 HU: a physical check of the rescale
    np.testing.assert_allclose(read_dicom(dicom_dir / "CT_small.dcm", apply_voi=False).pixels, hu)


def test_ct_with_window_can_return_hounsfield_units(dicom_dir):
    ds = _dcm(dicom_dir / "693_J2KR.dcm")
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    windowed = read_dicom(dicom_dir / "693_J2KR.dcm")
    assert windowed.metadata["window"] == {"center": 40.0, "width": 100.0, "function": "LINEAR"}
    np.testing.assert_allclose(read_dicom(dicom_dir / "693_J2KR.dcm", apply_voi=False).pixels, hu)


# --- transfer syntaxes, frames, colour -------------------------------------------------------

@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm"])
def test_lossless_encodings_give_the_same_pixels(dicom_dir, name):
    reference = read_dicom(dicom_dir / "MR_small.dcm").pixels
    np.testing.assert_array_equal(read_dicom(dicom_dir / name).pixels, reference)


def test_multiframe_mr_is_3d(dicom_dir):
    img = read_dicom(dicom_dir / "emri_small.dcm")
    assert img.shape == (10, 64, 64) and img.metadata["frames"] == 10
    np.testing.assert_array_equal(img.pixels, _dcm(dicom_dir / "emri_small.dcm").pixel_array)
    for other in ("emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm"):
        np.testing.assert_array_equal(read_dicom(dicom_dir / other).pixels, img.pixels)


def test_rtdose_is_in_gray_with_grid_spacing(dicom_dir):
    ds = _dcm(dicom_dir / "rtdose.dcm")
    img = read_dicom(dicom_dir / "rtdose.dcm")
    np.testing.assert_allclose(img.pixels, ds.pixel_array * float(ds.DoseGridScaling), rtol=1e-6)
    step = abs(float(np.diff([float(v) for v in ds.GridFrameOffsetVector])[0]))
    assert img.spacing == (step, *[float(v) for v in ds.PixelSpacing])
    assert img.metadata["units"] == "Gy"


def test_ybr_jpeg_becomes_its_luminance(dicom_dir):
    ds = _dcm(dicom_dir / "SC_rgb_jpeg_dcmtk.dcm")
    ds.pixel_array_options(as_rgb=False)
    y = ds.pixel_array[..., 0].astype(np.float64)  # YBR_FULL: Y is BT.601 luminance (PS3.3 C.7.6.3.1.2)
    img = read_dicom(dicom_dir / "SC_rgb_jpeg_dcmtk.dcm")
    assert img.shape == (100, 100)
    assert np.abs(img.pixels - y).max() <= 2.0  # rounding through the YBR->RGB->Y round trip


def test_ybr_multiframe_is_3d_luminance(dicom_dir):
    ds = _dcm(dicom_dir / "examples_ybr_color.dcm")
    ds.pixel_array_options(as_rgb=False)
    y = ds.pixel_array[..., 0].astype(np.float64)
    img = read_dicom(dicom_dir / "examples_ybr_color.dcm")
    assert img.shape == (30, 240, 320)
    assert img.spacing is None  # ultrasound cine frames are time points
    diff = np.abs(img.pixels - y)
    # YBR->RGB clips out-of-gamut colours at 0/255, so a few pixels differ by a few levels
    assert np.percentile(diff, 99.9) <= 2.0 and diff.max() <= 8.0


def test_palette_colour_through_its_palette(dicom_dir):
    ds = _dcm(dicom_dir / "examples_palette.dcm")
    rgb = apply_color_lut(ds.pixel_array, ds).astype(np.float64)
    ref = rgb @ np.array([0.299, 0.587, 0.114])
    img = read_dicom(dicom_dir / "examples_palette.dcm")
    assert img.shape == (350, 800)
    np.testing.assert_allclose(img.pixels, ref, rtol=1e-4, atol=0.5)


def test_modality_and_spacing_fallbacks(dicom_dir):
    assert read_dicom(dicom_dir / "JPEGLSNearLossless_16.dcm").modality == "OT"  # empty Modality tag
    img = read_dicom(dicom_dir / "6154")  # CR with ImagerPixelSpacing only
    assert img.spacing == (0.1, 0.1) and img.metadata["spacing_source"] == "ImagerPixelSpacing"


# --- no identifiers --------------------------------------------------------------------------

def _leaves(value) -> set[str]:
    """Every scalar in a nested dict/list, as text."""
    if isinstance(value, dict):
        return set().union(*(_leaves(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_leaves(v) for v in value)) if value else set()
    return {str(value)}


def test_metadata_holds_no_identifiers(dicom_dir, index):
    checked = 0
    for row in index:
        ds = _dcm(dicom_dir / row["file"])
        metadata = read_dicom(dicom_dir / row["file"]).metadata
        text, leaves = str(metadata), _leaves(metadata)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                        "StudyInstanceUID", "SOPInstanceUID"):
            value = str(ds.get(keyword, "") or "").strip()
            if value:
                checked += 1
                assert value not in leaves, (row["file"], keyword)
                if len(value) >= 4:  # e.g. AccessionNumber "2" is a substring of any number
                    assert value not in text, (row["file"], keyword)
    assert checked > 20


# --- bad inputs ------------------------------------------------------------------------------

def _assert_one_line_error(path, reader=load_image):
    with pytest.raises(SecondreadError) as info:
        reader(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_bad_inputs_raise_one_line_secondread_errors(dicom_dir, tmp_path):
    raw = (dicom_dir / "MR_small.dcm").read_bytes()
    text = tmp_path / "x.dcm"
    text.write_text("this is not an image\n" * 20)
    cut_pixels = tmp_path / "cut_pixels.dcm"
    cut_pixels.write_bytes(raw[:-1000])
    cut_header = tmp_path / "cut_header.dcm"
    cut_header.write_bytes(raw[:400])
    no_pixels = tmp_path / "no_pixels.dcm"
    ds = _dcm(dicom_dir / "MR_small.dcm")
    del ds.PixelData
    ds.save_as(no_pixels)
    garbage_png = tmp_path / "garbage.png"
    garbage_png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    unknown = tmp_path / "notes.txt"
    unknown.write_text("hello")
    cases = {tmp_path / "missing.dcm": "not found", tmp_path: "folder", text: "not a DICOM",
             cut_pixels: "truncated", cut_header: "truncated", no_pixels: "no pixel data",
             garbage_png: "cannot decode", unknown: "unsupported"}
    for path, words in cases.items():
        assert words in _assert_one_line_error(path), path
        if path.suffix == ".dcm" and path.exists():
            _assert_one_line_error(path, read_dicom)


def test_unknown_transfer_syntax_is_reported(dicom_dir, tmp_path):
    ds = _dcm(dicom_dir / "MR_small.dcm")
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"  # not a transfer syntax any decoder knows
    ds.save_as(tmp_path / "odd.dcm", enforce_file_format=False)
    assert "no decoder" in _assert_one_line_error(tmp_path / "odd.dcm", read_dicom)


def test_file_without_preamble_is_detected_by_content(dicom_dir, tmp_path):
    bare = tmp_path / "MR_small_without_preamble"
    bare.write_bytes((dicom_dir / "MR_small.dcm").read_bytes()[132:])  # no preamble, no 'DICM'
    np.testing.assert_array_equal(load_image(bare).pixels, read_dicom(dicom_dir / "MR_small.dcm").pixels)

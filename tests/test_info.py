"""``secondread info`` end to end (a real subprocess) on the real CT series, single and multi-frame
samples, a PNG, bad inputs, and copies carrying identifiers that must never be printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from secondread.info import FIELDS

IDENTIFIERS = {"PatientName": "Doe^Jane", "PatientID": "ID-998877", "PatientBirthDate": "19610203",
               "AccessionNumber": "ACC-5544"}


def run(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "secondread", "info", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def info_json(path, *extra):
    proc = run(path, "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert list(data) == list(FIELDS)
    return data


def _dcm(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, **kw)


def assert_one_line_error(proc, name):
    assert proc.returncode == 1 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("secondread: error: "), proc.stderr
    assert str(name) in lines[0]
    return lines[0]


def test_lidc_series(data_root):
    info = info_json(data_root / "ct" / "LIDC-IDRI-0001" / "series")
    # the numbers of ct/LIDC-IDRI-0001/SOURCE.md
    assert info["format"] == "DICOM series" and info["modality"] == "CT"
    assert info["shape"] == [133, 512, 512]
    assert info["spacing"] == [2.5, 0.703125, 0.703125]
    assert info["orientation"] == [1, 0, 0, 0, 1, 0]
    assert info["transfer_syntax"] == "1.2.840.10008.1.2.1" and info["frames"] == 1
    assert (info["pixel_min"], info["pixel_max"], info["units"]) == (-2048, 3071, "HU")
    assert info["window"] == {"center": -600, "width": 1600, "function": "LINEAR"}
    assert info["slices"] == info["files"] == 133 and info["warnings"] == []
    assert info["world"] == "LPS" and info["affine"][2] == [2.5, 0, 0, -340]


def test_single_file_values_after_the_modality_lut(data_root):
    path = data_root / "dicom" / "CT_small.dcm"
    ds = _dcm(path)
    hu = apply_modality_lut(ds.pixel_array, ds)
    info = info_json(path)
    assert info["shape"] == [128, 128] and info["frames"] == 1 and info["slices"] is None
    assert info["spacing"] == [float(v) for v in ds.PixelSpacing]
    assert (info["pixel_min"], info["pixel_max"]) == (float(hu.min()), float(hu.max()))
    assert info["units"] == "HU" and info["transfer_syntax"] == str(ds.file_meta.TransferSyntaxUID)


def test_multiframe_and_monochrome1(data_root):
    path = data_root / "dicom" / "emri_small_jpeg_ls_lossless.dcm"
    arr = _dcm(path).pixel_array
    info = info_json(path)
    assert info["frames"] == 10 and info["shape"] == [10, 64, 64]
    assert info["transfer_syntax"] == "1.2.840.10008.1.2.4.80"
    assert (info["pixel_min"], info["pixel_max"]) == (float(arr.min()), float(arr.max()))
    # MONOCHROME1: the range is of the stored values through the Modality LUT, before inversion
    rg3 = _dcm(data_root / "dicom" / "6154")
    values = apply_modality_lut(rg3.pixel_array, rg3)
    info = info_json(data_root / "dicom" / "6154")
    assert (info["pixel_min"], info["pixel_max"]) == pytest.approx((values.min(), values.max()))


def test_table_and_png(data_root, tmp_path):
    proc = run(data_root / "dicom" / "MR_small.dcm")
    assert proc.returncode == 0
    lines = dict(line.split(None, 1) for line in proc.stdout.splitlines())
    assert lines["modality"] == "MR" and lines["shape"] == "64 x 64" and len(lines) == len(FIELDS)
    png = sorted((data_root / "mammography" / "mini-mias").glob("*.png"))[0]
    info = info_json(png)
    assert info["format"] == "PNG" and info["transfer_syntax"] is None and info["spacing"] is None
    assert info["shape"] == [1024, 1024] and 0 <= info["pixel_min"] < info["pixel_max"] <= 255


def test_nifti(tmp_path):
    pytest.importorskip("secondread.io.nifti")
    nib = pytest.importorskip("nibabel")
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 20
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 3.0, 4.0, 1.0])), str(tmp_path / "v.nii.gz"))
    info = info_json(tmp_path / "v.nii.gz")
    assert info["format"] == "NIfTI" and info["transfer_syntax"] is None
    assert sorted(info["spacing"]) == [2.0, 3.0, 4.0] and sorted(info["shape"]) == [4, 5, 6]
    assert (info["pixel_min"], info["pixel_max"]) == (-20, 99)


@pytest.fixture
def identified(data_root, tmp_path):
    """A CT_small copy, and three LIDC slices, with identifiers set here."""
    def tag(ds):
        for keyword, value in IDENTIFIERS.items():
            setattr(ds, keyword, value)
        return ds
    single = tmp_path / "ct.dcm"
    tag(_dcm(data_root / "dicom" / "CT_small.dcm")).save_as(single)
    folder = tmp_path / "series"
    folder.mkdir()
    for n in (40, 41, 42):
        tag(_dcm(data_root / "ct" / "LIDC-IDRI-0001" / "series" / f"{n:06d}.dcm")).save_as(folder / f"{n}.dcm")
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes(single.read_bytes()[:-5000])
    return single, folder, truncated


def test_no_identifier_is_printed(identified):
    single, folder, truncated = identified
    outputs = []
    for path in (single, folder):
        for flags in ((), ("--json",)):
            proc = run(path, *flags)
            assert proc.returncode == 0, proc.stderr
            outputs.append(proc.stdout + proc.stderr)
    assert json.loads(run(folder, "--json").stdout)["shape"] == [3, 512, 512]
    proc = run(truncated)
    assert_one_line_error(proc, truncated)
    outputs.append(proc.stdout + proc.stderr)
    for text in outputs:
        for value in (*IDENTIFIERS.values(), "Doe", "Jane"):
            assert value not in text


def test_bad_inputs_exit_1_with_one_line(data_root, tmp_path):
    text = tmp_path / "notes.dcm"
    text.write_text("not an image\n" * 50)
    header = tmp_path / "header.dcm"
    header.write_bytes((data_root / "dicom" / "MR_small.dcm").read_bytes()[:300])
    assert "not a DICOM" in assert_one_line_error(run(text), text)
    assert_one_line_error(run(header), header)
    assert "not found" in assert_one_line_error(run(tmp_path / "nope.dcm"), tmp_path / "nope.dcm")
    (tmp_path / "empty").mkdir()
    assert "no DICOM image files" in assert_one_line_error(run(tmp_path / "empty"), tmp_path / "empty")
    assert "only be chosen for a folder" in assert_one_line_error(
        run(data_root / "dicom" / "CT_small.dcm", "--series", "1.2.3"), "CT_small.dcm")

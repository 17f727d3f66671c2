"""secondread.io.series on the real LIDC-IDRI-0001 CT series, checked against the facts in its
SOURCE.md and against an independent stack built here with plain pydicom."""

from __future__ import annotations

import os
import random
import warnings

import numpy as np
import pydicom
import pytest

from secondread.errors import SecondreadError
from secondread.io import list_series, load_image, read_series

UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"


@pytest.fixture(scope="module")
def lidc(data_root):
    return data_root / "ct" / "LIDC-IDRI-0001" / "series"


@pytest.fixture(scope="module")
def volume(lidc):
    return read_series(lidc)


def _dcm(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, **kw)


def _link_all(src, dst, skip=(), rename=None):
    """Symlink the slices into ``dst`` (cheap copies), optionally under new names."""
    dst.mkdir(exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.name in skip:
            continue
        os.symlink(f, dst / (rename(f.name) if rename else f.name))
    return dst


def _assert_error(folder, words, **kw):
    with pytest.raises(SecondreadError) as info:
        read_series(folder, **kw)
    message = str(info.value)
    assert "\n" not in message and str(folder) in message
    assert words in message, message
    return message


# --- the real series -------------------------------------------------------------------------

def test_lidc_geometry_matches_its_source_md(volume):
    assert volume.shape == (133, 512, 512)
    assert volume.modality == "CT"
    assert volume.spacing == (2.5, 0.703125, 0.703125)
    assert volume.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    md = volume.metadata
    assert md["slice_positions_mm"] == [-340.0, -10.0]  # ascending along the normal (0, 0, 1)
    assert md["units"] == "HU" and md["voi"] == "not applied"
    assert (volume.pixels.min(), volume.pixels.max()) == (-2048.0, 3071.0)
    assert md["window"] == {"center": -600.0, "width": 1600.0, "function": "LINEAR"}
    assert md["warnings"] == [] and md["slices"] == md["files"] == 133 and md["skipped_files"] == 0


def test_lidc_equals_a_plain_pydicom_stack(lidc, volume):
    slices = [_dcm(f) for f in sorted(lidc.iterdir())]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))  # axial: the normal is +z
    ref = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
    np.testing.assert_array_equal(volume.pixels, ref)
    assert [int(ds.InstanceNumber) for ds in slices[:2]] == [133, 132]


def test_affine_maps_the_consensus_nodule_to_its_source_md_position(volume):
    # SOURCE.md: centre at column ~316.3, row ~367.0 on the slice z = -115 mm; (56.37, 86.36, -115.81)
    affine = np.array(volume.metadata["affine"])
    k = (-115.0 - -340.0) / 2.5
    x, y, z, _ = affine @ np.array([k, 367.0, 316.3, 1.0])
    assert (x, y, z) == pytest.approx((56.37, 86.36, -115.0), abs=0.1)
    # ... and the pixels there are soft tissue: 97 HU as SOURCE.md measured, against about -900 in lung
    assert volume.pixels[int(k), 365:370, 314:319].mean() == pytest.approx(97, abs=1.5)
    np.testing.assert_allclose(np.linalg.inv(affine) @ [-166.0, -171.699997, -340.0, 1.0], [0, 0, 0, 1], atol=1e-9)


def test_order_comes_from_positions_not_names(lidc, volume, tmp_path):
    names = [f"{n:04d}.dcm" for n in random.Random(3).sample(range(10000), 133)]
    mapping = dict(zip(sorted(p.name for p in lidc.iterdir()), names))
    folder = _link_all(lidc, tmp_path / "shuffled", rename=mapping.get)
    (folder / "README.txt").write_text("slices exported for a test\n")
    (folder / "sub").mkdir()
    image = load_image(folder)  # a folder dispatches to read_series
    np.testing.assert_array_equal(image.pixels, volume.pixels)
    assert image.metadata["skipped_files"] == 1
    assert image.spacing == volume.spacing


# --- refused, not merged ---------------------------------------------------------------------

def test_missing_slice_is_a_gap(lidc, tmp_path):
    folder = _link_all(lidc, tmp_path / "gap", skip={"000067.dcm"})
    _assert_error(folder, "gap in the series")


def _truncated(lidc, folder, name, size):
    folder = _link_all(lidc, folder, skip={name})
    (folder / name).write_bytes((lidc / name).read_bytes()[:size])
    return folder


def test_truncated_slice_is_named(lidc, tmp_path):
    # cut inside the header, before the pixel data: the slice is skipped, so the gap names it
    start = _dcm(lidc / "000067.dcm", stop_before_pixels=True)
    assert "PixelData" not in start and "Rows" in start
    message = _assert_error(_truncated(lidc, tmp_path / "head", "000067.dcm", 2000), "gap in the series")
    assert "1 unreadable DICOM file(s) were skipped, first 000067.dcm" in message
    # cut inside the pixel data: the header reads, the pixels do not
    size = (lidc / "000067.dcm").stat().st_size
    message = _assert_error(_truncated(lidc, tmp_path / "pixels", "000067.dcm", size - 1000), "000067")
    assert "Traceback" not in message


def test_an_object_without_pixels_is_skipped_quietly(lidc, tmp_path, data_root):
    folder = _link_all(lidc, tmp_path / "sr")
    ds = _dcm(lidc / "000067.dcm", stop_before_pixels=True)
    for keyword in ("Rows", "Columns", "BitsAllocated", "PixelRepresentation"):
        delattr(ds, keyword)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "note.dcm")  # like an SR or a DICOMDIR in the folder: no image header
    image = read_series(folder)
    assert image.shape[0] == 133 and image.metadata["skipped_files"] == 1
    assert image.metadata["unreadable_files"] == 0


def test_duplicated_slice_is_refused(lidc, tmp_path):
    folder = _link_all(lidc, tmp_path / "dup")
    os.symlink(lidc / "000050.dcm", folder / "copy-of-50.dcm")
    _assert_error(folder, "duplicate slice positions")


def test_second_series_is_reported_and_can_be_chosen(lidc, tmp_path):
    folder = _link_all(lidc, tmp_path / "two")
    new_uid = pydicom.uid.generate_uid(entropy_srcs=["secondread-test"])
    for n in range(40, 45):
        ds = _dcm(lidc / f"{n:06d}.dcm")
        ds.SeriesInstanceUID, ds.SOPInstanceUID = new_uid, pydicom.uid.generate_uid()
        ds.save_as(folder / f"second-{n}.dcm")
    message = _assert_error(folder, "2 series")
    assert f"{UID} (133 files)" in message and f"{new_uid} (5 files)" in message
    listed = list_series(folder)
    assert [(s["series_uid"], s["files"]) for s in listed] == [(UID, 133), (new_uid, 5)]
    second = read_series(folder, series_uid=new_uid)
    assert second.shape == (5, 512, 512) and second.spacing == (2.5, 0.703125, 0.703125)
    np.testing.assert_array_equal(second.pixels[0], read_series(folder, series_uid=UID).pixels[133 - 44])
    _assert_error(folder, "no series 1.2.3", series_uid="1.2.3")


def _rewrite(lidc, folder, name, **changes):
    folder = _link_all(lidc, folder, skip={name})
    ds = _dcm(lidc / name)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(folder / name)
    return folder


def test_mixed_orientation_and_size_are_refused(lidc, tmp_path):
    tilted = _rewrite(lidc, tmp_path / "o", "000010.dcm", ImageOrientationPatient=[1, 0, 0, 0, 0.98, -0.199])
    _assert_error(tilted, "mixed orientations")
    smaller = _rewrite(lidc, tmp_path / "s", "000010.dcm", Rows=256)
    _assert_error(smaller, "mixed image sizes")


def test_mild_irregularities_are_warnings(lidc, tmp_path):
    ds = _dcm(lidc / "000020.dcm", stop_before_pixels=True)
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    moved = _rewrite(lidc, tmp_path / "m", "000020.dcm", ImagePositionPatient=[x, y, z + 0.4],
                     InstanceNumber=1000)
    image = read_series(moved)
    assert image.spacing[0] == 2.5
    text = " | ".join(image.metadata["warnings"])
    assert "non-uniform slice spacing" in text and "Instance Number" in text


def test_folders_without_a_series(data_root, tmp_path):
    (tmp_path / "empty").mkdir()
    _assert_error(tmp_path / "empty", "no DICOM image files")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "README").write_text("nothing here")
    assert "1 other" in _assert_error(tmp_path / "text", "no DICOM image files")
    _assert_error(tmp_path / "missing", "not found")
    _assert_error(data_root / "dicom" / "CT_small.dcm", "not a series folder")


def test_single_files_in_a_folder(data_root, tmp_path):
    (tmp_path / "one").mkdir()
    os.symlink(data_root / "dicom" / "CT_small.dcm", tmp_path / "one" / "a.dcm")
    one = read_series(tmp_path / "one")
    ds = _dcm(data_root / "dicom" / "CT_small.dcm")
    assert one.shape == (1, 128, 128) and one.spacing[0] == float(ds.SliceThickness)
    np.testing.assert_allclose(one.pixels[0], ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    (tmp_path / "multi").mkdir()
    os.symlink(data_root / "dicom" / "emri_small.dcm", tmp_path / "multi" / "a.dcm")
    assert read_series(tmp_path / "multi").shape == (10, 64, 64)


def test_nifti_files_dispatch_to_the_nifti_reader(tmp_path):
    nifti = pytest.importorskip("secondread.io.nifti")
    nib = pytest.importorskip("nibabel")
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 3.0, 4.0, 1.0])), str(path))
    ours = load_image(path)
    assert ours.pixels.size == data.size
    np.testing.assert_array_equal(ours.pixels, nifti.read_nifti(path).pixels)

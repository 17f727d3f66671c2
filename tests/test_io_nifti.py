"""NIfTI reader: real CT pixels written with known affines, checked against the original geometry.

References are independent of the reader: the DICOM headers read with pydicom (where each voxel is
in the patient), the affine each test writes (inverted by hand with numpy), and SimpleITK's own
index -> physical point mapping of the same file.
"""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pydicom
import pytest

from secondread.errors import SecondreadError
from secondread.io import nifti
from secondread.io.nifti import read_nifti


@pytest.fixture(scope="module")
def ct(data_root):
    """11 real LIDC slices around the nodule in HU, sorted by z ascending, with their geometry."""
    files = [data_root / "ct" / "LIDC-IDRI-0001" / "series" / f"{n:06d}.dcm" for n in range(38, 49)]
    slices = sorted((pydicom.dcmread(f) for f in files), key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
    ipp = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in slices])
    spacing = [float(v) for v in slices[0].PixelSpacing]  # (between rows, between columns)
    return hu.astype(np.int16), ipp, spacing


def _lps_to_ras_affine(ipp, spacing):
    """Affine of a NIfTI array stored as data[col, row, slice] (dcm2niix-like, no flips), world RAS."""
    dz = ipp[1, 2] - ipp[0, 2]
    aff = np.diag([-spacing[1], -spacing[0], dz, 1.0])
    aff[:3, 3] = [-ipp[0, 0], -ipp[0, 1], ipp[0, 2]]
    return aff


def _one_line(exc: SecondreadError, name: str) -> None:
    assert "\n" not in str(exc) and name in str(exc)


def test_lps_ct_reads_back_as_the_dicom_series_and_maps_voxels_to_patient_mm(ct, tmp_path):
    hu, ipp, spacing = ct
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), _lps_to_ras_affine(ipp, spacing)), path)
    img = read_nifti(path)
    # same array as the DICOM slices sorted along the normal: axial, anterior at the top, patient right on the left
    assert img.shape == hu.shape and np.array_equal(img.pixels, hu)
    assert img.metadata["axis_codes"] == ["S", "P", "L"]
    assert img.spacing == pytest.approx((2.5, spacing[0], spacing[1]), abs=1e-5)
    assert img.orientation == pytest.approx((1, 0, 0, 0, 1, 0))  # same cosines as the DICOM IOP
    affine = np.array(img.metadata["affine"])
    for s, r, c in [(0, 0, 0), (5, 367, 316), (10, 511, 7), (3, 100, 450)]:
        lps = ipp[s] + np.array([c * spacing[1], r * spacing[0], 0.0])  # DICOM PS3.3 C.7.6.2.1.1
        ras = affine @ [s, r, c, 1]
        assert ras[:3] == pytest.approx([-lps[0], -lps[1], lps[2]], abs=1e-3)


def test_oblique_permuted_volume_keeps_every_voxel_at_its_world_position(ct, tmp_path):
    hu = ct[0][:, 300:364, 280:340]  # real pixels, a small block
    stored = hu.transpose(1, 0, 2)  # storage order [row, slice, col]: permuted axes
    theta = np.deg2rad(25)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.array([[0, 0, -0.7], [0, 2.5, 0], [-0.8, 0, 0]])  # axes flipped and swapped
    aff[:3, 3] = [12.5, -40.0, 7.0]
    path = tmp_path / "oblique.nii"
    nib.save(nib.Nifti1Image(stored, aff), path)
    img = read_nifti(path)
    affine = np.array(img.metadata["affine"])
    inverse = np.linalg.inv(aff)
    rng = np.random.default_rng(0)
    for idx in zip(*(rng.integers(0, n, 25) for n in img.shape)):
        original = inverse @ affine @ [*idx, 1]  # the stored voxel at the same world point
        assert original[:3] == pytest.approx(np.round(original[:3]), abs=1e-4)
        assert img.pixels[idx] == stored[tuple(np.round(original[:3]).astype(int))]
    assert sorted(img.spacing) == pytest.approx([0.7, 0.8, 2.5], abs=1e-5)


def test_simpleitk_finds_the_same_voxel_values_at_the_same_physical_points(ct, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    hu, ipp, spacing = ct
    path = tmp_path / "ct.nii"
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0)[::-1], _lps_to_ras_affine(ipp, spacing) @ np.array(
        [[-1, 0, 0, 511], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])), path)  # stored with x reversed
    img = read_nifti(path)
    ref = sitk.ReadImage(str(path))
    ref_array = sitk.GetArrayFromImage(ref)  # [k, j, i]
    affine = np.array(img.metadata["affine"])
    for s, r, c in [(0, 0, 0), (5, 367, 316), (10, 200, 500), (7, 511, 511)]:
        x, y, z = (affine @ [s, r, c, 1])[:3]
        i, j, k = ref.TransformPhysicalPointToIndex((-x, -y, z))  # SimpleITK world is LPS
        assert ref_array[k, j, i] == img.pixels[s, r, c]


def test_gzip_with_scaling_gives_scaled_values(data_root, tmp_path):
    from PIL import Image as PILImage

    folder = data_root / "mri" / "lgg" / "TCGA_CS_4941_19960909"
    raw = np.stack([np.asarray(PILImage.open(folder / f"TCGA_CS_4941_19960909_{n}_flair.png"))
                    for n in (10, 11, 12)]).astype(np.int16)
    image = nib.Nifti1Image(raw.transpose(2, 1, 0), np.diag([1.0, 1.0, 3.0, 1.0]))
    image.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / "flair.nii.gz"
    nib.save(image, path)
    with gzip.open(path) as fh:  # really gzip
        fh.read(10)
    img = read_nifti(path)
    # RAS-stored [x, y, z] comes back with rows and columns reversed (anterior at the top, right on the left)
    expected = raw[:, ::-1, ::-1] * 0.5 + 10.0
    assert np.allclose(img.pixels, expected)
    assert img.spacing == pytest.approx((3.0, 1.0, 1.0))


def test_4d_needs_an_explicit_volume(ct, tmp_path):
    hu = ct[0][:3, :40, :50].transpose(2, 1, 0)
    path = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([hu, hu + 1000], axis=-1), np.eye(4)), path)
    with pytest.raises(SecondreadError, match="2 volumes") as err:
        read_nifti(path)
    _one_line(err.value, "four.nii.gz")
    second = read_nifti(path, volume=1)
    assert second.metadata["volumes"] == 2 and np.allclose(second.pixels, hu.transpose(2, 1, 0)[:, ::-1, ::-1] + 1000)
    with pytest.raises(SecondreadError, match="out of range"):
        read_nifti(path, volume=2)


def test_single_slice_is_a_2d_image(ct, tmp_path):
    path = tmp_path / "slice.nii"
    nib.save(nib.Nifti1Image(ct[0][0].T, np.diag([0.7, 0.7, 2.5, 1.0])), path)
    img = read_nifti(path)
    assert img.pixels.ndim == 2 and img.spacing == pytest.approx((0.7, 0.7))
    assert np.array_equal(img.pixels, ct[0][0][::-1, ::-1])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_file_is_one_line_naming_the_file(ct, tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    nib.save(nib.Nifti1Image(ct[0][:4].transpose(2, 1, 0), np.eye(4)), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SecondreadError) as err:
        read_nifti(path)
    _one_line(err.value, path.name)


def test_garbage_missing_and_oversized(tmp_path, monkeypatch, ct):
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"not a nifti" * 50)
    with pytest.raises(SecondreadError) as err:
        read_nifti(junk)
    _one_line(err.value, "junk.nii")
    with pytest.raises(SecondreadError, match="not found"):
        read_nifti(tmp_path / "absent.nii.gz")
    big = tmp_path / "big.nii"
    nib.save(nib.Nifti1Image(ct[0][:2].transpose(2, 1, 0), np.eye(4)), big)
    monkeypatch.setattr(nifti, "MAX_VOXELS", 1000)
    with pytest.raises(SecondreadError, match="exceeds the limit") as err:
        read_nifti(big)
    _one_line(err.value, "big.nii")

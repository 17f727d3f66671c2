"""NIfTI-1/2 files (``.nii``, ``.nii.gz``) as :class:`~secondread.image.Image`, through nibabel.

Why: research volumes (brain MRI, converted CT) come as NIfTI, whose voxel array may be stored in
any axis order and direction; only the affine says where each voxel is. A model or a viewer must see
the same anatomy the same way whatever the file's storage order, so the reader reorients every
volume to nibabel's closest canonical (RAS+) orientation and then lays it out as a DICOM axial
series is shown:

``pixels[s, r, c]`` with ``s`` slices from inferior to superior, ``r`` rows from anterior to
posterior (anterior at the top of the screen), ``c`` columns from the patient's right to left
(the patient's right on the left of the screen, the radiological convention). Axis codes
``("S", "P", "L")`` for an axis-aligned volume. A CT stored as NIfTI therefore gives the same array
as the same CT read as a DICOM series sorted along the slice normal.

``metadata["affine"]`` is the 4x4 matrix (nested lists) mapping ``(s, r, c, 1)`` indices of
``pixels`` to NIfTI world coordinates in mm (RAS+: +x toward the patient's right, +y anterior,
+z superior; DICOM's LPS is the same with x and y negated); ``spacing`` is the length of its three columns, in the order of
``pixels``; ``orientation`` gives the DICOM-style direction cosines (LPS) of the row and column
directions. ``scl_slope``/``scl_inter`` are applied (nibabel's scaling).

Example
-------
>>> img = read_nifti("brain.nii.gz")          # doctest: +SKIP
>>> img.shape, img.metadata["axis_codes"]     # doctest: +SKIP
((155, 240, 240), ['S', 'P', 'L'])
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from ..errors import SecondreadError
from ..image import Image
from .raster import require_file

SUFFIXES = (".nii", ".nii.gz")
MAX_VOXELS = int(os.environ.get("SECONDREAD_MAX_VOXELS", 1 << 30))
"""Refuse volumes with more voxels than this before decoding (a header can claim anything)."""

# (s, r, c, 1) of the pixels -> (i, j, k, 1) of the canonical RAS array of shape (nx, ny, nz):
# i = nx - 1 - c (columns run right->left), j = ny - 1 - r (rows run anterior->posterior), k = s.
def _pixels_to_canonical(nx: int, ny: int) -> np.ndarray:
    return np.array([[0, 0, -1, nx - 1],
                     [0, -1, 0, ny - 1],
                     [1, 0, 0, 0],
                     [0, 0, 0, 1]], dtype=float)


def is_nifti(path: str | os.PathLike) -> bool:
    """True for a ``.nii`` or ``.nii.gz`` file name (content is checked when read)."""
    name = os.fspath(path).lower()
    return name.endswith(SUFFIXES)


def _load(p) -> nib.spatialimages.SpatialImage:
    try:
        img = nib.load(p)
    except Exception as exc:  # ImageFileError, OSError, EOFError, gzip/zlib errors, ValueError...
        raise SecondreadError(p, f"not a readable NIfTI file ({type(exc).__name__})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise SecondreadError(p, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    return img


def _check_shape(p, shape: tuple[int, ...]) -> None:
    """Refuse empty, >4D and absurdly large volumes before any voxel is decoded."""
    if len(shape) < 2 or len(shape) > 4 or any(n < 1 for n in shape):
        raise SecondreadError(p, f"unsupported NIfTI shape {shape} (expected 2D, 3D or 4D)")
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise SecondreadError(p, f"volume of shape {shape} exceeds the limit of {MAX_VOXELS} voxels "
                                 f"(SECONDREAD_MAX_VOXELS)")


def _volume(p, img, volume: int | None) -> tuple[np.ndarray, int]:
    """The 3D float32 array to show (scaled), and the number of volumes in the file.

    Why refuse 4D by default: a time series or multi-echo file has no single image a model should
    see; the caller must say which volume it wants.
    """
    shape = img.shape
    n_vol = shape[3] if len(shape) == 4 else 1
    if n_vol > 1 and volume is None:
        raise SecondreadError(p, f"4D NIfTI with {n_vol} volumes; choose one with volume=0..{n_vol - 1}")
    index = 0 if volume is None else int(volume)
    if not 0 <= index < n_vol:
        raise SecondreadError(p, f"volume {volume} is out of range (the file has {n_vol})")
    try:
        proxy = img.dataobj
        data = proxy[..., index] if len(shape) == 4 else proxy[...]
        data = np.asarray(data, dtype=np.float32)  # ArrayProxy slicing applies scl_slope/scl_inter
    except Exception as exc:  # truncated or corrupt data block
        raise SecondreadError(p, f"cannot read the NIfTI voxel data: truncated or corrupt ({type(exc).__name__})") from None
    if data.ndim == 2:
        data = data[:, :, np.newaxis]
    return data, n_vol


def _lps_cosines(affine: np.ndarray) -> tuple[float, ...]:
    """DICOM ImageOrientationPatient (row direction, column direction in LPS) of the pixel grid."""
    flip = np.array([-1.0, -1.0, 1.0])  # RAS -> LPS
    row_dir = affine[:3, 2] / np.linalg.norm(affine[:3, 2]) * flip  # along increasing column index
    col_dir = affine[:3, 1] / np.linalg.norm(affine[:3, 1]) * flip  # along increasing row index
    return tuple(float(v) for v in np.concatenate([row_dir, col_dir]))


def read_nifti(path: str | os.PathLike, *, volume: int | None = None, modality: str = "OT") -> Image:
    """Read a NIfTI file into an :class:`Image` laid out as described in the module docstring.

    Parameters
    ----------
    path : str or PathLike
        ``.nii`` or ``.nii.gz`` (NIfTI-1 or NIfTI-2).
    volume : int, optional
        For 4D files, which volume (0-based) to return; required when there is more than one.
    modality : str
        NIfTI does not record the modality; ``"OT"`` unless the caller knows better.

    Returns
    -------
    Image
        3D ``[slices, rows, cols]`` float32 (2D ``[rows, cols]`` when there is one slice), spacing
        in mm in the same order, metadata ``affine`` (pixels -> RAS mm), ``axis_codes``,
        ``original_axis_codes``, ``original_shape``, ``volumes``, ``volume``, ``format``.

    Raises
    ------
    SecondreadError
        Missing, truncated or corrupt file, not NIfTI, unsupported or oversized shape, a 4D file
        without ``volume``.
    """
    p = require_file(path)
    img = _load(p)
    _check_shape(p, tuple(int(n) for n in img.shape))
    data, n_vol = _volume(p, img, volume)
    original_codes = list(nib.aff2axcodes(img.affine))
    canonical = nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))
    ras = np.asarray(canonical.dataobj, dtype=np.float32)
    nx, ny, _ = ras.shape
    pixels = np.ascontiguousarray(ras[::-1, ::-1, :].transpose(2, 1, 0))
    affine = canonical.affine @ _pixels_to_canonical(nx, ny)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    metadata = {"format": type(img).__name__.replace("Image", ""), "affine": affine.tolist(),
                "world": "RAS", "axis_codes": list(nib.aff2axcodes(affine)),
                "original_axis_codes": original_codes, "original_shape": list(img.shape),
                "volumes": n_vol, "volume": 0 if volume is None else int(volume)}
    if pixels.shape[0] == 1:  # a single slice: a 2D image
        return Image(pixels=pixels[0], modality=modality, spacing=spacing[1:], source=str(p),
                     orientation=_lps_cosines(affine), metadata=metadata)
    return Image(pixels=pixels, modality=modality, spacing=spacing, source=str(p),
                 orientation=_lps_cosines(affine), metadata=metadata)

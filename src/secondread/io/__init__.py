"""The loading stage: any supported file in, one :class:`~secondread.image.Image` out.

Why: everything downstream (preprocessing, models, reports) must not care whether a study came as
DICOM, PNG or a MedMNIST array, and every input a user can get wrong must end as one
:class:`~secondread.errors.SecondreadError` line naming the file, never a traceback.

Dispatch: a folder is a DICOM series (:func:`secondread.io.series.read_series`); ``.nii`` and
``.nii.gz`` go to :func:`secondread.io.nifti.read_nifti`; any other file by content first (DICOM:
'DICM' at byte 128, or a readable DICOM header for files written without the preamble), then by
extension (:data:`secondread.io.raster.SUFFIXES`).

Example
-------
>>> from secondread.io import load_image
>>> img = load_image("CT_small.dcm")      # doctest: +SKIP
>>> img.modality, img.shape               # doctest: +SKIP
('CT', (128, 128))
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SecondreadError
from ..image import Image
from .dicom import is_dicom, read_dicom
from .raster import SUFFIXES as RASTER_SUFFIXES
from .raster import read_raster, require_file
from .series import list_series, read_series

__all__ = ["load_image", "read_dicom", "read_raster", "read_series", "list_series", "is_dicom",
           "RASTER_SUFFIXES", "NIFTI_SUFFIXES"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _read_nifti(path: Path) -> Image:
    """Imported here so that this module works before (or without) the NIfTI reader."""
    try:
        from .nifti import read_nifti
    except ImportError:
        raise SecondreadError(path, "NIfTI files cannot be read: secondread.io.nifti is not available") from None
    return read_nifti(path)


def load_image(path: str | os.PathLike) -> Image:
    """Read a DICOM file, a DICOM series folder, a NIfTI file or a raster image.

    Parameters
    ----------
    path : str or PathLike
        A file, or a folder of DICOM slices (one series; see :func:`read_series` to choose
        among several).

    Returns
    -------
    Image
        See :func:`secondread.io.dicom.read_dicom`, :func:`secondread.io.series.read_series`,
        ``secondread.io.nifti.read_nifti`` and :func:`secondread.io.raster.read_raster`.

    Raises
    ------
    SecondreadError
        For a missing file, a folder, an unsupported type, or a file that cannot be decoded; the
        message is one line, names the file, and holds no patient identifiers.
    """
    if Path(path).is_dir():
        return _guarded(Path(path), read_series)
    p = require_file(path)
    if _is_nifti(p):
        return _guarded(p, _read_nifti)
    suffix = p.suffix.lower()
    try:
        if is_dicom(p, sniff=False):
            return read_dicom(p)
        if suffix in RASTER_SUFFIXES:
            return read_raster(p)
        if is_dicom(p):  # no preamble: only try the slower forced read for non-raster names
            return read_dicom(p)
    except SecondreadError:
        raise
    except Exception as exc:  # last guard: no traceback may reach a user
        raise SecondreadError(p, f"cannot read the image ({type(exc).__name__})") from None
    if suffix == ".dcm":
        raise SecondreadError(p, "not a DICOM file (no 'DICM' marker at byte 128 and no readable DICOM header)")
    kind = f"'{suffix}'" if suffix else "a file without extension"
    raise SecondreadError(p, f"unsupported file type: {kind} is not DICOM and not one of "
                             f"{', '.join(RASTER_SUFFIXES)}")


def _guarded(path: Path, reader) -> Image:
    """Call ``reader(path)``; anything but a SecondreadError becomes one (no traceback for users)."""
    try:
        return reader(path)
    except SecondreadError:
        raise
    except Exception as exc:
        raise SecondreadError(path, f"cannot read the image ({type(exc).__name__})") from None

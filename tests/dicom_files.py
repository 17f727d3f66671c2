"""Real-header DICOM files for tests that need pixels the sample files do not have."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom


def as_dicom(pixels: np.ndarray, spacing_mm: float, data_root: Path, path: Path, modality: str | None = None) -> Path:
    """``pixels`` (uint16) in pydicom's MR_small.dcm (a real header: UIDs, patient, study) with the
    given pixel spacing, no window and optionally another ``modality``, saved uncompressed at ``path``."""
    ds = pydicom.dcmread(data_root / "dicom" / "MR_small.dcm")
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [spacing_mm, spacing_mm]
    if modality:
        ds.Modality = modality
    for keyword in ("WindowCenter", "WindowWidth", "SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path

"""What a file or series folder is, without identifiers: the data behind ``secondread info``.

Why: before analysing a study, a user (or a batch job) needs to know what it holds: modality,
size, voxel spacing, compression, the value range in physical units. That summary must never
carry a patient identifier, so it is built only from the :class:`~secondread.image.Image` a
loader returns (whose metadata is a whitelist of technical attributes), never from a raw header.

Fields (``None`` where they do not apply, e.g. a transfer syntax for a PNG)
--------------------------------------------------------------------------
``path``, ``format`` (``DICOM``, ``DICOM series``, ``NIfTI``, ``PNG``...), ``modality``,
``shape`` (``[slices, rows, columns]`` for a volume), ``spacing`` (mm, same order: the slice step
measured from the positions, then Pixel Spacing row and column), ``orientation`` (the six
direction cosines), ``affine`` with ``world`` (``LPS`` for DICOM series, ``RAS`` for NIfTI),
``transfer_syntax`` (UID) and ``transfer_syntax_name``, ``frames`` (per file), ``slices``,
``pixel_min``/``pixel_max`` after the Modality LUT (Hounsfield units for CT; no window) and their
``units``, ``photometric_interpretation``, ``bits_allocated``, ``bits_stored``,
``pixel_representation``, ``samples_per_pixel``, ``rescale_slope``, ``rescale_intercept``,
``window`` (the header's first window, not applied), ``sop_class``, ``lossy_compression``,
``files``, ``skipped_files``, ``series_in_folder``, ``warnings``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import SecondreadError
from .image import Image
from .io import NIFTI_SUFFIXES, is_dicom, load_image, read_dicom, read_series

FIELDS = (
    "path", "format", "modality", "shape", "spacing", "orientation", "affine", "world",
    "transfer_syntax", "transfer_syntax_name", "frames", "slices", "pixel_min", "pixel_max", "units",
    "photometric_interpretation", "bits_allocated", "bits_stored", "pixel_representation",
    "samples_per_pixel", "rescale_slope", "rescale_intercept", "window", "sop_class",
    "lossy_compression", "files", "skipped_files", "series_in_folder", "warnings",
)
"""Every key of :func:`describe`'s result, in the order the table prints them."""

# Metadata keys copied as they are (all technical; the loaders' metadata is already a whitelist).
_COPIED = ("affine", "world", "transfer_syntax", "transfer_syntax_name", "frames", "slices", "units",
           "photometric_interpretation", "bits_allocated", "bits_stored", "pixel_representation",
           "samples_per_pixel", "rescale_slope", "rescale_intercept", "window", "sop_class",
           "lossy_compression", "files", "skipped_files", "series_in_folder", "warnings")


def _load(p: Path, series_uid: str | None) -> tuple[str, Image]:
    """The image and the name of its format; DICOM without the VOI so values stay physical."""
    if p.is_dir():
        return "DICOM series", read_series(p, series_uid)
    if series_uid is not None:
        raise SecondreadError(p, "a series UID can only be chosen for a folder")
    if p.name.lower().endswith(NIFTI_SUFFIXES):
        return "NIfTI", load_image(p)
    if p.is_file() and is_dicom(p):
        return "DICOM", read_dicom(p, apply_voi=False)
    return p.suffix.lstrip(".").upper() or "unknown", load_image(p)


def _value_range(image: Image) -> tuple[float, float]:
    """Min/max after the Modality LUT: the DICOM reader records it before any MONOCHROME1
    inversion (``rescaled_min``/``rescaled_max``); otherwise the pixels themselves."""
    md = image.metadata
    if md.get("rescaled_min") is not None and md.get("rescaled_max") is not None:
        return float(md["rescaled_min"]), float(md["rescaled_max"])
    return float(image.pixels.min()), float(image.pixels.max())


def describe(path: str | os.PathLike, series_uid: str | None = None) -> dict[str, Any]:
    """Summarise a file or a series folder (see the module docstring for the fields).

    Raises
    ------
    SecondreadError
        Whatever the loader raises: missing, corrupt, not an image, several series in a folder.
    """
    p = Path(path)
    kind, image = _load(p, series_uid)
    info: dict[str, Any] = dict.fromkeys(FIELDS)
    md = image.metadata
    info.update({k: md.get(k) for k in _COPIED})
    lo, hi = _value_range(image)
    info.update(path=str(p), format=kind, modality=image.modality, shape=list(image.shape),
                spacing=list(image.spacing) if image.spacing else None,
                orientation=list(image.orientation) if image.orientation else None,
                pixel_min=lo, pixel_max=hi)
    if kind != "DICOM series":
        info["files"] = 1
    if info["warnings"] is None:
        info["warnings"] = []
    return info


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    if isinstance(value, list) and value and isinstance(value[0], list):  # a matrix
        return " | ".join(" ".join(_cell(v) for v in row) for row in value)
    if isinstance(value, list):
        return "; ".join(_cell(v) for v in value) if value and isinstance(value[0], str) else \
            " x ".join(_cell(v) for v in value) if value else "none"
    return str(value)


def format_table(info: dict[str, Any]) -> str:
    """Two aligned columns, one field a line, for people (``--json`` is for programs)."""
    width = max(len(k) for k in FIELDS)
    return "\n".join(f"{key:>{width}}  {_cell(info.get(key))}" for key in FIELDS)

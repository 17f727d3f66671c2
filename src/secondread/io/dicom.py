"""DICOM files as :class:`~secondread.image.Image`: the pixel pipeline a viewer applies.

Why: the numbers stored in a DICOM file are not the picture. PS3.3 C.11 defines the chain a viewer
applies before a radiologist sees anything, and a model trained on displayed images must see the
same thing. Each step below is one function named after the standard and done by pydicom's own
implementation (``pydicom.pixels``); this module only decides the order, the output range, and what
goes into the metadata.

The pipeline for grey-scale (MONOCHROME1/2) data
-------------------------------------------------
1. Decode the stored values (``Dataset.pixel_array``; pylibjpeg plugins for JPEG, JPEG-LS,
   JPEG 2000 and RLE).
2. Modality LUT (PS3.3 C.11.1): Rescale Slope/Intercept or a Modality LUT Sequence
   (``pydicom.pixels.apply_modality_lut``). For CT the result is in Hounsfield units.
   RT Dose grids are scaled by Dose Grid Scaling instead (PS3.3 C.8.8.3), giving Gy (their
   ``output_range`` is then the data's own min/max: the standard defines no display range).
3. VOI LUT (PS3.3 C.11.2): the VOI LUT Sequence if present, else Window Center/Width (first value
   when multi-valued) with its VOI LUT Function (``pydicom.pixels.apply_voi_lut``). Skipped when the
   file has neither, or when the caller passes ``apply_voi=False`` (CT measurements want HU).
4. MONOCHROME1 (minimum value shown white) is turned into MONOCHROME2 (higher = brighter) by
   reflecting within the output range ``[lo, hi]`` of the last step applied::

       displayed = lo + hi - value

   where ``[lo, hi]`` is the range pydicom's windowing maps into (see :func:`output_range`): the
   stored-value range from Bits Stored and Pixel Representation, passed through the Rescale
   Slope/Intercept (or ``[0, 2**n - 1]`` for an n-bit Modality or VOI LUT Sequence). So an
   unsigned 10-bit CR with no rescale gives ``1023 - value``.

Colour data
-----------
RGB/YBR files are converted to RGB by pydicom while decoding (its ``as_rgb`` default), PALETTE COLOR
through the palette (``pydicom.pixels.apply_color_lut``); both are then reduced to BT.601 luminance
(:func:`secondread.io.raster.luminance`). The Modality/VOI LUTs do not apply to colour (PS3.3 C.11).

What :attr:`Image.pixels` holds
-------------------------------
The displayed values after step 3/4 (what the viewer shows), float32. 2D ``[rows, cols]`` for one
frame, 3D ``[frames, rows, cols]`` for multi-frame files. Physical values (HU for CT) are kept in
the metadata (``rescaled_min``/``rescaled_max``) and can be had as pixels with
``read_dicom(path, apply_voi=False)``.

Metadata is built from a whitelist of technical attributes (:data:`METADATA_KEYS`), so no patient
name, ID, birth date, accession number or UID of the study can reach it.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder

from ..errors import SecondreadError
from ..image import Image
from .raster import luminance, require_file

METADATA_KEYS = (
    "photometric_interpretation", "transfer_syntax", "transfer_syntax_name", "sop_class",
    "bits_allocated", "bits_stored", "pixel_representation", "samples_per_pixel",
    "frames", "rows", "columns", "rescale_slope", "rescale_intercept", "rescale_type", "units",
    "rescaled_min", "rescaled_max", "voi", "window", "output_range", "inverted", "colour",
    "spacing_source", "body_part_examined", "view_position", "lossy_compression",
)
"""Every key :func:`read_dicom` may put in :attr:`Image.metadata` (technical attributes only)."""

MAX_IMAGE_BYTES = 2**28
"""Default limit on the decoded size of one file's pixel data (256 MiB of stored values; the float
pipeline briefly needs about four times that). Override with the ``SECONDREAD_MAX_IMAGE_BYTES``
environment variable or the ``max_bytes`` keyword of :func:`read_dicom`."""

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Tags whose presence shows that pydicom's forced read found a real DICOM data set, not garbage.
_SIGNATURE_TAGS = (0x00080016, 0x00080060, 0x00280010, 0x7FE00010)


# --- header values safe to show --------------------------------------------------------------
#
# A corrupt element length can make one attribute swallow its neighbours (Patient Name among
# them), so no header text reaches a message or the metadata unless it has the form its VR allows.

_CODE = re.compile(r"[A-Z0-9 _]{0,16}")  # Code String (PS3.5 6.2, VR CS)


def safe_code(value: Any, default: str | None = None) -> str | None:
    """A Code String value (Modality, Photometric Interpretation...) stripped, or ``default`` when
    it is empty or not a valid CS (so it cannot carry a name or arbitrary bytes)."""
    if value is None or isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return default
    text = str(value).strip()
    return text if text and _CODE.fullmatch(text) else default


def uid_name(value: Any) -> str | None:
    """The registered name of a UID (PS3.6 Annex A), the UID itself if it is a valid UID (digits
    and dots only, PS3.5 9.1), else ``None``."""
    if value in (None, ""):
        return None
    uid = pydicom.uid.UID(str(value).strip())
    if uid in pydicom.uid.UID_dictionary:
        return uid.name
    return str(uid) if uid.is_valid else None


# --- reading ---------------------------------------------------------------------------------

def is_dicom(path: str | os.PathLike, *, sniff: bool = True) -> bool:
    """True if ``path`` is a DICOM file: 'DICM' at byte 128 (PS3.10 7.1), or (when ``sniff``), for
    files written without the 128-byte preamble, a header pydicom can read that holds DICOM
    attributes (SOP Class, Modality, Rows, Pixel Data or a Transfer Syntax)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    return sniff and _forced_read(Path(path), stop_before_pixels=True) is not None


def _forced_read(path: Path, stop_before_pixels: bool = False) -> Dataset | None:
    """``dcmread(force=True)`` for files without preamble; ``None`` unless it looks like DICOM."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
    except Exception:
        return None
    meta = getattr(ds, "file_meta", None)
    if any(tag in ds for tag in _SIGNATURE_TAGS) or (meta is not None and "TransferSyntaxUID" in meta):
        return ds
    return None


def _read_dataset(path: Path) -> Dataset:
    """Read the header and (undecoded) pixel data; every failure becomes a SecondreadError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
        ds = _forced_read(path)
        if ds is None:
            raise SecondreadError(path, "not a DICOM file (no 'DICM' marker at byte 128 and no readable "
                                        "DICOM header)") from None
    except Exception as exc:
        raise SecondreadError(path, f"the DICOM header cannot be read: the file is truncated or corrupt "
                                    f"({type(exc).__name__})") from None
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        # No file meta (raw data set): PS3.5 10.1 makes Implicit VR Little Endian the default.
        ds.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    return ds


def _require_pixel_data(ds: Dataset, path: Path) -> None:
    """Explain a missing Pixel Data element: truncated image file, or a non-image object."""
    if any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return
    sop = str(ds.get("SOPClassUID", "") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", "") or "")
    name = uid_name(sop) or ""
    if "Image" in name or "Rows" in ds:
        raise SecondreadError(path, f"no pixel data although the header describes an image "
                                    f"({name or 'image attributes'}): the file is truncated or its pixel data was removed")
    what = f" ({name})" if name else ""
    raise SecondreadError(path, f"the DICOM file holds no pixel data{what}: it is not an image, or it is truncated")


def max_image_bytes(override: int | None = None) -> int:
    """The size limit in force: ``override``, else ``$SECONDREAD_MAX_IMAGE_BYTES``, else
    :data:`MAX_IMAGE_BYTES`."""
    if override is not None:
        return int(override)
    text = os.environ.get("SECONDREAD_MAX_IMAGE_BYTES", "").strip()
    if not text:
        return MAX_IMAGE_BYTES
    try:
        value = int(float(text))
    except ValueError:
        raise SecondreadError(None, f"SECONDREAD_MAX_IMAGE_BYTES must be a number of bytes, got {text!r}") from None
    if value <= 0:
        raise SecondreadError(None, "SECONDREAD_MAX_IMAGE_BYTES must be positive")
    return value


def _header_int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    """An integer attribute of the Image Pixel module, or a ValueError naming it."""
    value = ds.get(keyword, default)
    if value is None or value == "":
        raise ValueError(f"the header has no {keyword}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{keyword} is not a number") from None
    if number <= 0:
        raise ValueError(f"{keyword} is {number}")
    return number


def decoded_bytes(ds: Dataset) -> int:
    """Bytes the decoded pixel data will take, from the header alone (PS3.3 C.7.6.3, Image Pixel
    module): Rows x Columns x Number of Frames x Samples per Pixel x Bits Allocated / 8.

    Raises ValueError (with a message safe to show) when one of them is missing, zero or absurd.
    """
    rows, cols = _header_int(ds, "Rows"), _header_int(ds, "Columns")
    frames = _header_int(ds, "NumberOfFrames", 1)
    samples = _header_int(ds, "SamplesPerPixel", 1)
    bits = _header_int(ds, "BitsAllocated")
    if bits > 64 or samples > 4:
        raise ValueError(f"Bits Allocated {bits} with {samples} samples per pixel is not a valid image")
    return (rows * cols * frames * samples * bits + 7) // 8


def check_image_size(ds: Dataset, path: Path, max_bytes: int | None = None) -> int:
    """Refuse, before anything is decoded, an image whose header claims more than the limit.

    Why: a corrupt or hostile header (65535 x 65535 x 1000 frames) would otherwise make the decoder
    allocate terabytes and take the process down; one line saying so is what a user needs.
    Returns the decoded size in bytes.
    """
    try:
        size = decoded_bytes(ds)
    except ValueError as exc:
        raise SecondreadError(path, f"the image header is invalid: {exc}") from None
    limit = max_image_bytes(max_bytes)
    if size > limit:
        raise SecondreadError(path, f"refused: the header describes {size / 2**20:.0f} MiB of pixel data "
                                    f"({int(ds.Rows)} x {int(ds.Columns)} x {_frames(ds)} frames), more than "
                                    f"the limit of {limit / 2**20:.0f} MiB (SECONDREAD_MAX_IMAGE_BYTES)")
    return size


def _decode(ds: Dataset, path: Path, max_bytes: int | None = None) -> np.ndarray:
    """Decode the stored values with pydicom (YBR converted to RGB, pydicom's default), after
    checking that pixel data exists and its declared size is within the limit.

    pydicom masks bits above Bits Stored and sign-extends signed values (PS3.5 8.1.1), so stored
    values with garbage in the unused high bits come out right.
    """
    _require_pixel_data(ds, path)
    check_image_size(ds, path, max_bytes)
    ts = ds.file_meta.TransferSyntaxUID
    try:
        available = get_decoder(ts).is_available
    except Exception:  # NotImplementedError: pydicom knows no decoder for this transfer syntax
        available = False
    if not available:
        raise SecondreadError(path, f"cannot decode the pixel data: no decoder installed for "
                                    f"{uid_name(ts) or 'an invalid transfer syntax UID'}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ds.pixel_array
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # BaseException: a decoder's Rust panic (pyo3 PanicException) is one
        raise SecondreadError(path, f"cannot decode the pixel data ({uid_name(ts)}): it is truncated or corrupt "
                                    f"({type(exc).__name__})") from None


# --- the grey-scale pipeline -----------------------------------------------------------------

def _stored_range(ds: Dataset) -> tuple[float, float]:
    """Range of stored values from Bits Stored and Pixel Representation (PS3.3 C.7.6.3.1)."""
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        return 0.0, float(2**bits - 1)
    return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)


def output_range(ds: Dataset, voi: str = "none") -> tuple[float, float]:
    """Range ``(lo, hi)`` of the values after the Modality LUT and (if applied) the VOI LUT.

    This is the range pydicom's ``apply_windowing`` maps a window into: for a VOI or Modality LUT
    Sequence with n-bit entries ``[0, 2**n - 1]`` (PS3.3 C.11.1.1.1, C.11.2.1.1); otherwise the
    stored-value range through Rescale Slope/Intercept (PS3.3 C.11.1.1.2). It is the mirror used to
    turn MONOCHROME1 into MONOCHROME2: ``displayed = lo + hi - value``.

    Parameters
    ----------
    ds : pydicom Dataset
    voi : {"lut", "window", "none"}
        Which VOI step was applied (see :func:`voi_kind`).
    """
    if voi == "lut":
        return 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    lo, hi = _stored_range(ds)
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return lo, hi


def voi_kind(ds: Dataset) -> str:
    """Which VOI transformation ``apply_voi_lut`` will use: ``"lut"``, ``"window"`` or ``"none"``.

    Mirrors pydicom's own choice (PS3.3 C.11.2: a VOI LUT Sequence is preferred to a window).
    """
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        return "lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return "none"


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DS element."""
    return float(value[0]) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else float(value)


def apply_dose_scaling(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """RT Dose grid values to Gy: ``value * DoseGridScaling`` (PS3.3 C.8.8.3, Dose Grid Scaling)."""
    return arr.astype(np.float64) * float(ds.DoseGridScaling)


def monochrome1_to_2(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect MONOCHROME1 values within ``[lo, hi]`` so that higher = brighter: ``lo + hi - arr``.

    PS3.3 C.7.6.3.1.2: in MONOCHROME1 the minimum value is displayed white. Reflecting within the
    output range (not the image's own min/max) keeps the result independent of image content.

    >>> monochrome1_to_2(np.array([0.0, 1023.0]), 0.0, 1023.0)
    array([1023.,    0.])
    """
    return (lo + hi) - np.asarray(arr, dtype=np.float64)


def _grey_pipeline(arr: np.ndarray, ds: Dataset, apply_voi: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """Steps 2-4 of the module docstring; returns the displayed values and their metadata."""
    info: dict[str, Any] = {}
    if ds.get("Modality") == "RTDOSE" and ds.get("DoseGridScaling") is not None:
        values = apply_dose_scaling(arr, ds)
        info["units"] = "Gy"
        lo, hi = (float(values.min()), float(values.max()))
    else:
        values = apply_modality_lut(arr, ds)
        lo, hi = output_range(ds, "none")
        if ds.get("Modality") == "CT" and ds.get("RescaleIntercept") is not None:
            info["units"] = "HU"  # PS3.3 C.8.2.1.1.2: CT rescaled values are Hounsfield units
    info["rescaled_min"], info["rescaled_max"] = float(values.min()), float(values.max())
    in_header = voi_kind(ds)
    kind = in_header if apply_voi else "not applied"
    if kind in ("lut", "window"):
        values = apply_voi_lut(values, ds)
        lo, hi = output_range(ds, kind)
    info["voi"] = kind
    # the header's window is recorded even when not applied (``voi`` says whether it was)
    info["window"] = _window_info(ds) if in_header == "window" else None
    inverted = ds.PhotometricInterpretation == "MONOCHROME1"
    if inverted:
        values = monochrome1_to_2(values, lo, hi)
    info["inverted"], info["output_range"] = inverted, [lo, hi]
    return values, info


def _window_info(ds: Dataset) -> dict[str, Any]:
    return {"center": _first(ds.WindowCenter), "width": _first(ds.WindowWidth),
            "function": str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()}


def _colour_pipeline(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, dict[str, Any]]:
    """PALETTE COLOR through its palette, then (as for RGB/YBR) BT.601 luminance."""
    pi = ds.PhotometricInterpretation
    if pi == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.shape[-1] != 3:
        raise ValueError(f"unexpected colour array shape {arr.shape}")
    return luminance(arr), {"colour": f"luminance of {pi}"}


# --- geometry and metadata -------------------------------------------------------------------

def _floats(value: Any) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None


def _shared_group(ds: Dataset, sequence: str, keyword: str) -> Any:
    """An attribute from the Shared Functional Groups of an enhanced multi-frame object."""
    try:
        return ds.SharedFunctionalGroupsSequence[0][sequence][0].get(keyword)
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def _slice_spacing(ds: Dataset, frames: int) -> float | None:
    """Distance between frames in mm: uniform Grid Frame Offset Vector (RT Dose), else Spacing
    Between Slices (top level or shared functional groups). ``None`` when not derivable."""
    offsets = _floats(ds.get("GridFrameOffsetVector"))
    if offsets and len(offsets) == frames and frames > 1:
        steps = np.diff(offsets)
        if np.allclose(steps, steps[0]) and steps[0] != 0:
            return abs(float(steps[0]))
    value = ds.get("SpacingBetweenSlices") or _shared_group(ds, "PixelMeasuresSequence", "SpacingBetweenSlices")
    return abs(float(value)) if value not in (None, "") else None


def _spacing(ds: Dataset, ndim: int, frames: int, colour: bool) -> tuple[tuple[float, ...] | None, str | None]:
    """Pixel spacing (row, col) in mm from PixelSpacing, else ImagerPixelSpacing (projection
    radiography, PS3.3 C.8.11.4: at the detector, not the patient); a slice spacing in front for
    3D. Colour multi-frame (ultrasound cine) frames are time points, so no 3D spacing."""
    source = None
    rc = _floats(ds.get("PixelSpacing"))
    if rc is not None:
        source = "PixelSpacing"
    else:
        rc = _floats(_shared_group(ds, "PixelMeasuresSequence", "PixelSpacing"))
        if rc is not None:
            source = "PixelSpacing"
        else:
            rc = _floats(ds.get("ImagerPixelSpacing"))
            source = "ImagerPixelSpacing" if rc is not None else None
    if rc is None or len(rc) != 2:
        return None, None
    if ndim == 2:
        return rc, source
    step = None if colour else _slice_spacing(ds, frames)
    return ((step, *rc), source) if step is not None else (None, None)


def _orientation(ds: Dataset) -> tuple[float, ...] | None:
    value = ds.get("ImageOrientationPatient") or _shared_group(ds, "PlaneOrientationSequence",
                                                               "ImageOrientationPatient")
    out = _floats(value)
    return out if out is not None and len(out) == 6 else None


def _plain(value: Any) -> Any:
    """pydicom values (DSfloat, IS, MultiValue) to plain JSON-friendly Python values."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [_plain(v) for v in value]
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return str(value)


def _metadata(ds: Dataset, frames: int, extra: dict[str, Any]) -> dict[str, Any]:
    """Technical attributes only, each copied by name from the whitelist :data:`METADATA_KEYS`."""
    ts = ds.file_meta.TransferSyntaxUID
    sop = ds.get("SOPClassUID")
    md: dict[str, Any] = {
        "photometric_interpretation": safe_code(ds.get("PhotometricInterpretation")),
        "transfer_syntax": str(ts) if ts.is_valid else None,
        "transfer_syntax_name": uid_name(ts),
        "sop_class": uid_name(sop),
        "bits_allocated": _plain(ds.get("BitsAllocated")),
        "bits_stored": _plain(ds.get("BitsStored")),
        "pixel_representation": _plain(ds.get("PixelRepresentation")),
        "samples_per_pixel": _plain(ds.get("SamplesPerPixel", 1)),
        "frames": frames,
        "rows": _plain(ds.get("Rows")),
        "columns": _plain(ds.get("Columns")),
        "rescale_slope": _plain(ds.get("RescaleSlope")),
        "rescale_intercept": _plain(ds.get("RescaleIntercept")),
        "rescale_type": safe_code(ds.get("RescaleType")),
        "body_part_examined": safe_code(ds.get("BodyPartExamined")),
        "view_position": safe_code(ds.get("ViewPosition")),
        "lossy_compression": (str(ds.get("LossyImageCompression", "")) == "01") or None,
    }
    md.update(extra)
    return {k: md[k] for k in METADATA_KEYS if k in md}


# --- the public reader -----------------------------------------------------------------------

def _frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def read_dicom(path: str | os.PathLike, *, apply_voi: bool = True, max_bytes: int | None = None) -> Image:
    """Read one DICOM file into an :class:`Image` of displayed values (see the module docstring).

    Parameters
    ----------
    path : str or PathLike
        A DICOM file, with or without the 128-byte preamble.
    apply_voi : bool
        Apply the VOI LUT / window (default, what a viewer shows). ``False`` keeps the Modality LUT
        output (HU for CT), still turned into MONOCHROME2.
    max_bytes : int, optional
        Refuse files whose pixel data would decode to more bytes than this (default
        :func:`max_image_bytes`: ``$SECONDREAD_MAX_IMAGE_BYTES`` or :data:`MAX_IMAGE_BYTES`).

    Returns
    -------
    Image
        float32 pixels, 2D ``[rows, cols]`` or 3D ``[frames, rows, cols]``; ``modality`` from the
        Modality tag (``"OT"`` when empty); ``spacing`` in mm (None when unknown); ``orientation``
        from Image Orientation (Patient); technical ``metadata`` (:data:`METADATA_KEYS`).

    Raises
    ------
    SecondreadError
        Missing file, folder, not DICOM, truncated or corrupt, no pixel data, no decoder, or an
        image larger than the limit (checked from the header, before decoding).

    Example
    -------
    >>> img = read_dicom("CT_small.dcm", apply_voi=False)   # doctest: +SKIP
    >>> img.metadata["units"], img.spacing                   # doctest: +SKIP
    ('HU', (0.661468, 0.661468))
    """
    p = require_file(path)
    ds = _read_dataset(p)
    arr = _decode(ds, p, max_bytes)
    frames = _frames(ds)
    try:
        colour = int(ds.get("SamplesPerPixel", 1) or 1) > 1 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
        if colour:
            values, extra = _colour_pipeline(arr, ds)
        elif ds.get("PhotometricInterpretation") in _MONOCHROME:
            values, extra = _grey_pipeline(arr, ds, apply_voi)
        else:
            raise SecondreadError(p, f"unsupported Photometric Interpretation "
                                     f"{safe_code(ds.get('PhotometricInterpretation'), 'that is not a valid code')!r}")
        spacing, source = _spacing(ds, values.ndim, frames, colour)
        extra["spacing_source"] = source
        modality = safe_code(ds.get("Modality"), "OT")
        return Image(pixels=values, modality=modality, spacing=spacing, source=str(p),
                     orientation=_orientation(ds), metadata=_metadata(ds, frames, extra))
    except SecondreadError:
        raise
    except Exception as exc:
        raise SecondreadError(p, f"cannot apply the DICOM pixel pipeline: the header values are "
                                 f"inconsistent ({type(exc).__name__})") from None

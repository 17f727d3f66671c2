"""A folder of DICOM slices as one 3D :class:`~secondread.image.Image` (CT/MR series → volume).

Why: a CT or MR study arrives as one file per slice, named in any order (TCIA's download names do
not follow the anatomy, PACS exports use UIDs). File names and Instance Number are not geometry;
the only reliable order is the slice position along the slice normal (PS3.3 C.7.6.2.1.1, Image
Plane module). A volume stacked in the wrong order, with a missing slice, or with a second series
mixed in would give wrong sizes and wrong locations to every later stage, so those cases are
refused with one line that says what is wrong, never merged silently.

How a folder is read
--------------------
1. Every file directly in the folder is read with pydicom, pixel data deferred (so each file's
   header is parsed once and its pixels read only if its series is chosen). Files that are not
   DICOM (a README), DICOM objects without pixel data (DICOMDIR, SR) and unreadable DICOM files
   are skipped and counted.
2. The images are grouped by Series Instance UID. Several series → an error listing them, unless
   ``series_uid`` picks one (see :func:`list_series`).
3. All slices must share Rows/Columns, photometric interpretation, Pixel Spacing and Image
   Orientation (Patient). The slice normal is the cross product of the row and column direction
   cosines; slices are sorted by the projection of Image Position (Patient) on it, ascending
   (for an axial series with the usual orientation: feet first, ``pixels[0]`` is the lowest z).
4. The slice spacing is the median step between sorted positions. Duplicate positions and gaps
   (a step > 1.5 x the median) are errors; non-uniform steps, missing Instance Numbers and
   sheared stacks (gantry tilt) are warnings in ``metadata["warnings"]``.
5. Pixels are decoded slice by slice into one float32 array with the Modality LUT applied
   (PS3.3 C.11.1): **for CT, ``Image.pixels`` holds Hounsfield units**. The VOI LUT / window is
   NOT applied to volumes (measurements need HU); the header window of the first slice is kept in
   ``metadata["window"]``. MONOCHROME1 is turned into MONOCHROME2 as in
   :mod:`secondread.io.dicom`.

Geometry
--------
``spacing`` is ``(slice step, PixelSpacing row, PixelSpacing column)`` in mm, the axis order of
``pixels[slice, row, column]``. ``metadata["affine"]`` is a 4x4 matrix (nested lists) mapping a
voxel index ``(slice, row, column, 1)`` to patient coordinates in mm (DICOM LPS, PS3.3
C.7.6.2.1.1)::

    xyz = IPP_0 + slice * S + row * PixelSpacing[0] * F_col + column * PixelSpacing[1] * F_row

where ``F_row``/``F_col`` are the first/second triplet of Image Orientation (Patient) and ``S`` is
the measured vector between consecutive slice positions.

Performance (``benchmarks/io.py``): header parse once per file, no float64 intermediate volume
and no ``np.stack`` copy. A thread pool over the slices was measured slower on 2 cores (the work
is GIL-bound Python parsing), so reads are sequential.

Example
-------
>>> vol = read_series("LIDC-IDRI-0001/series")          # doctest: +SKIP
>>> vol.shape, vol.spacing, vol.metadata["units"]       # doctest: +SKIP
((133, 512, 512), (2.5, 0.703125, 0.703125), 'HU')
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from ..errors import SecondreadError
from ..image import Image
from . import dicom as _dicom

MAX_VOLUME_BYTES = 2**32
"""Default limit on the float32 volume a series may become (4 GiB); ``$SECONDREAD_MAX_VOLUME_BYTES``
or the ``max_volume_bytes`` keyword override it. The per-file limit of :mod:`secondread.io.dicom`
applies to each slice as well."""

SERIES_METADATA_KEYS = (
    "slices", "files", "skipped_files", "unreadable_files", "series_in_folder", "affine", "world",
    "slice_normal", "slice_positions_mm", "slice_thickness", "slice_spacing_source",
    "transfer_syntaxes", "warnings",
)
"""Keys :func:`read_series` adds to those of :data:`secondread.io.dicom.METADATA_KEYS`."""

GAP_FACTOR = 1.5          # a step this many times the median step means a missing slice
DUPLICATE_MM = 1e-3       # positions closer than this along the normal are the same position
UNIFORM_MM = 0.01         # steps within max(this, 1 % of the median) of the median are uniform
ORIENTATION_TOL = 1e-4    # direction cosines this close are the same orientation

# Deferring values above this size keeps the scan to the header: pixel data is read on access.
_DEFER = "16 KB"


# --- scanning the folder ---------------------------------------------------------------------

def _require_folder(folder: str | os.PathLike) -> Path:
    p = Path(folder)
    if not p.exists():
        raise SecondreadError(p, "folder not found")
    if not p.is_dir():
        raise SecondreadError(p, "is a file, not a series folder")
    return p


def _read_header(path: Path) -> Dataset | str:
    """The data set with pixel data deferred, or why it was skipped: ``"other"`` (not DICOM, or no
    pixel data) or ``"unreadable"`` (a DICOM file whose header is corrupt, or an image header whose
    pixel data is missing: the file was cut short)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=_DEFER)
    except pydicom.errors.InvalidDicomError:
        ds = _dicom._forced_read(path, stop_before_pixels=True)
        if ds is None:
            return "other"
        ds = _forced_full_read(path)
        if ds is None:
            return "unreadable"
    except Exception:  # truncated or corrupt header of a real DICOM file
        return "unreadable"
    if "PixelData" not in ds:
        # an image header (rows and columns) without its pixels is a slice cut short, not an SR or DICOMDIR
        image_header = "Rows" in ds and "Columns" in ds and not any(
            k in ds for k in ("FloatPixelData", "DoubleFloatPixelData"))
        return "unreadable" if image_header else "other"
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        ds.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian  # PS3.5 10.1 default
    return ds


def _forced_full_read(path: Path) -> Dataset | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, force=True, defer_size=_DEFER)
    except Exception:
        return None


def _scan(folder: Path) -> tuple[dict[str, list[tuple[Path, Dataset]]], int, list[Path]]:
    """Group the folder's image files by Series Instance UID; count the other files skipped and name
    the unreadable ones (a truncated slice is usually why a series then shows a gap)."""
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    others = 0
    unreadable: list[Path] = []
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        ds = _read_header(path)
        if isinstance(ds, str):
            if ds == "unreadable":
                unreadable.append(path)
            else:
                others += 1
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        if uid and not pydicom.uid.UID(uid).is_valid:
            uid = "(invalid UID)"  # never echo a corrupt value: it may hold other attributes' text
        groups.setdefault(uid, []).append((path, ds))
    return groups, others, unreadable


def list_series(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The image series in a folder, largest first.

    Returns
    -------
    list of dict
        ``series_uid`` (``""`` when the files have none), ``modality``, ``series_number``,
        ``files``, ``rows``, ``columns``. No patient identifiers.
    """
    groups, _, _ = _scan(_require_folder(folder))
    return [_series_summary(uid, items) for uid, items in _by_size(groups)]


def _by_size(groups: dict[str, list]) -> list[tuple[str, list]]:
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def _series_summary(uid: str, items: list[tuple[Path, Dataset]]) -> dict[str, Any]:
    ds = items[0][1]
    number = ds.get("SeriesNumber")
    return {"series_uid": uid, "modality": _dicom.safe_code(ds.get("Modality"), "OT"),
            "series_number": int(number) if number not in (None, "") else None,
            "files": len(items), "rows": _dicom._plain(ds.get("Rows")),
            "columns": _dicom._plain(ds.get("Columns"))}


def _choose(folder: Path, groups: dict[str, list], series_uid: str | None) -> list[tuple[Path, Dataset]]:
    """The files of the one series to read, or an error that lists the choices."""
    if series_uid is not None:
        if series_uid not in groups:
            known = ", ".join(f"{uid or '(no UID)'} ({len(v)} files)" for uid, v in _by_size(groups))
            raise SecondreadError(folder, f"no series {series_uid} in the folder; it holds: {known}")
        return groups[series_uid]
    if len(groups) > 1:
        listing = ", ".join(f"{uid or '(no UID)'} ({len(v)} files)" for uid, v in _by_size(groups))
        raise SecondreadError(folder, f"the folder holds {len(groups)} series, not merged: {listing}; "
                                      f"choose one by its Series Instance UID")
    return next(iter(groups.values()))


# --- geometry --------------------------------------------------------------------------------

def _vector(ds: Dataset, keyword: str, n: int) -> np.ndarray | None:
    values = _dicom._floats(ds.get(keyword))
    if values is None or len(values) != n or not np.all(np.isfinite(values)):
        return None
    return np.asarray(values, dtype=np.float64)


def _require_same(folder: Path, items: list[tuple[Path, Dataset]], what: str, key) -> None:
    """Every slice must agree on ``key(ds)``; otherwise list the variants and their counts."""
    counts = Counter(key(ds) for _, ds in items)
    if len(counts) > 1:
        listing = ", ".join(f"{value} ({n} files)" for value, n in counts.most_common())
        raise SecondreadError(folder, f"mixed {what} in one series, not merged: {listing}")


def _require_geometry(folder: Path, items: list[tuple[Path, Dataset]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orientation (6,), pixel spacing (2,) and positions (n, 3), all present and consistent."""
    orientations, positions, spacings = [], [], []
    for path, ds in items:
        iop, ipp = _vector(ds, "ImageOrientationPatient", 6), _vector(ds, "ImagePositionPatient", 3)
        ps = _vector(ds, "PixelSpacing", 2)
        if iop is None or ipp is None:
            raise SecondreadError(folder, f"{path.name} has no valid Image Orientation/Position (Patient): "
                                          f"the slices cannot be ordered in space")
        if ps is None or np.any(ps <= 0):
            raise SecondreadError(folder, f"{path.name} has no valid Pixel Spacing")
        orientations.append(iop), positions.append(ipp), spacings.append(ps)
    orientations, spacings = np.array(orientations), np.array(spacings)
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOL:
        kinds = Counter(tuple(np.round(o, 3)) for o in orientations)
        listing = ", ".join(f"{list(k)} ({n} files)" for k, n in kinds.most_common())
        raise SecondreadError(folder, f"mixed orientations in one series, not merged: {listing}")
    if np.abs(spacings - spacings[0]).max() > ORIENTATION_TOL:
        raise SecondreadError(folder, "mixed Pixel Spacing in one series, not merged")
    return orientations[0], spacings[0], np.array(positions)


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """Unit normal of the slice plane: row cosines x column cosines (PS3.3 C.7.6.2.1.1)."""
    normal = np.cross(orientation[:3], orientation[3:])
    length = np.linalg.norm(normal)
    if length < 1e-6:
        raise ValueError("the row and column direction cosines are parallel")
    return normal / length


def _check_steps(folder: Path, along: np.ndarray, warn: list[str]) -> float:
    """Median slice step of sorted positions ``along`` the normal; duplicates and gaps raise."""
    steps = np.diff(along)
    duplicates = int(np.sum(steps < DUPLICATE_MM))
    if duplicates:
        where = float(along[1:][steps < DUPLICATE_MM][0])
        raise SecondreadError(folder, f"duplicate slice positions: {duplicates} slice(s) repeat the position of "
                                      f"another (first at {where:.2f} mm along the normal), not merged")
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        i = int(gaps[0])
        raise SecondreadError(folder, f"gap in the series: {gaps.size} step(s) larger than {GAP_FACTOR} x the median "
                                      f"{median:g} mm (first {steps[i]:g} mm between {along[i]:.2f} and "
                                      f"{along[i + 1]:.2f} mm along the normal): a slice is missing")
    if np.abs(steps - median).max() > max(UNIFORM_MM, 0.01 * median):
        warn.append(f"non-uniform slice spacing: steps from {steps.min():g} to {steps.max():g} mm; "
                    f"the volume uses the median {median:g} mm")
    return median


def _instance_warning(items: list[tuple[Path, Dataset]]) -> str | None:
    """Instance Numbers missing inside their range: worth a note when the positions are regular."""
    try:
        numbers = sorted(int(ds.InstanceNumber) for _, ds in items)
    except (AttributeError, TypeError, ValueError):
        return None
    missing = (numbers[-1] - numbers[0] + 1) - len(set(numbers))
    if missing > 0:
        return (f"{missing} Instance Number(s) missing between {numbers[0]} and {numbers[-1]} although the "
                f"slice positions are regular")
    return None


def _affine(first: np.ndarray, step_vector: np.ndarray, orientation: np.ndarray,
            pixel_spacing: np.ndarray) -> np.ndarray:
    """4x4 voxel (slice, row, column) → LPS mm, see the module docstring."""
    affine = np.eye(4)
    affine[:3, 0] = step_vector
    affine[:3, 1] = orientation[3:] * pixel_spacing[0]
    affine[:3, 2] = orientation[:3] * pixel_spacing[1]
    affine[:3, 3] = first
    return affine


def _order(folder: Path, items: list[tuple[Path, Dataset]]) -> tuple[list[tuple[Path, Dataset]], dict[str, Any], tuple]:
    """Sort the slices in space and measure the geometry; returns (sorted items, metadata, spacing)."""
    orientation, pixel_spacing, positions = _require_geometry(folder, items)
    try:
        normal = slice_normal(orientation)
    except ValueError as exc:
        raise SecondreadError(folder, f"invalid Image Orientation (Patient): {exc}") from None
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    items = [items[i] for i in order]
    warn: list[str] = []
    if len(items) > 1:
        step = _check_steps(folder, along, warn)
        step_vector = (positions[-1] - positions[0]) / (len(items) - 1)
        source = "ImagePositionPatient"
        if np.linalg.norm(np.cross(step_vector / np.linalg.norm(step_vector), normal)) > 0.01:
            warn.append("the slices are sheared (gantry tilt): the affine keeps the true positions")
        note = _instance_warning(items)
        if note:
            warn.append(note)
    else:
        step, source = _single_slice_step(items[0][1])
        step_vector = normal * step
        warn.append(f"a single slice: its thickness comes from {source}")
    geometry = {"affine": _affine(positions[0], step_vector, orientation, pixel_spacing).tolist(), "world": "LPS",
                "slice_normal": normal.tolist(), "slice_positions_mm": [float(along[0]), float(along[-1])],
                "slice_spacing_source": source, "warnings": warn}
    return items, geometry, (step, float(pixel_spacing[0]), float(pixel_spacing[1]))


def _single_slice_step(ds: Dataset) -> tuple[float, str]:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(keyword)
        if value not in (None, "") and float(value) > 0:
            return abs(float(value)), keyword
    return 1.0, "no thickness in the header (1 mm assumed)"


# --- pixels ----------------------------------------------------------------------------------

def max_volume_bytes(override: int | None = None) -> int:
    if override is not None:
        return int(override)
    text = os.environ.get("SECONDREAD_MAX_VOLUME_BYTES", "").strip()
    try:
        return int(float(text)) if text else MAX_VOLUME_BYTES
    except ValueError:
        raise SecondreadError(None, f"SECONDREAD_MAX_VOLUME_BYTES must be a number of bytes, got {text!r}") from None


def _into(out: np.ndarray, arr: np.ndarray, ds: Dataset) -> None:
    """Write the Modality LUT output of one slice (PS3.3 C.11.1) into ``out`` (float32).

    Rescale Slope/Intercept is done in place, without pydicom's float64 copy; a Modality LUT
    Sequence goes through pydicom's ``apply_modality_lut``.
    """
    if ds.get("ModalityLUTSequence"):
        out[...] = apply_modality_lut(arr, ds)
        return
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    out[...] = arr
    if slope is not None and intercept is not None:
        slope, intercept = float(slope), float(intercept)
        if slope != 1.0:
            out *= slope
        if intercept != 0.0:
            out += intercept


def _read_pixels(items: list[tuple[Path, Dataset]], max_bytes: int | None) -> np.ndarray:
    rows, cols = int(items[0][1].Rows), int(items[0][1].Columns)
    volume = np.empty((len(items), rows, cols), dtype=np.float32)
    for i, (path, ds) in enumerate(items):
        try:
            arr = _dicom._decode(ds, path, max_bytes)
        except SecondreadError as exc:  # say which slice of which folder, for the user who gave a folder
            raise SecondreadError(path, f"{exc.problem} (slice {i + 1} of {len(items)} of the series folder)") from None
        if arr.shape != (rows, cols):
            raise SecondreadError(path, f"decoded to shape {arr.shape}, expected ({rows}, {cols})")
        try:
            _into(volume[i], arr, ds)
        except Exception as exc:
            raise SecondreadError(path, f"cannot apply the Modality LUT: the header values are inconsistent "
                                        f"({type(exc).__name__})") from None
    return volume


# --- the public reader -----------------------------------------------------------------------

def _refuse_unstackable(folder: Path, items: list[tuple[Path, Dataset]], max_volume: int | None) -> None:
    first = items[0][1]
    _require_same(folder, items, "image sizes",
                  lambda ds: f"{_dicom._plain(ds.get('Rows'))}x{_dicom._plain(ds.get('Columns'))}")
    _require_same(folder, items, "photometric interpretations",
                  lambda ds: _dicom.safe_code(ds.get("PhotometricInterpretation"), "invalid"))
    photometric = _dicom.safe_code(first.get("PhotometricInterpretation"), "")
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or int(first.get("SamplesPerPixel", 1) or 1) != 1:
        raise SecondreadError(folder, f"a {photometric or 'colour'} series cannot be read as a grey-scale volume")
    try:
        rows, cols = int(first.Rows), int(first.Columns)
    except (AttributeError, TypeError, ValueError):
        raise SecondreadError(folder, "the slices have no valid Rows/Columns") from None
    size = len(items) * rows * cols * 4
    if size > max_volume_bytes(max_volume):
        raise SecondreadError(folder, f"refused: the volume would take {size / 2**20:.0f} MiB, more than the "
                                      f"limit (SECONDREAD_MAX_VOLUME_BYTES)")


def read_series(folder: str | os.PathLike, series_uid: str | None = None, *,
                max_bytes: int | None = None, max_volume_bytes: int | None = None) -> Image:
    """Read a folder of DICOM slices into one volume (see the module docstring).

    Parameters
    ----------
    folder : str or PathLike
        A folder whose files are the slices (file names do not matter; sub-folders are ignored).
    series_uid : str, optional
        The Series Instance UID to read when the folder holds several (see :func:`list_series`).
    max_bytes, max_volume_bytes : int, optional
        Limits on one slice's decoded pixel data and on the float32 volume.

    Returns
    -------
    Image
        ``pixels[slice, row, column]`` float32 after the Modality LUT (HU for CT, no window),
        ``spacing`` (slice step, row, column) in mm, ``orientation`` (the six cosines), and
        metadata with :data:`secondread.io.dicom.METADATA_KEYS` (of the first slice) plus
        :data:`SERIES_METADATA_KEYS`: ``affine`` (voxel → LPS mm), ``warnings`` and counts.
        A folder holding a single multi-frame file is read with
        :func:`secondread.io.dicom.read_dicom` (``apply_voi=False``).

    Raises
    ------
    SecondreadError
        No DICOM images, several series (without ``series_uid``), mixed sizes or orientations,
        missing geometry, duplicate positions, gaps, or a slice that cannot be decoded.
    """
    p = _require_folder(folder)
    groups, others, unreadable = _scan(p)
    counts = {"skipped_files": others, "unreadable_files": len(unreadable),
              "series_in_folder": len(groups)}
    if not groups:
        raise SecondreadError(p, f"no DICOM image files in the folder ({others} other and "
                                 f"{len(unreadable)} unreadable files skipped)")
    items = _choose(p, groups, series_uid)
    if len(items) == 1 and _dicom._frames(items[0][1]) > 1:
        return _single_multiframe(items[0][0], counts, max_bytes)
    if any(_dicom._frames(ds) > 1 for _, ds in items):
        raise SecondreadError(p, "a series of several multi-frame files cannot be stacked into one volume")
    _refuse_unstackable(p, items, max_volume_bytes)
    try:
        items, geometry, spacing = _order(p, items)
    except SecondreadError as exc:
        if not unreadable:
            raise
        raise SecondreadError(p, f"{exc.problem}; {len(unreadable)} unreadable DICOM file(s) were skipped, "
                                 f"first {unreadable[0].name} (truncated or corrupt)") from None
    if unreadable:
        geometry["warnings"].append(f"{len(unreadable)} unreadable DICOM file(s) skipped")
    volume = _read_pixels(items, max_bytes)
    return _volume_image(p, items, volume, spacing, {**geometry, **counts})


def _single_multiframe(path: Path, counts: dict[str, Any], max_bytes: int | None) -> Image:
    image = _dicom.read_dicom(path, apply_voi=False, max_bytes=max_bytes)
    image.metadata.update(counts, files=1, slices=image.shape[0] if image.pixels.ndim == 3 else 1,
                          warnings=[])
    return image


def _volume_image(folder: Path, items: list[tuple[Path, Dataset]], volume: np.ndarray,
                  spacing: tuple[float, float, float], series: dict[str, Any]) -> Image:
    first = items[0][1]
    extra: dict[str, Any] = {"voi": "not applied",
                             "window": _dicom._window_info(first) if _dicom.voi_kind(first) == "window" else None,
                             "rescaled_min": float(volume.min()), "rescaled_max": float(volume.max()),
                             "spacing_source": "PixelSpacing"}
    if str(first.get("Modality")) == "CT" and first.get("RescaleIntercept") is not None:
        extra["units"] = "HU"  # PS3.3 C.8.2.1.1.2
    inverted = first.PhotometricInterpretation == "MONOCHROME1"
    if inverted:
        lo, hi = _dicom.output_range(first, "none")
        np.subtract(np.float32(lo + hi), volume, out=volume)
        extra["output_range"] = [lo, hi]
    extra["inverted"] = inverted
    syntaxes = sorted({str(ds.file_meta.TransferSyntaxUID) for _, ds in items})
    thickness = first.get("SliceThickness")
    series.update(slices=len(items), files=len(items), transfer_syntaxes=syntaxes,
                  slice_thickness=float(thickness) if thickness not in (None, "") else None)
    metadata = _dicom._metadata(first, 1, extra)
    metadata.update({k: series[k] for k in SERIES_METADATA_KEYS if k in series})
    return Image(pixels=volume, modality=_dicom.safe_code(first.get("Modality"), "OT"), spacing=spacing,
                 source=str(folder), orientation=tuple(float(v) for v in first.ImageOrientationPatient),
                 metadata=metadata)

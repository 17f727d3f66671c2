"""LIDC-IDRI chest CT (``ct/LIDC-IDRI-*``): four radiologists' nodule outlines -> consensus nodules.

Why: LIDC has no single truth. Each of up to four readers outlined, slice by slice, every nodule
>= 3 mm (``unblindedReadNodule`` with ``characteristics`` and multi-point ``roi`` edge maps), marked
nodules < 3 mm by one point, and marked non-nodules. Ground truth for a detector is the *consensus*:
the readers' annotations of one nodule grouped together (the idea of pylidc's clustering,
re-implemented here) and kept when enough readers agree. The rules are those of the data set's
``SOURCE.md`` so the result can be checked against its ``nodules.csv``:

1. an annotation's voxel mask: every ``inclusion`` TRUE roi filled on its slice (pixel centres inside
   the polygon, :func:`skimage.draw.polygon`, plus the outline pixels), then ``inclusion`` FALSE rois
   removed; its centre is the mean world position of its voxels;
2. its diameter: the largest distance between two points of one contour on one slice (pylidc's
   ``Annotation.diameter``);
3. two annotations are one nodule when their centres are within :data:`LINK_MM` or their masks share
   a voxel (connected components of that relation);
4. a consensus nodule has annotations from >= ``min_readers`` (3) readers; its centre, diameter and
   malignancy are the means over its annotations, and its mask holds the voxels marked by at least
   half of them (pylidc's 50 % consensus level).

Coordinates: the XML's ``xCoord`` is the column and ``yCoord`` the row (0-based) on the slice named
by ``imageSOP_UID``. World positions are DICOM patient coordinates (LPS, mm). Voxel indices refer to
the volume sorted along the slice normal (slice 0 = lowest position along the normal, for an axial
series the most inferior slice), the order of :func:`secondread.io.series.read_series`.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pydicom
from skimage.draw import polygon as fill_polygon

from ..errors import SecondreadError
from ..image import Image
from .lesions import Contour, Lesion, Sample, data_root

NAME = "lidc"
FOLDER = "ct"
LINK_MM = 10.0
CHARACTERISTICS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin",
                   "lobulation", "spiculation", "texture", "malignancy")


# ----------------------------------------------------------------------------------- geometry
@dataclass
class Geometry:
    """Where each slice of the series is: enough to turn (slice, row, col) into mm and back.

    ``positions[k]`` is ImagePositionPatient of slice ``k`` (sorted along the normal), ``row_dir``
    and ``col_dir`` the ImageOrientationPatient cosines (along a row = increasing column),
    ``spacing`` the PixelSpacing ``(between rows, between columns)``.
    """

    sop_to_slice: dict[str, int]
    positions: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    spacing: tuple[float, float]
    shape: tuple[int, int, int]
    files: list[Path] = field(repr=False, default_factory=list)

    def world(self, slices: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``[N, 3]`` LPS mm of voxels given by index arrays."""
        slices, rows, cols = (np.asarray(a, dtype=float) for a in (slices, rows, cols))
        base = self.positions[np.asarray(slices, dtype=int)]
        return (base + cols[:, None] * self.spacing[1] * self.row_dir
                + rows[:, None] * self.spacing[0] * self.col_dir)


def read_geometry(series_dir: str | os.PathLike) -> Geometry:
    """Slice geometry of a DICOM series from its headers only (no pixel data is decoded)."""
    folder = Path(series_dir)
    headers = []
    for path in sorted(folder.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            headers.append((path, str(ds.SOPInstanceUID), np.array(ds.ImagePositionPatient, float),
                            np.array(ds.ImageOrientationPatient, float), tuple(float(v) for v in ds.PixelSpacing),
                            (int(ds.Rows), int(ds.Columns))))
        except Exception as exc:
            raise SecondreadError(path, f"cannot read the slice geometry ({type(exc).__name__})") from None
    if not headers:
        raise SecondreadError(folder, "no DICOM slices (*.dcm) in the series folder")
    row_dir, col_dir = headers[0][3][:3], headers[0][3][3:]
    normal = np.cross(row_dir, col_dir)
    headers.sort(key=lambda h: float(h[2] @ normal))
    return Geometry(sop_to_slice={h[1]: k for k, h in enumerate(headers)},
                    positions=np.array([h[2] for h in headers]), row_dir=row_dir, col_dir=col_dir,
                    spacing=headers[0][4], shape=(len(headers),) + headers[0][5],
                    files=[h[0] for h in headers])


# ----------------------------------------------------------------------------------- XML
@dataclass
class Annotation:
    """One reader's mark of one nodule (``unblindedReadNodule``), or of a non-nodule.

    ``kind`` is ``"nodule"`` (>= 3 mm: outlines and characteristics), ``"small"`` (< 3 mm: one point)
    or ``"non-nodule"`` (one point). ``mask`` is a box of the volume starting at voxel ``origin``.
    """

    reader: str
    nodule_id: str
    kind: str
    contours: list[Contour]
    characteristics: dict[str, int] = field(default_factory=dict)
    mask: np.ndarray | None = field(default=None, repr=False)
    origin: tuple[int, int, int] = (0, 0, 0)
    center_mm: np.ndarray | None = None
    center_voxel: np.ndarray | None = None  # (x=col, y=row, z=slice)
    diameter_mm: float = 0.0


def _text(node: ET.Element, tag: str) -> str:
    child = node.find(f"{{*}}{tag}")
    return "" if child is None or child.text is None else child.text.strip()


def _points(node: ET.Element, tag: str) -> np.ndarray:
    return np.array([[float(_text(e, "xCoord")), float(_text(e, "yCoord"))]
                     for e in node.findall(f"{{*}}{tag}")], dtype=float).reshape(-1, 2)


def _contour(roi: ET.Element, geometry: Geometry, tag: str = "edgeMap") -> Contour:
    sop = _text(roi, "imageSOP_UID")
    if sop not in geometry.sop_to_slice:
        raise ValueError("an roi names a slice that is not in the series")
    return Contour(points=_points(roi, tag), z_mm=float(_text(roi, "imageZposition")),
                   slice_index=geometry.sop_to_slice[sop], inclusion=_text(roi, "inclusion").upper() != "FALSE",
                   sop_uid=sop)


def _nodule(node: ET.Element, reader: str, geometry: Geometry) -> Annotation:
    chars = node.find("{*}characteristics")
    characteristics = {} if chars is None else {
        tag: int(_text(chars, tag)) for tag in CHARACTERISTICS if _text(chars, tag)}
    contours = [_contour(roi, geometry) for roi in node.findall("{*}roi")]
    kind = "nodule" if characteristics else "small"
    return Annotation(reader=reader, nodule_id=_text(node, "noduleID"), kind=kind, contours=contours,
                      characteristics=characteristics)


def _non_nodule(node: ET.Element, reader: str, geometry: Geometry) -> Annotation:
    return Annotation(reader=reader, nodule_id=_text(node, "nonNoduleID"), kind="non-nodule",
                      contours=[_contour(node, geometry, tag="locus")])


def read_annotations(xml_path: str | os.PathLike, geometry: Geometry) -> list[Annotation]:
    """Every annotation of every reading session; readers are named ``reader1``.. in file order.

    Masks, centres and diameters are filled in (:func:`measure`).
    """
    path = Path(xml_path)
    try:
        root = ET.parse(path).getroot()
        out = []
        for n, session in enumerate(root.findall("{*}readingSession"), start=1):
            reader = f"reader{n}"
            out += [_nodule(node, reader, geometry) for node in session.findall("{*}unblindedReadNodule")]
            out += [_non_nodule(node, reader, geometry) for node in session.findall("{*}nonNodule")]
    except (ET.ParseError, ValueError, OSError) as exc:
        raise SecondreadError(path, f"not a readable LIDC annotation XML ({exc})") from None
    for annotation in out:
        measure(annotation, geometry)
    return out


# ----------------------------------------------------------------------------------- measures
def annotation_mask(contours: list[Contour], shape: tuple[int, int, int]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Filled voxel mask of an annotation's contours, as ``(box mask, origin)``.

    Inclusion outlines are filled (pixel centres inside, plus the outline pixels themselves), then
    exclusion outlines are removed, following the data set's stated rule.
    """
    pts = np.concatenate([c.points for c in contours])
    k = [c.slice_index for c in contours]
    lo = (min(k), int(pts[:, 1].min()), int(pts[:, 0].min()))
    hi = (max(k) + 1, int(pts[:, 1].max()) + 1, int(pts[:, 0].max()) + 1)
    box = np.zeros(tuple(h - l for h, l in zip(hi, lo)), dtype=bool)
    for keep in (True, False):
        for c in (c for c in contours if c.inclusion == keep):
            rows, cols = c.points[:, 1] - lo[1], c.points[:, 0] - lo[2]
            rr, cc = fill_polygon(rows, cols, shape=box.shape[1:])
            plane = box[c.slice_index - lo[0]]
            plane[rr, cc] = keep
            plane[rows.astype(int), cols.astype(int)] = keep
    return box, lo


def max_contour_extent(contours: list[Contour], spacing: tuple[float, float]) -> float:
    """Largest distance (mm) between two points of one contour on one slice."""
    best = 0.0
    for c in contours:
        mm = c.points * np.array([spacing[1], spacing[0]])
        if len(mm) > 1:
            best = max(best, float(np.sqrt(((mm[:, None] - mm[None]) ** 2).sum(-1)).max()))
    return best


def measure(annotation: Annotation, geometry: Geometry) -> None:
    """Fill in mask, centre (mm and voxel) and diameter; points (< 3 mm, non-nodule) get a centre only."""
    if annotation.kind != "nodule":
        c = annotation.contours[0]
        x, y = c.points.mean(axis=0)
        annotation.center_voxel = np.array([x, y, c.slice_index], dtype=float)
        annotation.center_mm = geometry.world([c.slice_index], [y], [x])[0]
        return
    annotation.mask, annotation.origin = annotation_mask(annotation.contours, geometry.shape)
    s, r, c = (idx + o for idx, o in zip(np.nonzero(annotation.mask), annotation.origin))
    annotation.center_mm = geometry.world(s, r, c).mean(axis=0)
    annotation.center_voxel = np.array([c.mean(), r.mean(), s.mean()])
    annotation.diameter_mm = max_contour_extent(annotation.contours, geometry.spacing)


# ----------------------------------------------------------------------------------- clustering
def _overlap(a: Annotation, b: Annotation) -> bool:
    """Do two annotations' masks share a voxel?"""
    if a.mask is None or b.mask is None:
        return False
    lo = np.maximum(a.origin, b.origin)
    hi = np.minimum(np.add(a.origin, a.mask.shape), np.add(b.origin, b.mask.shape))
    if np.any(hi <= lo):
        return False
    crop = lambda ann: ann.mask[tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, ann.origin))]
    return bool((crop(a) & crop(b)).any())


def cluster(annotations: list[Annotation], link_mm: float = LINK_MM) -> list[list[Annotation]]:
    """Group annotations of one nodule: connected components of "centres within ``link_mm`` or masks
    overlap". Returns the groups ordered by their first member's position in the input."""
    n = len(annotations)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            a, b = annotations[i], annotations[j]
            if np.linalg.norm(a.center_mm - b.center_mm) <= link_mm or _overlap(a, b):
                parent[find(j)] = find(i)
    groups: dict[int, list[Annotation]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(annotations[i])
    return list(groups.values())


def consensus_mask(group: list[Annotation], level: float = 0.5) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Voxels marked by at least ``level`` of the group's annotations, as ``(box mask, origin)``."""
    lo = np.min([a.origin for a in group], axis=0)
    hi = np.max([np.add(a.origin, a.mask.shape) for a in group], axis=0)
    votes = np.zeros(tuple(hi - lo), dtype=np.int16)
    for a in group:
        start = np.subtract(a.origin, lo)
        votes[tuple(slice(s, s + n) for s, n in zip(start, a.mask.shape))] += a.mask
    return votes >= level * len(group), tuple(int(v) for v in lo)


def nodule_lesion(group: list[Annotation], geometry: Geometry) -> Lesion:
    """A consensus nodule (see the module docstring) as a ``contour3d`` :class:`Lesion`."""
    mask, origin = consensus_mask(group)
    malignancy = [a.characteristics.get("malignancy") for a in group]
    attributes = {
        "center_mm": tuple(float(v) for v in np.mean([a.center_mm for a in group], axis=0)),
        "diameter_mm": float(np.mean([a.diameter_mm for a in group])),
        "diameters_mm": [a.diameter_mm for a in group],
        "malignancy": malignancy,
        "malignancy_mean": float(np.mean([m for m in malignancy if m is not None])),
        "characteristics": [a.characteristics for a in group],
        "n_readers": len({a.reader for a in group}),
        "volume_mm3": float(mask.sum() * geometry.spacing[0] * geometry.spacing[1]
                            * _slice_spacing(geometry)),
    }
    return Lesion(kind="contour3d", label="nodule",
                  center=tuple(float(v) for v in np.mean([a.center_voxel for a in group], axis=0)),
                  mask=mask, origin=origin, contours=[c for a in group for c in a.contours],
                  readers=tuple(a.reader for a in group), attributes=attributes)


def _slice_spacing(geometry: Geometry) -> float:
    normal = np.cross(geometry.row_dir, geometry.col_dir)
    along = geometry.positions @ normal
    return float(np.median(np.diff(along))) if len(along) > 1 else 1.0


def nodules(annotations: list[Annotation], geometry: Geometry, min_readers: int = 3) -> list[Lesion]:
    """Consensus nodules >= 3 mm marked by at least ``min_readers`` distinct readers."""
    groups = cluster([a for a in annotations if a.kind == "nodule"])
    return [nodule_lesion(g, geometry) for g in groups if len({a.reader for a in g}) >= min_readers]


def small_nodules(annotations: list[Annotation], min_readers: int = 1) -> list[Lesion]:
    """Nodules < 3 mm (one point per reader), grouped by centre distance, as ``point`` lesions."""
    groups = cluster([a for a in annotations if a.kind == "small"])
    return [Lesion(kind="point", label="nodule < 3 mm",
                   center=tuple(float(v) for v in np.mean([a.center_voxel for a in g], axis=0)),
                   readers=tuple(a.reader for a in g),
                   attributes={"center_mm": tuple(float(v) for v in np.mean([a.center_mm for a in g], axis=0))})
            for g in groups if len({a.reader for a in g}) >= min_readers]


# ----------------------------------------------------------------------------------- samples
def _load_volume(case: Path, geometry: Geometry) -> Image:
    """The CT volume in HU via :func:`secondread.io.series.read_series`, checked to be in the slice
    order the annotations' voxel indices use (slice 0 compared with pydicom's own pixels)."""
    from ..io.series import read_series  # lazy: datasets must not pull in the series machinery to list

    image = read_series(case / "series")
    if image.shape != geometry.shape:
        raise SecondreadError(case / "series", f"volume shape {image.shape} does not match the "
                                               f"{geometry.shape} slices of the annotations' geometry")
    ds = pydicom.dcmread(geometry.files[0])
    first = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
    if not np.allclose(image.pixels[0], first):
        raise SecondreadError(case / "series", "the volume's slice order differs from the order along "
                                               "the slice normal that the annotations use")
    return image


def _cases(data_dir) -> list[Path]:
    root = data_root(data_dir, must_exist=False) / FOLDER
    cases = sorted(p for p in root.glob("LIDC-IDRI-*") if (p / "annotations.xml").is_file())
    if not cases:
        raise SecondreadError(root, "no LIDC-IDRI case (LIDC-IDRI-*/annotations.xml) is available here")
    return cases


def samples(data_dir: str | os.PathLike | None = None) -> list[Sample]:
    """One sample per LIDC case: label 1 when it has a consensus nodule >= 3 mm (>= 3 readers).

    The XML and the DICOM headers are read when the sample is made (the label needs them); the
    volume only when ``sample.image`` is used.
    """
    out = []
    for case in _cases(data_dir):
        geometry = read_geometry(case / "series")
        found = nodules(read_annotations(case / "annotations.xml", geometry), geometry)
        out.append(Sample(dataset=NAME, id=case.name, patient=case.name, label=int(bool(found)),
                          label_name="nodule" if found else "no nodule", source=str(case / "series"),
                          attributes={"slices": geometry.shape[0]},
                          load_image=partial(_load_volume, case, geometry),
                          load_lesions=lambda found=found: found))
    return out


def describe(data_dir: str | os.PathLike | None = None) -> dict:
    items = samples(data_dir)
    return {"dataset": NAME, "cases": len(items), "with_nodule": sum(s.label for s in items),
            "nodules": sum(len(s.lesions) for s in items)}

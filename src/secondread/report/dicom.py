"""The report as DICOM objects a PACS files and a viewer shows: SR, SEG and a secondary capture.

Why: radiologists read results in their PACS viewer, not in a JSON file. Three objects carry what
``report.json`` says in the form viewers understand, all built with highdicom (never by hand):

``sr.dcm``
    a Comprehensive 3D SR following TID 1500 (Measurement Report): one measurement group per
    finding, its type coded (SNOMED CT where a code exists, see ``codes.json``), the calibrated
    probability (UCUM ``1``), the operating point(s) crossed, the region (a SCOORD on the source
    image for a model finding; a reference to ``seg.dcm`` for a nodule candidate) and each size in
    UCUM (``mm``, ``mm2``, ``mm3``); the algorithm's name and version are in the observation
    context (device observer) and in each group's algorithm identification.
``seg.dcm``
    a binary Segmentation of every mask (the nodule candidates), one segment per lesion type, on
    the source series' frame of reference with one plane position per frame.
``sc.dcm``
    the heatmap overlay (RGB) as a secondary capture, for viewers that show only pixels.

They carry the source's patient and study modules (that is how a PACS files them); nothing of
those modules is copied into ``report.json`` or into an error message.

Coordinates: SCOORD pixel coordinates put ``(0, 0)`` at the top-left corner of the top-left pixel
(PS3.3 C.18.6.1.1), so the report's box ``x_min..x_max`` (pixel indices, end exclusive) is the
polygon through the pixel edges ``x_min`` and ``x_max``, and a pixel's centre is ``index + 0.5``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .. import __version__
from ..errors import SecondreadError

MANUFACTURER = "secondread (open source)"
SERIES_NUMBERS = {"sr.dcm": 9901, "seg.dcm": 9902, "sc.dcm": 9903}
NODULE_ALGORITHM = "secondread lung-nodule candidates (classical image processing)"
WHAT = {
    "sr.dcm": "Comprehensive 3D SR, TID 1500 measurement report: one measurement group per finding",
    "seg.dcm": "Segmentation (binary): the finding masks, one segment per lesion type",
    "sc.dcm": "Secondary capture: the heatmap overlay (RGB)",
}


@lru_cache(maxsize=1)
def _codes() -> dict[str, Any]:
    return json.loads((Path(__file__).with_name("codes.json")).read_text(encoding="utf-8"))


def coded(entry: dict[str, str]):
    """A codes.json entry as a highdicom CodedConcept."""
    import highdicom as hd

    return hd.sr.CodedConcept(value=entry["value"], scheme_designator=entry["scheme"], meaning=entry["meaning"])


def concept(name: str):
    return coded(_codes()["concepts"][name])


def unit(name: str):
    return coded(_codes()["units"][name])


def finding_code(label: str):
    """The coded finding type for a model's label (``codes.json``; DCM 'Finding' when unknown)."""
    entry = _codes()["findings"].get(label)
    return coded(entry) if entry else coded(_codes()["other_finding"])


def finding_site(label: str):
    entry = _codes()["findings"].get(label)
    return coded(_codes()["sites"][entry["site"]]) if entry and entry.get("site") else None


# ----------------------------------------------------------------------------- the inputs
@dataclass
class Sources:
    """The source DICOM headers (no pixel data), in the order of ``Image.pixels``' first axis.

    A series has one header per slice (``headers[k]`` is slice ``k``); a single file has one
    header, whose frames are the slices of a multi-frame volume (``multiframe``).
    """

    headers: list[Dataset]
    multiframe: bool = False

    def ref(self, k: int = 0) -> tuple[str, str, list[int] | None]:
        """(SOP Class UID, SOP Instance UID, frame numbers or None) of slice ``k``."""
        ds = self.headers[0] if self.multiframe else self.headers[k]
        return str(ds.SOPClassUID), str(ds.SOPInstanceUID), [k + 1] if self.multiframe else None

    def header(self, k: int = 0) -> Dataset:
        return self.headers[0] if self.multiframe else self.headers[k]


@dataclass
class Segment:
    """One segment of seg.dcm: every mask of one lesion type, as one boolean array of the image's
    shape. ``label`` is a finding of ``codes.json`` (its coded type); ``family`` names the
    algorithm family (DICOM CID 7162, as in ``pydicom.sr.codedict.codes.cid7162``)."""

    label: str
    mask: np.ndarray
    algorithm: str
    version: str
    family: str = "MorphologicalOperations"


@dataclass
class DicomInputs:
    """What :func:`build_objects` needs beyond the report dict (all in memory)."""

    sources: Sources
    shape: tuple[int, ...]
    model_name: str
    model_version: str
    model_sha256: str
    segments: list[Segment] = field(default_factory=list)   # the masks of seg.dcm, one per lesion type
    overlay: np.ndarray | None = None                        # RGB uint8 of the displayed plane
    overlay_slice: int = 0                                    # which slice the overlay shows (volumes)


# ----------------------------------------------------------------------------- SR
def _device_uid(inputs: DicomInputs) -> str:
    """The same UID for the same software and model, so a PACS can group results by device."""
    return generate_uid(entropy_srcs=["secondread", __version__, inputs.model_sha256])


def observation_context(inputs: DicomInputs):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_device_uid(inputs), name="secondread", manufacturer_name=MANUFACTURER,
        model_name=f"{inputs.model_name} {inputs.model_version}"[:64], serial_number=inputs.model_sha256[:16])
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


def _operating_points(finding: dict[str, Any]) -> list:
    import highdicom as hd

    crossed = [name for name, op in finding.get("operating_points", {}).items() if op.get("crossed")]
    values = [concept(n) if n in _codes()["concepts"] else hd.sr.CodedConcept(n, "99SECONDREAD", n) for n in crossed]
    values = values or [concept("no_operating_point")]
    return [hd.sr.QualitativeEvaluation(name=concept("operating_point"), value=v) for v in values]


def _measurement(name: str, value: float, unit_name: str):
    import highdicom as hd

    return hd.sr.Measurement(name=concept(name), value=float(value), unit=unit(unit_name))


def _model_group(finding: dict[str, Any], inputs: DicomInputs):
    """TID 1410 (planar ROI: the map's hottest region on the source image) or, without a region,
    TID 1501 (measurements referencing the source images)."""
    import highdicom as hd

    algorithm = hd.sr.AlgorithmIdentification(name=inputs.model_name, version=inputs.model_version)
    measurements = [_measurement("probability", finding["probability"], "1")]
    region = finding.get("region")
    sizes = finding.get("measurements") or {}
    if "area_mm2" in sizes:  # of the hottest region (pixel counts have no UCUM unit and stay in report.json)
        measurements.append(_measurement("area", sizes["area_mm2"], "mm2"))
    if "volume_mm3" in sizes:
        measurements.append(_measurement("volume", sizes["volume_mm3"], "mm3"))
    site = finding_site(finding["label"])
    common = dict(tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"{finding['label']} (model finding)"),
                  finding_type=finding_code(finding["label"]), algorithm_id=algorithm,
                  finding_sites=[hd.sr.FindingSite(site)] if site else None,
                  measurements=measurements, qualitative_evaluations=_operating_points(finding))
    if region:
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_region=_image_region(region, inputs), **common)
    sources = [hd.sr.SourceImageForMeasurementGroup(*inputs.sources.ref(k)) for k in _slices(inputs)]
    return hd.sr.MeasurementsAndQualitativeEvaluations(source_images=sources, **common)


def _slices(inputs: DicomInputs) -> range:
    return range(inputs.shape[0]) if len(inputs.shape) == 3 else range(1)


def _image_region(region: dict[str, Any], inputs: DicomInputs):
    """2D: the box as a closed polyline through the pixel edges; volume: the map's peak as a point
    on the slice it lies in."""
    import highdicom as hd

    if len(inputs.shape) == 3:
        k = int(region["peak"]["z"])
        points = np.array([[region["peak"]["x"] + 0.5, region["peak"]["y"] + 0.5]])
        graphic = hd.sr.GraphicTypeValues.POINT
    else:
        k = 0
        x0, y0, x1, y1 = (float(region[key]) for key in ("x_min", "y_min", "x_max", "y_max"))
        points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
        graphic = hd.sr.GraphicTypeValues.POLYLINE  # closed: first point = last (PS3.3 C.18.6.1.2)
    return hd.sr.ImageRegion(graphic_type=graphic, graphic_data=points,
                             source_image=hd.sr.SourceImageForRegion(*inputs.sources.ref(k)))


def _candidate_group(finding: dict[str, Any], inputs: DicomInputs):
    """TID 1410 (planar ROI): a candidate's box on the source image with its score as a ranking
    score (not a probability): a calcification cluster (its speck count, and its diameter when the
    spacing is known) or a detector's lesion candidate (its map value; no diameter, since the map's
    extent is not the lesion's size)."""
    import highdicom as hd

    box = finding["bbox"]
    measurements = [_measurement("ranking_score", finding["score"], "1")]
    if finding.get("diameter_mm") is not None:
        measurements.append(_measurement("diameter", finding["diameter_mm"], "mm"))
    region = {"x_min": box["x0"], "y_min": box["y0"], "x_max": box["x1"], "y_max": box["y1"]}
    site = finding_site(finding["label"])
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"{finding['label']} {finding['rank']}"),
        referenced_region=_image_region(region, inputs), finding_type=finding_code(finding["label"]),
        algorithm_id=hd.sr.AlgorithmIdentification(name=finding["model"], version=inputs.model_version),
        finding_sites=[hd.sr.FindingSite(site)] if site else None, measurements=measurements)


def _nodule_group(finding: dict[str, Any], inputs: DicomInputs, seg: Dataset):
    """TID 1411 (volumetric ROI): the candidate's segment in ``seg.dcm``, restricted to the source
    slices it spans, with its Lung-RADS sizes, volume and ranking score."""
    import highdicom as hd

    s0, s1 = finding["bbox"]["slice_min"], finding["bbox"]["slice_max"]
    sources = [hd.sr.SourceImageForSegmentation(*inputs.sources.ref(k)) for k in range(s0, s1)]
    segment = hd.sr.ReferencedSegment(sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
                                      segment_number=segment_number(inputs, "nodule candidate"), source_images=sources)
    measurements = [_measurement("diameter", finding["diameter_mm"], "mm"),
                    _measurement("long_axis", finding["long_axis_mm"], "mm"),
                    _measurement("short_axis", finding["short_axis_mm"], "mm"),
                    _measurement("volume", finding["volume_mm3"], "mm3"),
                    _measurement("ranking_score", finding["score"], "1")]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"nodule candidate {finding['rank']}"),
        referenced_segment=segment, finding_type=finding_code("nodule candidate"),
        algorithm_id=hd.sr.AlgorithmIdentification(name=NODULE_ALGORITHM, version=__version__),
        finding_sites=[hd.sr.FindingSite(finding_site("nodule candidate"))], measurements=measurements)


def _lesion_group(finding: dict[str, Any], inputs: DicomInputs, seg: Dataset):
    """TID 1411 for a region a segmentation network outlined on a 2D image: its segment in
    ``seg.dcm`` and, where the pixel spacing is known, its area and longest diameter."""
    import highdicom as hd

    sources = [hd.sr.SourceImageForSegmentation(*inputs.sources.ref(0))]
    segment = hd.sr.ReferencedSegment(sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
                                      segment_number=segment_number(inputs, finding["label"]), source_images=sources)
    measurements = []
    if finding.get("area_mm2") is not None:
        measurements.append(_measurement("area", finding["area_mm2"], "mm2"))
    if finding.get("longest_diameter_mm") is not None:
        measurements.append(_measurement("diameter", finding["longest_diameter_mm"], "mm"))
    site = finding_site(finding["label"])
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"{finding['label']} region {finding['rank']}"),
        referenced_segment=segment, finding_type=finding_code(finding["label"]),
        algorithm_id=hd.sr.AlgorithmIdentification(name=finding["model"], version=inputs.model_version),
        finding_sites=[hd.sr.FindingSite(site)] if site else None, measurements=measurements or None)


def build_sr(report: dict[str, Any], inputs: DicomInputs, seg: Dataset | None):
    """The TID 1500 measurement report of ``report["findings"]``."""
    import highdicom as hd

    groups = []
    for finding in report["findings"]:
        if finding.get("kind") == "nodule candidate":
            if seg is not None and segment_number(inputs, "nodule candidate"):
                groups.append(_nodule_group(finding, inputs, seg))
        elif finding.get("kind") == "segmented lesion":
            if seg is not None and segment_number(inputs, finding["label"]) and len(inputs.shape) == 2:
                groups.append(_lesion_group(finding, inputs, seg))
        elif finding.get("kind") in ("calcification cluster candidate", "lesion candidate"):
            groups.append(_candidate_group(finding, inputs))
        else:
            groups.append(_model_group(finding, inputs))
    content = hd.sr.MeasurementReport(observation_context=observation_context(inputs),
                                      procedure_reported=concept("procedure"), imaging_measurements=groups)
    evidence = [inputs.sources.header(k) for k in _slices(inputs)] if not inputs.sources.multiframe \
        else [inputs.sources.headers[0]]
    if seg is not None:
        evidence.append(seg)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=content[0], series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBERS["sr.dcm"], sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description="secondread findings (decision support, not a diagnosis)")
    sr.CodingSchemeIdentificationSequence = [_local_scheme()]
    return sr


def _local_scheme() -> Dataset:
    """SOP Common: the project's local coding scheme (``99SECONDREAD``) named, so that a reader
    of the SR knows whose codes those are (PS3.3 C.12.1.1.4)."""
    item = Dataset()
    item.CodingSchemeDesignator = "99SECONDREAD"
    item.CodingSchemeName = "secondread local concepts (see secondread/report/codes.json)"
    item.CodingSchemeResponsibleOrganization = "secondread project"
    return item


# ----------------------------------------------------------------------------- SEG
def nodule_label_volume(masks: Sequence[Any], shape: tuple[int, ...]) -> np.ndarray:
    """All candidates in one boolean volume of the image's shape (one segment: one lesion type)."""
    volume = np.zeros(shape, dtype=bool)
    for mask in masks:
        mask.paste(volume)
    return volume


def segment_number(inputs: DicomInputs, label: str) -> int | None:
    """The number (1..) of the segment of lesion type ``label`` in seg.dcm, None when absent."""
    labels = [segment.label for segment in inputs.segments]
    return labels.index(label) + 1 if label in labels else None


def _description(number: int, segment: Segment):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    site = finding_site(segment.label)
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=segment.label,
        segmented_property_category=concept("segment_category"), segmented_property_type=finding_code(segment.label),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=segment.algorithm, family=getattr(codes.cid7162, segment.family), version=segment.version),
        anatomic_regions=[site] if site else None, tracking_id=f"{segment.label} (all)", tracking_uid=generate_uid())


def build_seg(inputs: DicomInputs):
    """The binary SEG of every mask on the source images, one segment per lesion type.

    For a series, frame ``k`` of the masks is the source slice ``k`` (highdicom takes each frame's
    plane position and frame of reference from it); empty frames are left out.
    """
    import highdicom as hd

    stack = np.stack([np.asarray(segment.mask, dtype=bool) for segment in inputs.segments], axis=-1)
    if stack.ndim == 3:  # 2D masks of a single-frame image: one frame
        stack = stack[None]
    headers = [inputs.sources.headers[0]] if inputs.sources.multiframe or len(inputs.shape) == 2 else \
        [inputs.sources.header(k) for k in range(inputs.shape[0])]
    return hd.seg.Segmentation(
        source_images=headers, pixel_array=stack.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_description(k, seg) for k, seg in enumerate(inputs.segments, start=1)],
        series_instance_uid=generate_uid(), series_number=SERIES_NUMBERS["seg.dcm"],
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name="secondread", software_versions=__version__,
        device_serial_number=inputs.model_sha256[:16] or "none",
        series_description="secondread masks (decision support, not a diagnosis)",
        content_label="SECONDREAD", content_description=", ".join(seg.label for seg in inputs.segments)[:64],
        omit_empty_frames=True)


# ----------------------------------------------------------------------------- SC
_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # +x, +y, +z of DICOM LPS and their opposites


def _direction_letter(cosines: Sequence[float]) -> str:
    """The patient direction a unit vector mostly points to (PS3.3 C.7.6.1.1.1)."""
    axis = int(np.argmax(np.abs(cosines)))
    return _LETTERS[axis][0 if cosines[axis] > 0 else 1]


def patient_orientation(ds: Dataset) -> tuple[str, str] | None:
    """Patient Orientation of the source image: its own, or derived from Image Orientation (Patient)."""
    own = ds.get("PatientOrientation")
    if own and len(own) == 2 and all(str(v) for v in own):
        return str(own[0])[:1], str(own[1])[:1]
    iop = ds.get("ImageOrientationPatient")
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):  # multi-frame IODs
        if iop is None:
            try:
                iop = ds.get(groups)[0].PlaneOrientationSequence[0].ImageOrientationPatient
            except (AttributeError, IndexError, KeyError, TypeError):
                continue
    if iop is None:
        return None
    values = [float(v) for v in iop]
    return _direction_letter(values[:3]), _direction_letter(values[3:])


def build_sc(inputs: DicomInputs):
    """The overlay PNG's pixels as an RGB secondary capture of the same patient and study."""
    import highdicom as hd

    ref = inputs.sources.header(inputs.overlay_slice)
    orientation = patient_orientation(ref)
    if orientation is None:
        return None
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref, pixel_array=np.ascontiguousarray(inputs.overlay, dtype=np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB, bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT, series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBERS["sc.dcm"], sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, patient_orientation=orientation, transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description="secondread heatmap overlay (decision support, not a diagnosis)")
    # General Series: Laterality is Type 2C (paired body parts); the source's value, else empty
    sc.Laterality = ref.get("Laterality", "") or ""
    source = Dataset()  # General Image: which image the overlay was drawn on
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID, frames = inputs.sources.ref(inputs.overlay_slice)
    if frames:
        source.ReferencedFrameNumber = frames[0]
    sc.SourceImageSequence = [source]
    sc.DerivationDescription = "heatmap overlay drawn by secondread on this image (decision support, not a diagnosis)"
    return sc


# ----------------------------------------------------------------------------- all of them
def build_objects(report: dict[str, Any], inputs: DicomInputs, source: str | None = None) -> tuple[dict[str, Dataset], dict[str, Any]]:
    """The DICOM objects of one report and the ``report["dicom"]`` entry that lists them.

    Returns ``({file name: data set}, entry)``. Any failure of highdicom (a source header it cannot
    use, a value out of range) is one :class:`SecondreadError` naming ``source``; its message holds
    the exception's type only, since highdicom's messages may quote header values.
    """
    try:
        with warnings.catch_warnings():  # highdicom's warnings quote header values (the patient's name)
            warnings.simplefilter("ignore")
            objects, notes = _build_all(report, inputs)
        for ds in objects.values():
            copy_deidentification(ds, inputs.sources.header(0))
    except SecondreadError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback or a header value
        raise SecondreadError(source, f"cannot build the DICOM outputs ({type(exc).__name__})") from None
    order = [name for name in ("sr.dcm", "seg.dcm", "sc.dcm") if name in objects]
    entry = {"files": [{"file": name, "what": WHAT[name], "sop_class": objects[name].SOPClassUID.name,
                        "sop_instance_uid": str(objects[name].SOPInstanceUID)} for name in order],
             "note": "the .dcm files carry the source study's patient module so that a PACS can file them"}
    if notes:
        entry["skipped"] = notes
    return {name: objects[name] for name in order}, entry


def _build_all(report: dict[str, Any], inputs: DicomInputs) -> tuple[dict[str, Dataset], list[str]]:
    objects: dict[str, Dataset] = {}
    notes: list[str] = []
    seg = build_seg(inputs) if inputs.segments else None
    if seg is not None:
        objects["seg.dcm"] = seg
    objects["sr.dcm"] = build_sr(report, inputs, seg)
    if inputs.overlay is not None:
        sc = build_sc(inputs)
        if sc is not None:
            objects["sc.dcm"] = sc
        else:
            notes.append("no secondary capture: the source image has no patient orientation")
    return objects, notes


DEIDENTIFIED_UNSTATED = "method not stated by the source (received de-identified)"  # LO: 64 characters


def copy_deidentification(ds: Dataset, source: Dataset) -> None:
    """Patient module: a de-identified source stays marked so, with its method (Type 1C when
    Patient Identity Removed is YES, PS3.3 C.7.1.1); a source that omits the method gets a
    statement that it was not given, rather than a false one."""
    if str(source.get("PatientIdentityRemoved", "")).upper() != "YES" and \
            str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
        return
    ds.PatientIdentityRemoved = "YES"
    if "DeidentificationMethod" in source or "DeidentificationMethodCodeSequence" in source:
        for keyword in ("DeidentificationMethod", "DeidentificationMethodCodeSequence"):
            if keyword in source:
                setattr(ds, keyword, source[keyword].value)
    elif "DeidentificationMethod" not in ds and "DeidentificationMethodCodeSequence" not in ds:
        ds.DeidentificationMethod = DEIDENTIFIED_UNSTATED


def save(ds: Dataset, path: Path) -> None:
    """Write one object as a DICOM file (preamble, file meta); pydicom's warnings about values
    (which may quote the copied patient module) are not shown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)

"""One study, end to end: load -> check -> detect -> localise -> read the record -> suggest -> report.

Why: the command line, the demo, the service, the PACS client and the batch runner all analyse a
study the same way; this module is that one way, so the faces stay thin.

Two steps, so that a face can read a study once and analyse it as it needs:

- :func:`load_study` reads a file or a DICOM series folder into a :class:`LoadedStudy` (the
  :class:`~secondread.image.Image`, plus the source DICOM headers the DICOM outputs reference);
- :func:`analyze_loaded` runs the model (chosen automatically when none is given), the lung-nodule
  search on CT volumes, and writes the report folder: ``report.json`` (the contract),
  ``report.html``, pictures and, for DICOM input, ``sr.dcm``/``seg.dcm``/``sc.dcm``
  (:func:`dicom_files` lists them in the order a PACS should store them).

:func:`analyze_image` is both in one call.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from .errors import SecondreadError
from .explain import display_uint8, gradcam, hottest_region, overlay
from .finding import Finding
from .image import Image
from .io import load_image
from .records.llm import summarise
from .report import build_report, write_report
from .suggest import suggest

if TYPE_CHECKING:
    from .report.dicom import Sources

def domain_caveats(image: Image, bundle) -> list[str]:
    """Reasons this image differs from what the model was trained on, stated in the report.

    A modality outside the bundle's ``modalities`` (``OT``: a plain picture, whose modality is
    unknown, is always allowed) is a caveat, not a refusal: the reader decides.
    """
    caveats = []
    expected = bundle.config.get("modalities") or []
    if expected and image.modality.upper() not in expected + ["OT", ""]:
        named = [m for m in expected if m != "OT"] or expected
        caveats.append(f"the model was trained on {'/'.join(named)} images; "
                       f"this image's modality is {image.modality}")
    if bundle.config.get("input_kind") == "binary mask":
        from .models.choose import is_binary_mask

        if not is_binary_mask(image.pixels):
            caveats.append("the model reads a binary segmentation mask, and this image is not one: its "
                           "probability does not describe this image")
    trained = tuple(bundle.config.get("input_shape", ()))
    if trained and min(image.shape) > 4 * max(trained):
        caveats.append(f"the image ({' × '.join(map(str, image.shape))}) was reduced to the model's "
                       f"{' × '.join(map(str, trained))}; fine detail is not seen")
    return caveats


def detect(image: Image, bundle, explain_with: str | None = None) -> tuple[Finding, np.ndarray | None]:
    """Run the bundle on one 2D image; for a finding that crosses any operating point, add Grad-CAM."""
    dims = len(bundle.config.get("input_shape", (0, 0)))
    if image.pixels.ndim != dims:
        kind = "volumes" if dims == 3 else "2D images"
        raise SecondreadError(image.source, f"model '{bundle.name}' reads {kind}; this input has shape {image.shape}")
    batch = None
    if dims == 3:  # preprocessing a CT volume takes seconds: prepared once, for the model and Grad-CAM
        from .models.bundle import calibrated

        batch = bundle.prepare(image.pixels)[None]
        prob = float(calibrated(bundle.logits(batch), bundle.temperature)[0])
    else:
        prob = float(bundle.predict_proba([image.pixels])[0])
    points = {name: {"threshold": float(op["threshold"]), "crossed": prob >= float(op["threshold"])}
              for name, op in bundle.operating_points.items()}
    finding = Finding(label=bundle.finding, probability=prob, operating_points=points,
                      positive=prob >= float(bundle.threshold))
    if not any(op["crossed"] for op in points.values()):
        return finding, None
    if batch is None:
        batch = bundle.prepare(image.pixels)[None]
    explain_with = explain_with or bundle.explain_method  # the CAM method; the layer is the bundle's
    heat = gradcam(bundle.model, bundle.explain_layer, batch, image.shape, method=explain_with)
    finding.region = hottest_region(heat, image.spacing)
    if finding.region:
        finding.region["source"] = explain_with
    if finding.region:
        finding.measurements = {k: finding.region[k] for k in ("area_px", "area_mm2", "volume_mm3")
                                if k in finding.region}
    return finding, heat


def _display_plane(pixels: np.ndarray, region: dict | None) -> tuple:
    """Index of what the report shows: the image itself, or for a volume the slice through the
    map's peak (the middle slice when there is no map)."""
    if pixels.ndim == 2:
        return (slice(None), slice(None))
    z = region["peak"]["z"] if region else pixels.shape[0] // 2
    return (z, slice(None), slice(None))


def model_info(bundle) -> dict[str, Any]:
    """What the report says about the model that spoke: enough to reproduce and to judge it."""
    cfg = bundle.config
    training = cfg.get("training", {})
    return {"name": bundle.name, "version": bundle.version, "sha256": bundle.sha256,
            "architecture": cfg.get("architecture"), "data": training.get("dataset", cfg.get("data_source")),
            "validation": bundle.metrics, "operating_points": bundle.operating_points,
            "threshold": bundle.threshold, "temperature": bundle.temperature}


def image_info(image: Image) -> dict[str, Any]:
    """Technical description of the input, with its file name only (no folders, no identifiers)."""
    return {"name": Path(image.source).name, "modality": image.modality, "shape": list(image.shape),
            "spacing": list(image.spacing) if image.spacing else None, "picture": "image.png"}


NODULES_REPORTED = 10
"""Nodule candidates a report lists (best first); the nodule command gives more for FROC work."""
SCORE_MEANING = ("ranking score (roundness x min(1, diameter / 6 mm)): it orders candidates and is NOT a "
                 "calibrated probability of a nodule")


@dataclass
class LoadedStudy:
    """A study read once: the :class:`Image` every stage uses and, when it came as DICOM, the
    source headers (pixel data dropped) that the DICOM outputs reference and copy the patient and
    study modules from. The headers hold identifiers: they go into the ``.dcm`` outputs only,
    never into report.json, logs or errors.
    """

    image: Image
    sources: "Sources | None" = None
    dicom_note: str | None = None

    @property
    def is_dicom(self) -> bool:
        return self.sources is not None


def _read_header(path: Path) -> Dataset | None:
    """The header of one DICOM file without its pixel data (files without a preamble too)."""
    for force in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=force)
        except Exception:  # noqa: BLE001 - not DICOM, or unreadable: the caller decides
            continue
        if "SOPInstanceUID" in ds and "SOPClassUID" in ds:
            return ds
    return None


REFERENCE_KEYS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
"""What a DICOM output needs of each source header to reference it and be filed with it."""


def _referable(study: LoadedStudy) -> LoadedStudy:
    """No DICOM outputs (and the reason, for the report) when a source lacks the UIDs to reference."""
    if study.sources is None:
        return study
    missing = sorted({k for ds in study.sources.headers for k in REFERENCE_KEYS if not ds.get(k)})
    if missing:
        return LoadedStudy(study.image, None, f"no DICOM outputs: the source has no {', '.join(missing)}")
    return study


def _series_headers(folder: Path, image: Image, series_uid: str | None = None) -> list[Dataset]:
    """The slice headers of a series folder in the order of ``image.pixels`` (each file's Image
    Position (Patient) mapped through the inverse of the volume's affine to its slice index)."""
    if "affine" not in image.metadata:
        raise SecondreadError(folder, "the series has no geometry, so its files cannot be matched to the slices")
    inverse = np.linalg.inv(np.asarray(image.metadata["affine"], dtype=float))
    found: list[Dataset | None] = [None] * image.shape[0]
    for path in sorted(folder.iterdir()):
        ds = _read_header(path) if path.is_file() else None
        if ds is None or "ImagePositionPatient" not in ds:
            continue
        if series_uid is not None and str(ds.get("SeriesInstanceUID", "")) != series_uid:
            continue
        index = inverse @ np.append(np.asarray(ds.ImagePositionPatient, dtype=float), 1.0)
        k = int(round(index[0]))
        if np.abs(index[:3] - [k, 0, 0]).max() < 0.01 and 0 <= k < len(found) and found[k] is None:
            found[k] = ds
    if any(ds is None for ds in found):
        raise SecondreadError(folder, f"{sum(ds is None for ds in found)} slice(s) of the volume could not be "
                                      f"matched to their files for the DICOM outputs")
    return found  # type: ignore[return-value]


def _read_volume(folder: Path, series_uid: str | None) -> Image:
    if series_uid is None:
        return load_image(folder)
    from .io.series import read_series

    try:
        return read_series(folder, series_uid=series_uid)
    except SecondreadError:
        raise
    except Exception as exc:  # no traceback may reach a user
        raise SecondreadError(folder, f"cannot read the image ({type(exc).__name__})") from None


def _single_slice(image: Image) -> Image:
    """The one slice of a one-slice volume as a 2D image (its 3D affine dropped with the axis)."""
    metadata = {k: v for k, v in image.metadata.items() if k != "affine"}
    return Image(image.pixels[0], modality=image.modality, spacing=image.spacing[1:] if image.spacing else None,
                 source=image.source, orientation=image.orientation, metadata=metadata)


def load_study(path: str | os.PathLike, series_uid: str | None = None) -> LoadedStudy:
    """Read a study (any file :func:`secondread.io.load_image` reads, or a DICOM series folder).

    ``series_uid`` picks one series of a folder that holds several (as
    :func:`secondread.io.series.read_series`). For DICOM input, ``sources`` holds the headers in
    slice order; it is None for other formats, and for a DICOM file without the UIDs that a
    reference needs (``dicom_note`` says so, and the report repeats it).
    """
    from .io import is_dicom
    from .report.dicom import Sources

    p = Path(path)
    image = _read_volume(p, series_uid) if p.is_dir() else load_image(path)
    if p.is_dir():
        if image.pixels.ndim == 3 and "affine" in image.metadata:
            headers = _series_headers(p, image, series_uid)
            if image.shape[0] == 1:  # a series of one slice is a 2D image, read by the 2D models
                return _referable(LoadedStudy(_single_slice(image), Sources(headers)))
            return _referable(LoadedStudy(image, Sources(headers)))
        files = [f for f in sorted(p.iterdir()) if f.is_file()]  # a folder holding one multi-frame file
        headers = [h for h in map(_read_header, files) if h is not None]
        if len(headers) != 1:
            return LoadedStudy(image, None, "no DICOM outputs: the folder's files could not be matched to the image")
        return _referable(LoadedStudy(image, Sources(headers, multiframe=True)))
    if not is_dicom(p):
        return LoadedStudy(image)
    header = _read_header(p)
    if header is None:
        return LoadedStudy(image, None, "no DICOM outputs: the file's header has no SOP Class/Instance UID")
    return _referable(LoadedStudy(image, Sources([header], multiframe=image.pixels.ndim == 3)))


_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _model_lock(bundle) -> threading.Lock:
    """One lock per loaded model: Grad-CAM (MONAI) puts hooks on the model's layers, so two
    threads explaining with the same model at once (the service) could read each other's
    activations. Inference and explanation of one model are serialised; different models are not."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(id(getattr(bundle, "model", bundle)), threading.Lock())


@lru_cache(maxsize=8)
def _shipped_bundle(name: str):
    from .models.bundle import load_bundle

    return load_bundle(name)


def lung_nodules(image: Image) -> tuple[list, str | None]:
    """Nodule candidates with their masks for a CT volume in HU with spacing, else ``([], reason)``.

    A volume that is not a chest CT (no aerated lung) gives no candidates and the reason, never a
    failed analysis: the model's finding still stands.
    """
    from .nodules import find_nodule_masks

    if image.pixels.ndim != 3 or image.modality != "CT" or image.metadata.get("units") != "HU" or not image.spacing:
        return [], None
    try:
        return find_nodule_masks(image, max_candidates=NODULES_REPORTED), None
    except SecondreadError as exc:
        return [], exc.problem


SEGMENTERS = {"brain tumour": "brain-mri-seg"}
"""Classifier finding -> the shipped segmentation bundle that outlines it (2D images)."""


@lru_cache(maxsize=4)
def _seg_bundle(name: str):
    from .segment import load_seg_bundle

    return load_seg_bundle(name)


def segmented_lesions(image: Image, bundle) -> tuple[list[dict[str, Any]], np.ndarray | None, Any]:
    """The lesions the finding's segmentation bundle outlines on a 2D image: report findings of
    kind ``"segmented lesion"`` (area, longest diameter, centroid, box), their mask and the bundle;
    ``([], None, None)`` where no segmentation bundle reads this finding. Run, like Grad-CAM, only
    for a finding that crosses an operating point: outlines beside a negative finding would say two
    things at once."""
    name = SEGMENTERS.get(bundle.finding)
    if name is None or image.pixels.ndim != 2:
        return [], None, None
    from .segment import segment_image

    seg = _seg_bundle(name)
    mask, regions = segment_image(image, seg)
    findings = [{"kind": "segmented lesion", "label": bundle.finding, "model": name, **region,
                 "score_meaning": "mean probability of the segmentation network inside the region (not calibrated)"}
                for region in regions]
    return findings, (mask if regions else None), seg


def calcification_findings(image: Image, bundle) -> list[dict[str, Any]]:
    """The best calcification-cluster candidate of a 2D image read by a bundle whose candidates
    include one (``calcifications`` in its bundle.json: ``mammo-abnormal``), as a report finding
    (:func:`secondread.calcifications.as_finding`); [] for any other bundle. Run only beside a
    finding that crosses an operating point, like the outlines."""
    setting = bundle.config.get("calcifications")
    if not setting or image.pixels.ndim != 2:
        return []
    from .calcifications import as_finding, rule_clusters

    try:
        return [as_finding(c, image) for c in rule_clusters(image, setting)]
    except SecondreadError:  # too small or flat to hold a breast: the search has nothing to say
        return []


LESION_CANDIDATE = "lesion candidate"
"""The report's kind of a lesion detector's candidate: a place for a reader to look, not a finding."""
TOP_CANDIDATES = 3
"""How many candidates a report lists: the top 3, whose hit rate is measured (issue 5's target)."""


def lesion_candidate_findings(image: Image, bundle, heat: np.ndarray | None, clusters: int) -> list[dict[str, Any]]:
    """The lesion detector's own candidates (``mammo-abnormal``: the peaks of its map) that make the
    list whose top-3 hit rate is measured, as report findings; [] for a bundle without its own map.

    That list is what ``secondread localise`` writes: the map's peaks with the bundle's candidate
    rules, the best calcification cluster at its rank. The cluster is reported by
    :func:`calcification_findings` (``clusters`` of them), so this gives the peaks beside it: ranks
    1-2 when a cluster holds rank 3, else 1-3."""
    from .explain import OWN_MAP

    if bundle.explain_method != OWN_MAP or heat is None or image.pixels.ndim != 2:
        return []
    from .localise import circle_fields
    from .mammo import candidate_rules, candidates

    rules = candidate_rules(bundle.config)
    at = int(rules.pop("calcifications", {}).get("rank", TOP_CANDIDATES + 1))
    keep = TOP_CANDIDATES - (1 if clusters and at <= TOP_CANDIDATES else 0)
    try:
        regions = candidates(heat, image, keep, rules=rules)
    except SecondreadError:  # a rule that reads the breast found none: the peaks alone
        regions = candidates(heat, image, keep)
    findings = []
    for region in regions:
        fields = circle_fields(region, image)
        fields["map_extent_mm"] = fields.pop("diameter_mm")  # a diameter would read as the lesion's size
        findings.append({"kind": LESION_CANDIDATE, "label": LESION_CANDIDATE, "model": bundle.name, **fields,
                         "score_meaning": "the detector's lesion probability at the peak of its map (per map cell, "
                                          "not calibrated): it ranks the candidates",
                         "extent_meaning": "the map's region above half the peak's height, as a circle: where to "
                                           "look, not the lesion's size"})
    return findings


def nodule_finding(candidate, image: Image) -> dict[str, Any]:
    """One nodule candidate as a report finding (sizes as Lung-RADS v2022 measures them)."""
    c = candidate.as_dict()
    world = "DICOM patient (LPS) mm" if image.metadata.get("world") == "LPS" else "image mm"
    return {"kind": "nodule candidate", "label": "nodule candidate", "rank": c["rank"], "score": c["score"],
            "score_meaning": SCORE_MEANING,
            "center_voxel": dict(zip(("slice", "row", "col"), c["center_voxel"])),
            "center_mm": c["center_mm"], "coordinates": world,
            "diameter_mm": c["diameter_mm"],
            "diameter": "Lung-RADS v2022 mean diameter: (long + short axis) / 2 on the axial slice of largest area",
            "long_axis_mm": c["long_axis_mm"], "short_axis_mm": c["short_axis_mm"], "volume_mm3": c["volume_mm3"],
            "bbox": dict(zip(("slice_min", "row_min", "col_min", "slice_max", "row_max", "col_max"), c["bbox"])),
            "axial_slice": c["axial_slice"]}


NODULE_MODEL = {"name": "lung-nodule-candidates", "architecture": "classical image processing: HU lung mask, "
                "candidate blobs, roundness x size score (secondread.nodules)",
                "data": "no training; checked on one annotated scan of the public LIDC-IDRI collection", "validation": None,
                "operating_points": {}, "threshold": None, "temperature": None}
"""What the report says about the 'model' of a CT volume analysed without a classifier."""


def _model_identity(bundle) -> tuple[str, str, str]:
    """Name, version and SHA-256 of what spoke: a bundle, or the classical nodule search (None)."""
    from . import __version__

    if bundle is None:
        digest = hashlib.sha256(f"{NODULE_MODEL['name']} {__version__}".encode()).hexdigest()
        return NODULE_MODEL["name"], __version__, digest
    return bundle.name, str(bundle.version), bundle.sha256


def _dicom_inputs(study: LoadedStudy, bundle, masks: list, overlay_rgb, region, lesion_mask=None, seg=None) -> Any:
    from . import __version__
    from .report.dicom import NODULE_ALGORITHM, DicomInputs, Segment, nodule_label_volume

    segments = [Segment("nodule candidate", nodule_label_volume(masks, study.image.shape), NODULE_ALGORITHM,
                        __version__)] if masks else []
    if lesion_mask is not None:
        segments.append(Segment(bundle.finding, lesion_mask, seg.name, str(seg.config.get("version")), "ArtificialIntelligence"))
    plane = region["peak"]["z"] if region and study.image.pixels.ndim == 3 else study.image.shape[0] // 2
    name, version, sha256 = _model_identity(bundle)
    return DicomInputs(sources=study.sources, shape=study.image.shape, model_name=name,
                       model_version=version, model_sha256=sha256, segments=segments,
                       overlay=overlay_rgb, overlay_slice=int(plane) if study.image.pixels.ndim == 3 else 0)


def _dicom_objects(study: LoadedStudy, report: dict[str, Any], inputs) -> dict[str, Any]:
    """The SR/SEG/SC datasets of a DICOM study (``inputs()`` builds what they need, only then), with
    ``report["dicom"]`` listing them, or saying why a DICOM input gets none; {} otherwise."""
    if study.is_dicom:
        from .report.dicom import build_objects

        datasets, report["dicom"] = build_objects(report, inputs(), source=Path(study.image.source).name)
        return datasets
    if study.dicom_note:
        report["dicom"] = {"files": [], "skipped": [study.dicom_note]}
    return {}


def study_date(study: LoadedStudy) -> dt.date | None:
    """The date the images were taken (Study, Series, Acquisition or Content Date of the first
    source header): the date a FHIR record's ages refer to. Never written to the report."""
    if not study.is_dicom:
        return None
    header = study.sources.headers[0]
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        value = str(header.get(keyword) or "").strip()
        try:
            return dt.datetime.strptime(value[:8], "%Y%m%d").date()
        except ValueError:
            continue
    return None


def read_record(record, finding_label: str, study: LoadedStudy) -> dict[str, Any] | None:
    """A record given as a :class:`~secondread.records.merge.RecordSource` is read now, with the
    rules of the finding's body area and ages on the study date; a dict is used as it is."""
    from .records.merge import RecordSource
    from .suggest import record_area

    if isinstance(record, RecordSource):
        return record.load(area=record_area(finding_label), reference_date=study_date(study)) if record else None
    return record


def _union(found: list, shape: tuple[int, ...]) -> np.ndarray | None:
    """Every candidate's mask in one boolean volume (None without candidates)."""
    if not found:
        return None
    out = np.zeros(shape, dtype=bool)
    for _, mask in found:
        mask.paste(out)
    return out


def _nodules_only(study: LoadedStudy, choice, found: list, skipped: str | None, record, llm) -> tuple[dict, dict, dict]:
    """Report, pictures and DICOM datasets of a CT volume that no classifier reads: its findings
    are the lung-nodule candidates, its suggestion :func:`suggest.suggest_nodules`."""
    from .suggest import suggest_nodules

    image = study.image
    if skipped is not None or not (image.pixels.ndim == 3 and image.modality == "CT"):
        raise SecondreadError(image.source, choice.reason + (f"; the lung-nodule search did not run: {skipped}"
                                                             if skipped else ""))
    record = read_record(record, "lung nodule", study)
    findings = [nodule_finding(c, image) for c, _ in found]
    suggestion = suggest_nodules(findings, record["facts"] if record else None)
    summary_findings = [{"label": "lung nodule candidates of at least 6 mm", "positive": suggestion["suggested"],
                         "count": len(findings)}]
    suggestion["summary"] = summarise(record, summary_findings, llm).to_dict()
    z = findings[0]["axial_slice"] if findings else image.shape[0] // 2
    pictures = {"image.png": display_uint8(image.pixels[z])}
    _, version, sha256 = _model_identity(None)
    model = {**NODULE_MODEL, "version": version, "sha256": sha256, "chosen": choice.to_dict()}
    report = build_report(image_info={**image_info(image), "picture_slice": int(z)}, findings=findings,
                          record=record, suggestion=suggestion, model=model)
    datasets = _dicom_objects(study, report, lambda: _dicom_inputs(study, None, [m for _, m in found], None, None))
    return report, pictures, datasets


@dataclass
class Analysis:
    """What one analysis produced, before anything is written: the report dict, its pictures
    (name -> array) and DICOM objects (name -> pydicom Dataset). ``finding`` is the classifier's
    Finding, None when the nodule search alone read the study."""

    report: dict[str, Any]
    pictures: dict[str, np.ndarray]
    datasets: dict[str, Any]
    finding: Finding | None = None
    masks: np.ndarray | None = None   # boolean, the image's shape: every nodule candidate's voxels (for viewers)


def compose(study: LoadedStudy | Image, bundle=None, record=None, llm=None, explain_with: str | None = None,
            choice=None) -> Analysis:
    """Analyse a study already read (:func:`load_study`); write nothing.

    ``bundle`` None chooses the shipped model from the image (:func:`models.choose.choose_bundle`),
    and the report says so and why (``model.chosen``); a CT volume, which no shipped classifier
    reads, is then analysed by the lung-nodule search alone (:func:`_nodules_only`). A CT volume in
    HU always gets lung-nodule candidates (findings of kind ``"nodule candidate"``). DICOM input
    also gets ``sr.dcm``, ``seg.dcm`` (when there are masks) and ``sc.dcm`` (when there is an
    overlay), listed in ``report["dicom"]["files"]``.

    ``choice``: a :class:`~secondread.models.choose.Choice` the caller already made for this image
    (the batch's skip check, the service's bundle pool), so the choice is not made twice; with a
    ``bundle`` it is only reported (``model.chosen``).

    Why separate from writing: the batch runner writes into its own staging folders (and Ray
    workers return bytes), while :func:`analyze_loaded` writes one report folder atomically.
    """
    if isinstance(study, Image):
        study = LoadedStudy(study)
    image = study.image
    image.check_usable()
    if bundle is None:
        if choice is None:
            from .models.choose import choose_bundle

            choice = choose_bundle(image)
        if choice.name is None:
            found, skipped = lung_nodules(image)
            return Analysis(*_nodules_only(study, choice, found, skipped, record, llm), None, _union(found, image.shape))
        bundle = _shipped_bundle(choice.name)
    record = read_record(record, bundle.finding, study)
    with _model_lock(bundle):
        finding, heat = detect(image, bundle, explain_with)
    plane = _display_plane(image.pixels, finding.region)
    pictures = {"image.png": display_uint8(image.pixels[plane])}
    if heat is not None:
        finding.heatmap, finding.overlay = "heatmap.png", "overlay.png"
        pictures["heatmap.png"] = np.round(heat[plane] * 255).astype(np.uint8)
        pictures["overlay.png"] = overlay(image.pixels[plane], heat[plane], finding.region)
    found, skipped = lung_nodules(image)
    crossed = any(op["crossed"] for op in finding.operating_points.values())
    lesions, lesion_mask, seg = segmented_lesions(image, bundle) if crossed else ([], None, None)
    clusters = calcification_findings(image, bundle) if crossed else []
    own_map = heat if (explain_with or bundle.explain_method) == bundle.explain_method else None
    lesions += (lesion_candidate_findings(image, bundle, own_map, len(clusters)) if crossed else []) + clusters
    facts = record["facts"] if record else None
    suggestion = suggest(finding, facts, float(bundle.threshold), bundle.metrics, domain_caveats(image, bundle))
    suggestion["summary"] = summarise(record, [finding.to_dict()], llm).to_dict()
    findings = [finding.to_dict()] + [nodule_finding(c, image) for c, _ in found] + lesions
    report = build_report(image_info=image_info(image), findings=findings, record=record,
                          suggestion=suggestion, model=model_info(bundle))
    if choice is not None:
        report["model"]["chosen"] = choice.to_dict()
    if skipped:
        report["nodules"] = {"skipped": skipped}
    datasets = _dicom_objects(study, report, lambda: _dicom_inputs(
        study, bundle, [m for _, m in found], pictures.get("overlay.png"), finding.region, lesion_mask, seg))
    masks = _union(found, image.shape)
    if lesion_mask is not None:
        masks = lesion_mask if masks is None else masks | lesion_mask
    return Analysis(report, pictures, datasets, finding, masks)


def analyze_loaded(study: LoadedStudy | Image, out_dir: str | os.PathLike, bundle=None,
                   record: dict[str, Any] | None = None, llm=None, explain_with: str | None = None) -> dict[str, Any]:
    """Analyse a study already read (:func:`load_study`, see :func:`compose`) and write its report
    folder; the DICOM objects are written in the same atomic step as report.json. Returns the report."""
    result = compose(study, bundle, record, llm, explain_with)
    write_report(result.report, out_dir, result.pictures, result.datasets)
    return result.report


def analyze_image(path: str | os.PathLike, out_dir: str | os.PathLike, bundle=None,
                  record: dict[str, Any] | None = None, llm=None, explain_with: str | None = None) -> dict[str, Any]:
    """Analyse one image file or DICOM series folder and write its report folder; return the report dict.

    ``bundle`` is a loaded bundle, or None to choose one from the image (see :func:`analyze_loaded`).
    ``record`` is the patient's record (``records.merge.load_record``: note and/or FHIR facts,
    demographics, contradictions), a ``records.merge.RecordSource`` to read it with the chosen
    model's body area and the study date, or None. ``llm`` is an optional ``records.llm.LLMConfig``: the
    summary then comes from the language model if its words pass the guardrail, else from the
    deterministic template (the report says which).
    """
    return analyze_loaded(load_study(path), out_dir, bundle, record, llm=llm, explain_with=explain_with)


def dicom_files(report: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """The DICOM objects an analysis wrote (``sr.dcm``, ``seg.dcm``, ``sc.dcm``), as paths in
    ``out_dir``, in the order a PACS should store them (the SR references the SEG); [] for
    non-DICOM input."""
    files = [f["file"] for f in (report.get("dicom") or {}).get("files", [])]
    order = {"seg.dcm": 0, "sr.dcm": 1, "sc.dcm": 2}
    return [Path(out_dir) / name for name in sorted(files, key=lambda n: order.get(n, 9))]

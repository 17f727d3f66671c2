"""One PACS study end to end: fetch it, pick what to analyse, analyse it, store the DICOM results.

Why here and not in ``analyze``: a study on a PACS is a bag of series, some of them images, some
of them our own earlier results (our SR, SEG and secondary capture go back into the same study).
Deciding what one "input" is (a multi-slice series is one volume; other images one by one) and
never analysing our own outputs is PACS glue; the analysis itself is ``analyze.analyze_image``.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SecondreadError
from .client import PacsClient

log = logging.getLogger("secondread.pacs")

# Non-image objects are never inputs; SR and SEG are also how our own results come back.
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
OUR_MARK = "secondread"  # in Manufacturer / ManufacturerModelName / SeriesDescription / SoftwareVersions


@dataclass
class Item:
    """One analysis input: a series folder (a volume) or one file. ``key`` names it (a UID)."""

    key: str
    path: Path
    series_uid: str


@dataclass
class ItemResult:
    key: str
    ok: bool
    finding: str | None = None
    probability: float | None = None
    suggested: bool | None = None
    stored: int = 0
    error: str | None = None
    report_dir: Path | None = None


@dataclass
class StudyResult:
    study_uid: str
    items: list[ItemResult] = field(default_factory=list)
    skipped: int = 0  # inputs that already have our results in the study

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.items if not r.ok]

    @property
    def stored(self) -> int:
        return sum(r.stored for r in self.items)

    def error_line(self) -> str | None:
        """One line for the state file / stderr: how many inputs failed and the first reason."""
        bad = self.failed
        if not bad:
            return None
        first = bad[0].error or "failed"
        return first if len(self.items) == 1 else f"{len(bad)} of {len(self.items)} input(s) failed; first: {first}"


def _text(ds: Any, keyword: str) -> str:
    from pydicom.multival import MultiValue

    value = ds.get(keyword)
    if value is None:
        return ""
    return " ".join(str(v) for v in value) if isinstance(value, (list, tuple, MultiValue)) else str(value)


def is_ours(ds: Any) -> bool:
    """True for an object secondread wrote (its SR, SEG or secondary capture): never an input."""
    marks = " ".join(_text(ds, k) for k in ("Manufacturer", "ManufacturerModelName", "SeriesDescription",
                                            "SoftwareVersions", "ContentCreatorName"))
    return OUR_MARK in marks.lower()


def has_pixels(ds: Any) -> bool:
    return any(k in ds for k in PIXEL_KEYWORDS)


def _read_header(path: Path) -> Any | None:
    import pydicom

    try:  # defer_size: large values (pixel data) stay on disk, their presence is still known
        return pydicom.dcmread(path, defer_size=1024)
    except Exception:  # noqa: BLE001 - an unreadable file is reported when it is analysed
        return None


def _referenced_series(ds: Any) -> set[str]:
    """Series UIDs an SR (evidence) or SEG (referenced series) of ours points at."""
    refs: set[str] = set()
    for top in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(top, []) or []:
            for s in study.get("ReferencedSeriesSequence", []) or []:
                refs.add(str(s.get("SeriesInstanceUID", "")))
    for s in ds.get("ReferencedSeriesSequence", []) or []:
        refs.add(str(s.get("SeriesInstanceUID", "")))
    refs.discard("")
    return refs


def plan_study(files: list[Path]) -> tuple[list[Item], set[str]]:
    """Split fetched files into analysis inputs, and the source series our earlier SRs reference.

    A series of several single-frame images is one volume (its folder); any other image is one
    input on its own. Non-image objects and everything we wrote ourselves are left out.
    """
    by_series: dict[str, list[tuple[Path, Any]]] = {}
    done_series: set[str] = set()
    broken: list[Path] = []
    for path in files:
        ds = _read_header(path)
        if ds is None:
            broken.append(path)
            continue
        sop_class = str(ds.get("SOPClassUID", ""))
        if is_ours(ds):
            if sop_class.startswith(SR_PREFIX):
                done_series |= _referenced_series(ds)
            continue
        if sop_class.startswith(SR_PREFIX) or sop_class == SEG_CLASS or not has_pixels(ds):
            continue
        by_series.setdefault(path.parent.name, []).append((path, ds))
    items = []
    for series_uid, members in sorted(by_series.items()):
        multi_frame = any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for _, ds in members)
        if len(members) > 1 and not multi_frame:
            items.append(Item(series_uid, members[0][0].parent, series_uid))
        else:
            for path, _ in members:
                items.append(Item(series_uid if len(members) == 1 else path.stem, path, series_uid))
    for path in broken:  # files pydicom cannot read: analysed alone, so the failure is reported
        items.append(Item(path.stem, path, path.parent.name))
    return items, done_series


@functools.lru_cache(maxsize=4)
def _bundle(name: str):
    from ..models.bundle import load_bundle

    return load_bundle(name)


def analyse_item(item: Item, out_dir: Path, model: str | None) -> dict[str, Any]:
    """Run the project's analysis on one input (``model`` None: the bundle is chosen from the image),
    into a fresh folder renamed to ``out_dir`` at the end (so results of an earlier, interrupted run
    are never mixed in)."""
    from ..analyze import analyze_image

    bundle = None if model is None else _bundle(model)  # None: analyze chooses per input
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.*"):  # left by a run that was killed
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        report = analyze_image(item.path, staging, bundle)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _short(exc: SecondreadError, item: Item) -> str:
    """The error without our temporary folder's path: the input is named by its UID instead."""
    return f"{'series' if item.path.is_dir() else 'instance'} {item.key}: {exc.problem}"


def run_study(client: PacsClient, study_uid: str, out_dir: str | os.PathLike, model: str | None = None) -> StudyResult:
    """Fetch ``study_uid``, analyse each input not yet analysed, store each input's ``*.dcm``
    results right after its analysis. One input failing does not stop the others.

    The fetched instances live in a temporary folder that is removed at the end (they carry the
    patient's data); the report folders stay under ``out_dir/<key>``.
    """
    result = StudyResult(study_uid)
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="secondread-pacs-") as tmp:
        files = client.fetch(study_uid, Path(tmp) / "study")
        items, done_series = plan_study(files)
        for item in items:
            if item.series_uid in done_series:
                result.skipped += 1
                log.info("study %s: %s already has our results; skipped", study_uid, item.key)
                continue
            result.items.append(_run_item(client, item, out / item.key, model))
    return result


def _run_item(client: PacsClient, item: Item, out_dir: Path, model: str | None) -> ItemResult:
    try:
        report = analyse_item(item, out_dir, model)
    except SecondreadError as exc:
        return ItemResult(item.key, False, error=_short(exc, item))
    s = report.get("suggestion", {})
    r = ItemResult(item.key, True, finding=s.get("finding"), probability=s.get("probability"),
                   suggested=s.get("suggested"), report_dir=out_dir)
    outputs = sorted(out_dir.glob("*.dcm"))
    r.stored = client.store(outputs) if outputs else 0  # a PACS failure is the study's, not the item's
    return r

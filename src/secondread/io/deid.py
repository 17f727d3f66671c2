"""De-identify DICOM files and series: the PS3.15 Annex E Basic Application Level Confidentiality Profile.

Why: images leave the hospital for research, teaching and second opinions, and the identifiers in
their headers must not go with them, while the picture and its geometry must arrive unchanged (a
de-identified series has to stack into the same volume, in the same place, as the original).

What does the work
------------------
The attribute table of the profile (PS3.15 Table E.1-1, DICOM edition 2026c) and its actions (D
replace with a dummy, Z empty, X remove, U replace UID, and the combined X/Z, X/D, Z/D, X/Z/D,
X/Z/U*) come from the ``dicom-anonymizer`` package (Kitware), which ships the table as data and
implements each action per VR. It also removes every private attribute (the profile's default,
since the Retain Safe Private option is not applied). This module is only the glue that the
library leaves out:

1. **UIDs are mapped consistently.** Every UID the table says to replace (rows with action U, UI
   attributes with action D, and the references inside Referenced/Source Image Sequence) gets a new
   ``2.25.<uuid>`` UID derived from an HMAC-SHA256 of the original under a secret salt. The same
   original UID gives the same new UID in every file of a call, so a series still forms one volume,
   its FrameOfReferenceUID is still shared, and references between instances still resolve; with
   the same ``salt`` two calls give the same UIDs. The library's own mapping (random, kept in a
   process-wide dictionary) is used only inside sequences the table replaces wholesale (e.g. an SR
   Content Sequence), where no reference has to resolve.
2. **X/Z/U\\* sequences keep their references.** For Referenced Image Sequence and Source Image
   Sequence the library empties every attribute inside (including the SOP Class); here they are kept
   and cleaned like any other sequence, with their instance UIDs mapped (the "U*" of the action).
3. **Sequences are cleaned recursively.** PS3.15 E.3 says attributes not in the table are kept
   "unchanged for non-sequence attributes, cleaned for sequences"; the library applies the table
   to the top level only, so the table is applied again to every item of every remaining sequence.
4. **The result says it was de-identified** (PS3.15 E.1.1): Patient Identity Removed = YES, a
   De-identification Method value and a De-identification Method Code Sequence item (CID 7050,
   ``113100`` Basic Application Confidentiality Profile; no option codes, since no option is
   applied), and Longitudinal Temporal Information Modified = REMOVED (the table's dates become
   the dummy ``00010101``).
5. **The File Meta Information names the writer.** The table covers the data set, not the PS3.10
   header: its application entity titles and private information (the sending system) are
   removed, and the Implementation Class UID/Version Name become pydicom's, which wrote the copy.
6. **Unknown attributes are removed.** A public (even-group) attribute that is not in the data
   dictionary cannot be judged against the table; it is removed like a private one. In real files
   this is rare; in damaged files a corrupt tag can turn Patient ID into such an attribute.
7. **Nothing is echoed.** pydicom warns (and logs) about invalid values by quoting them, and the
   library prints; both are silenced while a file is processed, so no removed value reaches a log.

What is kept
------------
Everything the table does not name, which includes Pixel Data (byte for byte, in its original
transfer syntax) and all image geometry and display attributes: Image Position/Orientation
(Patient), Pixel Spacing, Slice Thickness, Rows/Columns, Bits Allocated/Stored, Photometric
Interpretation, Rescale Slope/Intercept, Window Center/Width, Modality, Manufacturer and model.
These are not identifying under the Basic Profile and are needed to read the image correctly.

What is not done
----------------
Text burned into the pixels is not removed (that is the Clean Pixel Data option, which needs to
know where the text is). Burned In Annotation is kept as it was; the summary warns when it is YES,
or when it is absent for modalities that often carry burned-in text (US, secondary capture, other).
Free-text attributes the table keeps (e.g. Manufacturer) are not scanned for names (Clean
Descriptors option).

Writing is atomic (a temporary file in the destination folder, then :func:`os.replace`), so an
interruption never leaves a half-written output, and the input is never overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import logging
import os
import secrets
import uuid
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pydicom
from dicomanonymizer import simpledicomanonymizer as _sda
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.datadict import dictionary_VR, get_entry
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.multival import MultiValue
from pydicom.pixels.utils import get_expected_length
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from ..atomic import replacing
from ..errors import SecondreadError
from .dicom import is_dicom

PROFILE = "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile"
PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
"""CID 7050 code of the profile: (Code Value, Coding Scheme Designator, Code Meaning)."""
TABLE_EDITION = "dicomfields_2026c"
"""The edition of PS3.15 Table E.1-1 that dicom-anonymizer applies."""
METHOD_TEXT = "secondread: PS3.15 Basic Profile (dicom-anonymizer)"
"""Added to De-identification Method (LO: at most 64 characters)."""
BURNED_IN_PRONE_MODALITIES = frozenset({"US", "OT", "XC", "ES", "GM", "SM", "DOC"})
"""Modalities whose images often carry burned-in text (besides secondary captures)."""
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_FILE_META_REMOVED = ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                      "ReceivingApplicationEntityTitle", "PrivateInformationCreatorUID", "PrivateInformation")

Action = Callable[[Dataset, tuple], None]


@dataclass
class DeidSummary:
    """What one :func:`deidentify` call did: outputs, skipped and failed inputs, and the method.

    Paths only; never an attribute value. ``failed`` holds ``{"file", "problem"}`` dicts with the
    one-line reason; ``warnings`` one-line ``"<file>: <problem>"`` strings (burned-in text).
    """

    source: str
    destination: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    profile: str = PROFILE
    method_codes: list[str] = field(default_factory=lambda: [PROFILE_CODE[0]])
    options: list[str] = field(default_factory=list)  # PS3.15 options applied: none (Basic only)
    uid_mapping: str = "random"
    pixel_data: str = "kept byte for byte; burned-in text not removed (flagged in warnings)"
    library: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict, with the counts a user looks at first."""
        out = asdict(self)
        out["counts"] = {"written": len(self.written), "skipped": len(self.skipped),
                         "failed": len(self.failed), "warnings": len(self.warnings)}
        return out


# --- the public entry point ----------------------------------------------------------------

def deidentify(src: str | os.PathLike, dst: str | os.PathLike, *, salt: str | None = None) -> DeidSummary:
    """Write de-identified copies of a DICOM file, or of every DICOM file under a folder.

    Parameters
    ----------
    src : path
        A DICOM file, or a folder searched recursively. In a folder, non-DICOM files are skipped
        (and listed), and a file that cannot be read or written is listed under ``failed`` with a
        one-line reason while the others are still written.
    dst : path
        For a file: the output file, or an existing folder to write it into under the same name.
        For a folder: the output folder; the relative paths under ``src`` are mirrored.
    salt : str, optional
        Secret key of the UID mapping. The same salt gives the same new UIDs on every run (to
        de-identify a study in several calls, or to add to it later); keep it as secret as the
        originals, since with it the originals can be confirmed. ``None`` draws a random salt, so
        the UIDs of two calls cannot be linked.

    Returns
    -------
    DeidSummary

    Raises
    ------
    SecondreadError
        ``src`` missing or not DICOM, ``dst`` equal to or inside ``src``, or (for one file) the
        file cannot be de-identified.
    """
    src_path, dst_path = Path(src), Path(dst)
    if not src_path.exists():
        raise SecondreadError(src_path, "does not exist")
    summary = DeidSummary(source=str(src_path), destination=str(dst_path), library=_library_name(),
                          uid_mapping="deterministic: HMAC-SHA256 of each UID under the given salt"
                          if salt is not None else "random: a new secret salt for this call")
    deid = _Deidentifier(salt if salt is not None else secrets.token_hex(32))
    with _quiet():
        if src_path.is_dir():
            _deidentify_folder(deid, src_path, dst_path, summary)
        else:
            _deidentify_one_file(deid, src_path, dst_path, summary)
    return summary


@contextlib.contextmanager
def _quiet():
    """Silence pydicom's warnings and log records and the library's prints while files are processed.

    Why: pydicom quotes the offending value when it warns about an invalid one ("Invalid value for
    VR UI: '<value>'"), and in a damaged file that value can hold a patient's name.
    """
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _library_name() -> str:
    return f"dicom-anonymizer {version('dicom-anonymizer')} (PS3.15 Table E.1-1, {TABLE_EDITION})"


def _deidentify_one_file(deid: _Deidentifier, src: Path, dst: Path, summary: DeidSummary) -> None:
    """A single input: every problem is an error, since there is nothing else to go on with."""
    out = dst / src.name if dst.is_dir() else dst
    if _same_file(out, src):
        raise SecondreadError(dst, "the output would overwrite the input; choose another destination")
    if not is_dicom(src):
        raise SecondreadError(src, "not a DICOM file")
    summary.warnings.extend(_guarded(deid, src, out))
    summary.written.append(str(out))


def _guarded(deid: _Deidentifier, src: Path, out: Path) -> list[str]:
    """``deid.file``, with any failure we did not foresee turned into a one-line error."""
    try:
        return deid.file(src, out)
    except SecondreadError:
        raise
    except Exception as exc:
        raise SecondreadError(src, f"unexpected failure ({type(exc).__name__})") from None


def _deidentify_folder(deid: _Deidentifier, src: Path, dst: Path, summary: DeidSummary) -> None:
    """Every DICOM file under ``src`` into the same relative path under ``dst``; go on after failures."""
    if _same_file(dst, src) or _inside(dst, src):
        raise SecondreadError(dst, "the destination is the source folder or inside it; choose another")
    if dst.exists() and not dst.is_dir():
        raise SecondreadError(dst, "the source is a folder but the destination is a file")
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        if not is_dicom(path):
            summary.skipped.append(str(path))
            continue
        out = dst / path.relative_to(src)
        try:
            if _inside(out, src):
                raise SecondreadError(out, "the output would land inside the source folder")
            summary.warnings.extend(_guarded(deid, path, out))
            summary.written.append(str(out))
        except SecondreadError as exc:
            summary.failed.append({"file": str(path), "problem": exc.problem})


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _inside(path: Path, folder: Path) -> bool:
    return folder.resolve() in path.resolve().parents


# --- one file --------------------------------------------------------------------------------

class _Deidentifier:
    """The rules and the UID mapping of one call, shared by every file so UIDs stay consistent."""

    def __init__(self, salt: str):
        self._key = salt.encode("utf-8")
        self._uids: dict[str, str] = {}
        self._rules = _profile_rules(self._map_uid_action, self._keep_sequence_map_uid_action)

    def file(self, src: Path, out: Path) -> list[str]:
        """De-identify ``src`` into ``out``; return the one-line warnings (burned-in text)."""
        ds = read_complete(src)
        warn = burned_in_warnings(ds, src)
        try:
            self.dataset(ds)
        except Exception as exc:
            raise SecondreadError(src, f"cannot de-identify this file: an attribute cannot be decoded or "
                                        f"changed, the file is corrupt ({type(exc).__name__})") from None
        write_atomic(ds, out)
        return warn

    def dataset(self, ds: Dataset) -> None:
        """De-identify ``ds`` in place: the table, recursively, then the marks of PS3.15 E.1.1."""
        self._clean(ds)
        mark_deidentified(ds)

    def new_uid(self, uid: str) -> str:
        """The replacement of ``uid``: ``2.25.`` + a UUID made from HMAC-SHA256(salt, uid) (PS3.5 B.2)."""
        uid = str(uid).strip().rstrip("\x00")
        if uid not in self._uids:
            digest = hmac.new(self._key, uid.encode("ascii", "replace"), hashlib.sha256).digest()
            self._uids[uid] = f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"
        return self._uids[uid]

    def _clean(self, ds: Dataset) -> None:
        """Apply the table to ``ds``, then to every item of every sequence left in it (PS3.15 E.3)."""
        _sda.anonymize_dataset(ds, None, True, lambda: dict(self._rules))
        _remove_unknown_public(ds)
        for elem in list(ds):
            if elem.VR == "SQ" and isinstance(elem.value, Sequence):
                for item in elem.value:
                    self._clean(item)

    def _map_uid_action(self, ds: Dataset, tag: tuple) -> None:
        """Action U: replace each UID value by its consistent new UID."""
        elem = ds.get(tag)
        if elem is None or elem.VR == "SQ" or elem.value in (None, ""):
            return
        if isinstance(elem.value, (MultiValue, list)):
            elem.value = [self.new_uid(v) for v in elem.value if v]
        else:
            elem.value = self.new_uid(elem.value)

    def _keep_sequence_map_uid_action(self, ds: Dataset, tag: tuple) -> None:
        """Action X/Z/U*: keep a sequence (its items are cleaned recursively), map a UID."""
        elem = ds.get(tag)
        if elem is not None and elem.VR != "SQ":
            self._map_uid_action(ds, tag)


def _remove_unknown_public(ds: Dataset) -> None:
    """Remove even-group attributes the data dictionary does not know, and group lengths (retired,
    and wrong once attributes are removed)."""
    for tag in list(ds.keys()):
        if tag.element == 0:
            del ds[tag]
            continue
        try:
            get_entry(tag)
        except KeyError:
            del ds[tag]


def _profile_rules(map_uid: Action, keep_and_map: Action) -> dict[tuple, Action]:
    """dicom-anonymizer's rules for the table, with our UID actions where UIDs are replaced."""
    table = dicom_anonymization_database_selector(TABLE_EDITION)
    rules = _sda.initialize_actions(TABLE_EDITION)
    for tag in table["U_TAGS"]:
        rules[tag] = map_uid
    for tag in table["D_TAGS"]:
        if len(tag) == 2 and _dictionary_vr(tag) == "UI":
            rules[tag] = map_uid
    for tag in table["X_Z_U_STAR_TAGS"]:
        rules[tag] = keep_and_map
    return rules


def _dictionary_vr(tag: tuple) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


# --- reading, marking, writing ----------------------------------------------------------------

def read_complete(path: Path) -> Dataset:
    """Read a DICOM file and refuse it if it is truncated.

    Why: pydicom reads a file cut short without complaint (the pixel data is just shorter, or the
    last elements are missing), and a de-identified copy of it would look whole while it is not.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
    except Exception as exc:
        raise SecondreadError(path, f"the DICOM file cannot be read: truncated or corrupt "
                                    f"({type(exc).__name__})") from None
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        raise SecondreadError(path, "no SOP Class/Instance UID: not a complete DICOM object (truncated?)")
    _check_pixel_data(ds, path)
    return ds


def _check_pixel_data(ds: Dataset, path: Path) -> None:
    """An image (Rows present, or an image SOP Class) must hold all of its pixel data."""
    if "Rows" not in ds and "Image Storage" not in ds.SOPClassUID.name:
        return
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            return
        raise SecondreadError(path, "image attributes but no pixel data: the file is truncated")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and _is_compressed(syntax, path):
        try:
            next(iter(generate_fragments(ds.PixelData)))
        except Exception:
            raise SecondreadError(path, "the compressed pixel data is truncated or corrupt") from None
        return
    try:
        expected = get_expected_length(ds, "bytes")
    except Exception:
        raise SecondreadError(path, "the image header is inconsistent (size attributes)") from None
    if len(ds.PixelData) < expected:
        raise SecondreadError(path, f"the pixel data holds {len(ds.PixelData)} of the {expected} bytes "
                                    f"its header describes: the file is truncated")


def _is_compressed(syntax: pydicom.uid.UID, path: Path) -> bool:
    try:
        return syntax.is_compressed
    except ValueError:
        raise SecondreadError(path, "the transfer syntax is unknown: the file is corrupt or uses a "
                                    "private syntax") from None


def burned_in_warnings(ds: Dataset, path: Path) -> list[str]:
    """One-line warnings when the pixels may show text this profile does not remove."""
    value = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    modality = str(ds.get("Modality", "") or "").strip().upper()
    secondary = str(ds.get("SOPClassUID", "")).startswith(_SECONDARY_CAPTURE_PREFIX)
    if value == "YES":
        problem = "Burned In Annotation is YES: text in the pixels was not removed; check before sharing"
    elif not value and (modality in BURNED_IN_PRONE_MODALITIES or secondary):
        kind = "secondary capture" if secondary else modality
        problem = (f"Burned In Annotation is not stated for a {kind} image, which often carries text "
                   f"in the pixels; the pixels were not cleaned; check before sharing")
    else:
        return []
    return [SecondreadError(path, problem).message]


def mark_deidentified(ds: Dataset) -> None:
    """Record the de-identification in the data set itself (PS3.15 E.1.1, PS3.3 C.7.1.1)."""
    ds.PatientIdentityRemoved = "YES"
    methods = list(_values(ds.get("DeidentificationMethod")))
    if METHOD_TEXT not in methods:
        ds.DeidentificationMethod = [*methods, METHOD_TEXT] if methods else METHOD_TEXT
    codes = ds.get("DeidentificationMethodCodeSequence") or Sequence()
    if not any(item.get("CodeValue") == PROFILE_CODE[0] for item in codes):
        codes.append(_code_item(*PROFILE_CODE))
    ds.DeidentificationMethodCodeSequence = codes
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    _rewrite_file_meta(ds)


def _rewrite_file_meta(ds: Dataset) -> None:
    """Say in the File Meta Information (PS3.10 7.1) that pydicom wrote this file, not the sender.

    Why: the application entity titles and private information there describe the system (and so
    the site) that last wrote or sent the original; the table covers the data set, not this header.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    for keyword in _FILE_META_REMOVED:
        if keyword in meta:
            delattr(meta, keyword)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]


def _values(value: Any) -> list[str]:
    if value in (None, ""):
        return []
    return [str(v) for v in value] if isinstance(value, (MultiValue, list)) else [str(value)]


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def write_atomic(ds: Dataset, out: Path) -> None:
    """Write ``ds`` as a DICOM file at ``out`` all at once: a temporary file, then a rename.

    Why: an interrupted write must leave either the old file or the whole new one, never a
    truncated DICOM file that a later reader would take for a complete one.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SecondreadError(out, f"cannot create the output ({exc.strerror or type(exc).__name__})") from None
    try:
        with replacing(out) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    except Exception as exc:
        raise SecondreadError(out, f"cannot write the de-identified copy ({type(exc).__name__})") from None

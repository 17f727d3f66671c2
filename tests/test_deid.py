"""De-identification (PS3.15 Basic Profile) on real files: identifiers gone, pixels and geometry kept.

The checks are independent of the code under test: identifiers are searched for in the raw bytes
of every output file (not in the attributes pydicom shows), pixels are compared with pydicom's own
decoding of the original, and the LIDC series is restacked from both folders by z.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from secondread.errors import SecondreadError
from secondread.io.deid import DeidSummary, deidentify

SAMPLES = ("CT_small.dcm", "MR_small.dcm", "6154", "RG3_UNCR.dcm", "MR_small_implicit.dcm",
           "MR_small_bigendian.dcm", "image_dfl.dcm", "MR_small_jp2klossless.dcm")
GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows",
            "Columns", "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth",
            "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
            "SamplesPerPixel", "NumberOfFrames", "ImagerPixelSpacing", "Modality", "SOPClassUID")
PLANTED = {  # values written into copies of the samples; none may survive anywhere in the output
    "PatientName": "Quixotic^Zebediah", "PatientID": "PID-QX-90817", "PatientBirthDate": "19390917",
    "AccessionNumber": "ACCQX55213", "InstitutionName": "St Quentin Zebra Infirmary",
    "ReferringPhysicianName": "Vexley^Ormond", "OtherPatientIDs": "OPID-QX-4471", "StudyDate": "20011119",
}
NESTED = ("Nestedson^Ignatius", "Deepnest^Wilhelmina", "REQ-QX-3301")
PRIVATE = "PRIVATE-QX-SECRET"
ALL_PLANTED = (*PLANTED.values(), *NESTED, PRIVATE)
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def _plant(ds: Dataset, referenced_uid: str) -> None:
    """Identifiers at the top level, in a private block, in a table sequence and in nested
    sequences the table does not name (which the profile says must be cleaned too)."""
    for keyword, value in PLANTED.items():
        setattr(ds, keyword, value)
    ds.private_block(0x0011, "QX PRIVATE CREATOR", create=True).add_new(0x01, "LO", PRIVATE)
    request = Dataset()
    request.RequestedProcedureID = NESTED[2]
    ds.RequestAttributesSequence = Sequence([request])
    deep = Dataset()
    deep.PatientName = NESTED[1]
    protocol = Dataset()
    protocol.CodeValue, protocol.CodingSchemeDesignator, protocol.CodeMeaning = "QX1", "99QX", "protocol"
    protocol.ReferringPhysicianName = NESTED[0]
    protocol.ProtocolContextSequence = Sequence([deep])
    ds.PerformedProtocolCodeSequence = Sequence([protocol])
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = ds.SOPClassUID, referenced_uid
    ds.ReferencedImageSequence = Sequence([ref])


def _identifying_values(ds: Dataset) -> set[str]:
    """Every person name and patient/accession ID in ``ds`` (nested too), as the original holds it."""
    found: set[str] = set()

    def visit(_ds: Dataset, elem) -> None:
        if elem.VR == "PN" or elem.keyword in ("PatientID", "OtherPatientIDs", "AccessionNumber"):
            values = elem.value if isinstance(elem.value, (list, pydicom.multival.MultiValue)) else [elem.value]
            found.update(str(v) for v in values if v and len(str(v)) >= 4)

    ds.walk(visit)
    return found


@pytest.fixture(scope="module")
def samples(data_root: Path, tmp_path_factory) -> dict:
    """Copies of real samples with planted identifiers, de-identified as one folder."""
    root = tmp_path_factory.mktemp("deid_samples")
    src, dst = root / "in", root / "out"
    (src / "sub").mkdir(parents=True)
    originals = {}
    uids = [pydicom.dcmread(data_root / "dicom" / n, stop_before_pixels=True).SOPInstanceUID for n in SAMPLES]
    for i, name in enumerate(SAMPLES):
        original = pydicom.dcmread(data_root / "dicom" / name)
        originals[name] = {"ids": _identifying_values(original), "uids": {k: original.get(k) for k in UID_KEYWORDS}}
        _plant(original, referenced_uid=uids[(i + 1) % len(SAMPLES)])
        original.save_as(src / "sub" / name if i % 2 else src / name, enforce_file_format=True)
    summary = deidentify(src, dst, salt="test-salt")
    return {"src": src, "dst": dst, "summary": summary, "originals": originals, "uids": uids, "data": data_root}


def _output(samples: dict, name: str) -> Path:
    i = SAMPLES.index(name)
    return samples["dst"] / ("sub" if i % 2 else "") / name


def test_summary_lists_every_file_and_the_profile(samples):
    summary: DeidSummary = samples["summary"]
    assert sorted(Path(p).name for p in summary.written) == sorted(SAMPLES)
    assert summary.skipped == [] and summary.failed == []
    d = json.loads(json.dumps(summary.to_dict()))
    assert d["counts"] == {"written": len(SAMPLES), "skipped": 0, "failed": 0, "warnings": 1}
    assert "image_dfl.dcm: Burned In Annotation is not stated for a secondary capture image" in d["warnings"][0]
    assert "Basic Application Level Confidentiality Profile" in d["profile"]
    assert d["method_codes"] == ["113100"] and d["options"] == []
    assert "dicom-anonymizer 2.1.0" in d["library"] and "test-salt" not in json.dumps(d)


@pytest.mark.parametrize("name", SAMPLES)
def test_no_identifier_survives_in_the_output_bytes(samples, name):
    raw = _output(samples, name).read_bytes()
    for value in (*ALL_PLANTED, *samples["originals"][name]["ids"]):
        assert value.encode("latin-1") not in raw, f"{value!r} left in {name}"
    for uid in samples["originals"][name]["uids"].values():
        if uid:
            assert uid.encode() not in raw
    ds = pydicom.dcmread(_output(samples, name))
    assert not [e for e in ds if e.tag.is_private]
    assert "RequestAttributesSequence" not in ds  # X in Table E.1-1


@pytest.mark.parametrize("name", SAMPLES)
def test_pixels_and_geometry_are_kept(samples, name):
    original = pydicom.dcmread(samples["data"] / "dicom" / name)
    out = pydicom.dcmread(_output(samples, name))
    assert out.PixelData == original.PixelData
    assert out.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    for keyword in GEOMETRY:
        assert out.get(keyword) == original.get(keyword), keyword
    np.testing.assert_array_equal(out.pixel_array, original.pixel_array)


@pytest.mark.parametrize("name", SAMPLES)
def test_marked_deidentified_with_new_valid_uids(samples, name):
    out = pydicom.dcmread(_output(samples, name))
    assert out.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100"]
    assert out.DeidentificationMethodCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    for keyword, old in samples["originals"][name]["uids"].items():
        if old:
            new = UID(out[keyword].value)
            assert new != old and new.is_valid and new.startswith("2.25."), keyword
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def test_references_between_files_resolve_to_the_new_uids(samples):
    """Each copy references the next sample's SOP Instance; the reference must follow the mapping."""
    for i, name in enumerate(SAMPLES):
        target = SAMPLES[(i + 1) % len(SAMPLES)]
        ref = pydicom.dcmread(_output(samples, name)).ReferencedImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == pydicom.dcmread(_output(samples, target)).SOPInstanceUID
        assert ref.ReferencedSOPClassUID == pydicom.dcmread(samples["data"] / "dicom" / name).SOPClassUID


@pytest.fixture(scope="module")
def lidc(data_root: Path, tmp_path_factory) -> dict:
    src = data_root / "ct" / "LIDC-IDRI-0001" / "series"
    dst = tmp_path_factory.mktemp("deid_lidc") / "out"
    return {"src": src, "dst": dst, "summary": deidentify(src, dst)}


def _volume(folder: Path) -> tuple[np.ndarray, list[Dataset]]:
    slices = sorted((pydicom.dcmread(p) for p in folder.glob("*.dcm")),
                    key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack([ds.pixel_array for ds in slices]), slices


def test_lidc_series_stays_one_volume(lidc):
    assert lidc["summary"].to_dict()["counts"]["written"] == 133
    original, before = _volume(lidc["src"])
    copy, after = _volume(lidc["dst"])
    np.testing.assert_array_equal(copy, original)
    for a, b in zip(before, after):
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                        "RescaleIntercept", "RescaleSlope"):
            assert b.get(keyword) == a.get(keyword), keyword
    for keyword in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
        new = {ds[keyword].value for ds in after}
        assert len(new) == 1 and new != {before[0][keyword].value}, keyword
    sops = [ds.SOPInstanceUID for ds in after]
    assert len(set(sops)) == 133 and not set(sops) & {ds.SOPInstanceUID for ds in before}


def test_lidc_patient_id_absent_from_every_output_byte(lidc):
    for path in lidc["dst"].glob("*.dcm"):
        raw = path.read_bytes()
        assert b"LIDC-IDRI-0001" not in raw and b"1.3.6.1.4.1.14519.5.2.1.6279.6001" not in raw, path.name


def test_same_salt_same_uids_other_salt_other_uids(data_root, tmp_path):
    src = data_root / "dicom" / "CT_small.dcm"

    def uids(salt, out):
        deidentify(src, tmp_path / out, salt=salt)
        ds = pydicom.dcmread(tmp_path / out)
        return [ds[k].value for k in UID_KEYWORDS]

    first = uids("s1", "a.dcm")
    assert uids("s1", "b.dcm") == first
    assert not set(uids("s2", "c.dcm")) & set(first)
    assert not set(uids(None, "d.dcm")) & set(uids(None, "e.dcm"))


def test_bad_inputs_in_a_folder_are_skipped_or_failed_and_the_rest_written(data_root, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = data_root / "dicom" / "CT_small.dcm"
    shutil.copy(good, src / "good.dcm")
    shutil.copy(data_root / "dicom" / "MR_small.dcm", src / "good2.dcm")
    (src / "notes.txt").write_text("not an image\n")
    ds = pydicom.dcmread(good)
    _plant(ds, ds.SOPInstanceUID)
    ds.save_as(src / "planted.dcm", enforce_file_format=True)
    whole = (src / "planted.dcm").read_bytes()
    (src / "truncated.dcm").write_bytes(whole[: len(whole) - 5000])
    (src / "planted.dcm").unlink()
    summary = deidentify(src, tmp_path / "out")
    assert sorted(Path(p).name for p in summary.written) == ["good.dcm", "good2.dcm"]
    assert [Path(p).name for p in summary.skipped] == ["notes.txt"]
    assert [Path(f["file"]).name for f in summary.failed] == ["truncated.dcm"]
    problem = summary.failed[0]["problem"]
    assert "truncated" in problem and "\n" not in problem
    assert not any(v in json.dumps(summary.to_dict()) for v in ALL_PLANTED)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.dcm", "good2.dcm"]


def test_truncated_header_fails(data_root, tmp_path):
    raw = (data_root / "dicom" / "CT_small.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(raw[:700])
    with pytest.raises(SecondreadError, match="truncated") as err:
        deidentify(tmp_path / "cut.dcm", tmp_path / "out.dcm")
    assert str(tmp_path / "cut.dcm") in str(err.value) and not (tmp_path / "out.dcm").exists()


def test_missing_and_non_dicom_single_inputs_are_errors(tmp_path):
    with pytest.raises(SecondreadError, match="does not exist"):
        deidentify(tmp_path / "nope.dcm", tmp_path / "out.dcm")
    (tmp_path / "a.txt").write_text("hello\n")
    with pytest.raises(SecondreadError, match="not a DICOM file") as err:
        deidentify(tmp_path / "a.txt", tmp_path / "out.dcm")
    assert "\n" not in str(err.value) and not (tmp_path / "out.dcm").exists()


def test_refuses_to_overwrite_the_input(data_root, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(data_root / "dicom" / "CT_small.dcm", src / "a.dcm")
    digest = hashlib.sha256((src / "a.dcm").read_bytes()).hexdigest()
    for dst in (src, src / "deid", src / "a.dcm"):
        with pytest.raises(SecondreadError):
            deidentify(src, dst)
    for dst in (src / "a.dcm", src):  # single file: same path, or its own folder
        with pytest.raises(SecondreadError, match="overwrite"):
            deidentify(src / "a.dcm", dst)
    assert hashlib.sha256((src / "a.dcm").read_bytes()).hexdigest() == digest
    assert [p.name for p in src.iterdir()] == ["a.dcm"]


def test_an_interrupted_write_leaves_nothing_behind(data_root, tmp_path, monkeypatch):
    def crash(self, filename, **kwargs):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(Dataset, "save_as", crash)
    with pytest.raises(SecondreadError, match="cannot write"):
        deidentify(data_root / "dicom" / "CT_small.dcm", tmp_path / "out" / "a.dcm")
    assert list((tmp_path / "out").iterdir()) == []


def test_burned_in_text_is_flagged_not_hidden(data_root, tmp_path):
    ds = pydicom.dcmread(data_root / "dicom" / "CT_small.dcm")
    ds.BurnedInAnnotation = "YES"
    ds.save_as(tmp_path / "ct_yes.dcm", enforce_file_format=True)
    summary = deidentify(tmp_path / "ct_yes.dcm", tmp_path / "ct_out.dcm")
    assert len(summary.warnings) == 1 and "YES" in summary.warnings[0]
    assert pydicom.dcmread(tmp_path / "ct_out.dcm").BurnedInAnnotation == "YES"
    us = deidentify(data_root / "dicom" / "examples_palette.dcm", tmp_path / "us.dcm")
    assert len(us.warnings) == 1 and "US" in us.warnings[0]
    assert deidentify(data_root / "dicom" / "CT_small.dcm", tmp_path / "ct.dcm").warnings == []


def test_an_attribute_with_a_corrupt_tag_is_removed(data_root, tmp_path):
    """A damaged tag can turn Patient ID (0010,0020) into an attribute no dictionary knows; the
    profile's table cannot judge it, so it must go like a private one."""
    raw = (data_root / "dicom" / "CT_small.dcm").read_bytes()
    header = b"\x10\x00\x20\x00LO"  # (0010,0020) Patient ID, explicit VR little endian
    assert raw.find(header) < raw.find(b"1CT1")  # the first one is the top-level Patient ID
    (tmp_path / "bad_tag.dcm").write_bytes(raw.replace(header, b"\xfa\x00\x20\x00LO", 1))
    deidentify(tmp_path / "bad_tag.dcm", tmp_path / "out.dcm")
    out = (tmp_path / "out.dcm").read_bytes()
    assert b"1CT1" not in out and b"CompressedSamples^CT1" not in out


def test_no_removed_value_reaches_a_warning_or_a_log(data_root, tmp_path, caplog):
    """pydicom quotes invalid values in its warnings; a name stored with a wrong VR (UI) would be
    echoed to the log unless the de-identifier silences it."""
    raw = (data_root / "dicom" / "CT_small.dcm").read_bytes()
    header = b"\x10\x00\x10\x00PN"  # (0010,0010) Patient's Name
    assert raw.count(header) == 1
    (tmp_path / "bad_vr.dcm").write_bytes(raw.replace(header, b"\x10\x00\x10\x00UI"))
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = deidentify(tmp_path / "bad_vr.dcm", tmp_path / "out.dcm")
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    said.append(json.dumps(summary.to_dict()))
    assert not [s for s in said if "CompressedSamples" in s or "1CT1" in s]
    assert b"CompressedSamples" not in (tmp_path / "out.dcm").read_bytes()

"""``analyze`` without a named model: the shipped bundle is chosen from the image, and says why;
one loaded study analysed by the parts the service, the PACS client and the batch runner reuse."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image as PILImage

from secondread.analyze import LoadedStudy, analyze_image, analyze_loaded, dicom_files, load_study
from secondread.image import Image
from secondread.models.bundle import ZOO, load_bundle, shipped_names
from secondread.models.choose import choose_bundle


def image(ndim: int, modality: str) -> Image:
    rng = np.random.default_rng(0)
    return Image(rng.random((16,) * ndim).astype(np.float32), modality=modality)


def mask(modality: str) -> Image:
    rng = np.random.default_rng(0)
    return Image((rng.random((16, 16, 16)) > 0.7).astype(np.float32), modality=modality)


@pytest.mark.parametrize("modality", ["CT", "MR", "OT"])
def test_a_binary_mask_volume_goes_to_the_3d_bundle_any_other_volume_to_none(modality):
    """adrenal-ct-3d reads a gland's segmentation mask: a CT in HU (or any intensity volume) is
    not what it was trained on, so no classifier is chosen for it and the report says why."""
    assert choose_bundle(mask(modality)).name == "adrenal-ct-3d"
    choice = choose_bundle(image(3, modality))
    assert choice.name is None and "segmentation mask" in choice.reason
    assert ("lung-nodule search" in choice.reason) == (modality == "CT")


@pytest.mark.parametrize("ndim, modality, expected", [
    (2, "CR", "pneumonia"), (2, "DX", "pneumonia"), (2, "MG", "mammo-abnormal"),
    (2, "MR", "brain-mri-tumour"), (2, "US", "breast-us-28"), (2, "CT", "pneumonia"),
    (2, "OT", "pneumonia"), (2, "", "pneumonia"), (2, "NM", "pneumonia"),
])
def test_choose_bundle_by_dimensionality_and_modality(ndim, modality, expected):
    choice = choose_bundle(image(ndim, modality))
    assert choice.name == expected and choice.name in shipped_names()
    assert ("volume" if ndim == 3 else "2D image") in choice.reason
    # the chosen bundle declares the image's dimensionality (what detect() requires)
    config = json.loads((ZOO / choice.name / "bundle.json").read_text())
    assert len(config["input_shape"]) == ndim


def test_choose_bundle_reads_the_bundles_declarations():
    """A preferred bundle whose bundle.json does not declare the modality is passed over."""
    configs = {"pneumonia": {"modalities": ["CR", "DX", "OT"], "input_shape": [28, 28]},
               "brain-mri-tumour": {"modalities": ["CT"], "input_shape": [64, 64]},
               "knee-mr": {"modalities": ["MR"], "input_shape": [32, 32]},
               "adrenal-ct-3d": {"modalities": ["CT"], "input_shape": [28, 28, 28]}}
    assert choose_bundle(image(2, "MR"), configs).name == "knee-mr"
    assert choose_bundle(image(2, "XA"), configs).name == "pneumonia"
    assert "no shipped model" in choose_bundle(image(2, "XA"), configs).reason


def test_png_analysed_with_an_automatic_model_writes_no_dicom(data_root, tmp_path):
    with np.load(data_root / "medmnist" / "pneumoniamnist.npz") as npz:
        pixels = npz["val_images"][0]
    png = tmp_path / "xray.png"
    PILImage.fromarray(pixels).save(png)
    out = tmp_path / "r"
    report = analyze_image(png, out)  # bundle=None
    assert report["model"]["name"] == "pneumonia" and report["model"]["chosen"]["automatic"] is True
    assert "dicom" not in report and not list(out.glob("*.dcm")) and dicom_files(report, out) == []
    assert "chosen automatically" in (out / "report.html").read_text()
    saved = json.loads((out / "report.json").read_text())
    assert saved["model"]["chosen"] == report["model"]["chosen"]
    # a named bundle: no "chosen" entry, the same probability
    named = analyze_image(png, tmp_path / "n", load_bundle("pneumonia"))
    assert "chosen" not in named["model"] and named["findings"][0]["probability"] == report["findings"][0]["probability"]


def test_one_loaded_study_analysed_twice(data_root, tmp_path):
    study = load_study(data_root / "dicom" / "MR_small.dcm")
    assert isinstance(study, LoadedStudy) and study.is_dicom and study.sources.headers[0].SOPInstanceUID
    assert "PixelData" not in study.sources.headers[0]  # headers only
    auto = analyze_loaded(study, tmp_path / "auto")
    chest = analyze_loaded(study, tmp_path / "chest", load_bundle("pneumonia"))
    assert auto["model"]["name"] == "brain-mri-tumour" and chest["model"]["name"] == "pneumonia"
    assert (tmp_path / "auto" / "sr.dcm").is_file() and (tmp_path / "chest" / "sr.dcm").is_file()
    # an Image alone (no DICOM headers) is analysed too, without DICOM outputs
    plain = analyze_loaded(study.image, tmp_path / "plain")
    assert "dicom" not in plain and not list((tmp_path / "plain").glob("*.dcm"))


def test_ct_slice_gets_no_nodule_search(data_root, tmp_path):
    report = analyze_image(data_root / "dicom" / "CT_small.dcm", tmp_path / "r")
    assert all(not f.get("kind") for f in report["findings"]) and "nodules" not in report


def test_a_later_report_in_the_same_folder_leaves_no_stale_dicom(data_root, tmp_path):
    out = tmp_path / "r"
    first = analyze_image(data_root / "dicom" / "CT_small.dcm", out)
    assert {p.name for p in out.glob("*.dcm")} == {f["file"] for f in first["dicom"]["files"]} != set()
    with np.load(data_root / "medmnist" / "pneumoniamnist.npz") as npz:
        PILImage.fromarray(npz["val_images"][1]).save(tmp_path / "x.png")
    analyze_image(tmp_path / "x.png", out)
    assert not list(out.glob("*.dcm"))


def test_one_series_of_a_folder_with_two(data_root, tmp_path):
    import shutil

    import pydicom

    folder = tmp_path / "study"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(data_root / "dicom" / name, folder / name)
    uid = str(pydicom.dcmread(folder / "CT_small.dcm", stop_before_pixels=True).SeriesInstanceUID)
    study = load_study(folder, series_uid=uid)
    # a series of one slice is a 2D image (the 2D models read it; no nodule search on one slice)
    assert study.image.shape == (128, 128) and study.image.modality == "CT"
    assert [str(h.SeriesInstanceUID) for h in study.sources.headers] == [uid]
    report = analyze_loaded(study, tmp_path / "r")
    assert report["model"]["chosen"]["name"] == "pneumonia" and "nodules" not in report
    assert all(not f.get("kind") for f in report["findings"])
    assert (tmp_path / "r" / "sr.dcm").is_file() and not (tmp_path / "r" / "seg.dcm").exists()


def test_record_is_read_with_the_models_area_and_ages_on_the_study_date(data_root, tmp_path):
    """A note given with a brain MRI is read with the brain rules, and a FHIR age is the age on the
    study date in the DICOM header (not today), which the report never prints."""
    import datetime as dt

    import pydicom

    from secondread.analyze import load_study, study_date
    from secondread.records.fhir import read_fhir
    from secondread.records.merge import RecordSource

    note = tmp_path / "note.txt"
    note.write_text("CLINICAL HISTORY: new-onset seizures and morning headaches. No focal weakness.\n")
    fhir = sorted((data_root / "text" / "fhir-synthea").glob("*.json"))[0]
    path = data_root / "dicom" / "MR_small.dcm"
    report = analyze_image(path, tmp_path / "r", record=RecordSource(note, fhir))
    assert report["model"]["chosen"]["name"] == "brain-mri-tumour" and report["record"]["area"] == "brain"
    supports = {f["concept"] for f in report["suggestion"]["evidence"]["record"]["supports"]}
    assert {"seizure", "headache"} <= supports
    # the age is the age on the study date: compare with the FHIR reader given that date directly
    header = pydicom.dcmread(path, stop_before_pixels=True)
    taken = dt.datetime.strptime(str(header.StudyDate), "%Y%m%d").date()
    assert study_date(load_study(path)) == taken
    expected = read_fhir(fhir, reference_date=taken).to_dict()["demographics"]
    assert report["record"]["demographics"]["age"] == expected["age"]
    assert report["record"]["demographics"]["age_at"] == "reference date"
    assert str(header.StudyDate) not in (tmp_path / "r" / "report.json").read_text()


def test_a_record_source_is_read_once_per_area_and_date(tmp_path, monkeypatch):
    """``analyze`` reads the record up front (to fail early) and again per image: the same
    (area, study date) is read once, and each caller gets its own copy; another area is read anew."""
    import datetime as dt

    from secondread.records import merge

    calls = []
    real = merge.load_record
    monkeypatch.setattr(merge, "load_record", lambda *a, **k: calls.append(k["area"]) or real(*a, **k))
    note = tmp_path / "note.txt"
    note.write_text("Former smoker, 30 pack-years. Fever and cough. No pleural effusion.\n")
    source = merge.RecordSource(note)
    first, again = source.load("chest"), source.load("chest")
    assert first == again and first is not again and calls == ["chest"]
    again["facts"].clear()
    assert source.load("chest")["facts"] == first["facts"]
    source.load("chest", dt.date(2020, 1, 2))
    source.load("brain")
    assert calls == ["chest", "chest", "brain"]

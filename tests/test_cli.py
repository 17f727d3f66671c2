"""The command line end to end, on real images, real notes and real bad inputs."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage

from secondread.models.bundle import load_bundle

NOTE = "No evidence of pneumonia. History of asthma.\n"
IDENTIFIERS = ["Doe^Jane", "Jane", "ID-998877", "19610203", "ACC-5544"]


def run(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "secondread", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


def assert_one_line_error(proc, names):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("secondread: error:")]
    assert len(lines) == 1, proc.stderr
    assert names in lines[0]


@pytest.fixture(scope="module")
def val(data_root):
    with np.load(data_root / "medmnist" / "pneumoniamnist.npz") as npz:
        return npz["val_images"], npz["val_labels"].ravel()


@pytest.fixture(scope="module")
def bundle():
    return load_bundle("pneumonia")


@pytest.fixture
def cases(tmp_path, val, bundle):
    """PNG files of a confident pneumonia and a confident normal validation image, and a note."""
    images, labels = val
    probs = bundle.predict_proba(list(images))
    pos = int(np.flatnonzero(labels == 1)[np.argmax(probs[labels == 1])])
    neg = int(np.flatnonzero(labels == 0)[np.argmin(probs[labels == 0])])
    paths = {}
    for name, idx in (("pneumonia", pos), ("normal", neg)):
        paths[name] = tmp_path / f"{name}.png"
        PILImage.fromarray(images[idx]).save(paths[name])
        paths[name + "_p"] = float(probs[idx])
    paths["note"] = tmp_path / "note.txt"
    paths["note"].write_text(NOTE)
    return paths


def test_analyze_writes_the_report_contract(cases, tmp_path, bundle):
    out = tmp_path / "report"
    proc = run("analyze", cases["pneumonia"], "--notes", cases["note"], "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert json.loads(proc.stdout) == report
    assert {"findings", "record", "suggestion", "model", "disclaimer"} <= set(report)
    f = report["findings"][0]
    assert f["label"] == "pneumonia" and f["positive"]
    assert f["probability"] == pytest.approx(cases["pneumonia_p"], abs=1e-4)
    assert (out / f["overlay"]).is_file() and (out / f["heatmap"]).is_file()
    r = f["region"]
    assert 0 <= r["x_min"] < r["x_max"] <= 28 and 0 <= r["y_min"] < r["y_max"] <= 28
    overlay = np.asarray(PILImage.open(out / f["overlay"]))
    assert overlay.shape == (28, 28, 3)
    facts = {x["concept"]: x for x in report["record"]["facts"]}
    assert facts["pneumonia"]["negated"] and not facts["pneumonia"]["historical"]
    assert facts["asthma"]["historical"] and not facts["asthma"]["negated"]
    s = report["suggestion"]
    assert s["suggested"] and s["record_agrees"] is False  # the note denies what the image shows
    assert s["uncertainty"]["reasons"]
    assert report["model"]["name"] == "pneumonia" and len(report["model"]["sha256"]) == 64
    assert "not a diagnosis" in report["disclaimer"]
    html = (out / "report.html").read_text()
    assert "not a diagnosis" in html and 'src="overlay.png"' in html and 'src="image.png"' in html


def test_gradcam_plus_plus_is_available_from_analyze(cases, tmp_path):
    out = tmp_path / "pp"
    proc = run("analyze", cases["pneumonia"], "--explain", "gradcam++", "--out", out)
    assert proc.returncode == 0, proc.stderr
    region = json.loads((out / "report.json").read_text())["findings"][0]["region"]
    assert region["source"] == "gradcam++" and (out / "overlay.png").is_file()


def test_several_images_get_one_folder_each_and_a_bad_one_does_not_stop_the_rest(cases, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    out = tmp_path / "many"
    proc = run("analyze", cases["normal"], bad, cases["pneumonia"], "--out", out)
    assert_one_line_error(proc, "broken.png")
    normal = json.loads((out / "normal" / "report.json").read_text())
    assert not normal["suggestion"]["suggested"] and normal["findings"][0]["overlay"] is None
    assert json.loads((out / "pneumonia" / "report.json").read_text())["suggestion"]["suggested"]
    assert not (out / "broken").exists()


def test_a_monochrome1_dicom_radiograph_is_analysed(data_root, tmp_path):
    out = tmp_path / "cr"
    proc = run("analyze", data_root / "dicom" / "RG3_UNCR.dcm", "--out", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["modality"] == "CR" and report["input"]["shape"] == [1760, 1760]
    assert any("reduced" in r for r in report["suggestion"]["uncertainty"]["reasons"])


def test_no_patient_identifier_reaches_outputs(data_root, tmp_path):
    ds = pydicom.dcmread(data_root / "dicom" / "6154")
    ds.PatientName, ds.PatientID = "Doe^Jane", "ID-998877"
    ds.PatientBirthDate, ds.AccessionNumber = "19610203", "ACC-5544"
    src = tmp_path / "study.dcm"
    ds.save_as(src)
    out = tmp_path / "private"
    proc = run("-v", "analyze", src, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    texts = [proc.stdout, proc.stderr] + [p.read_text() for p in out.glob("*.*") if p.suffix in (".json", ".html")]
    for text in texts:
        for ident in IDENTIFIERS:
            assert ident not in text


@pytest.mark.parametrize("make, name", [
    (lambda d: d / "missing.png", "missing.png"),
    (lambda d: (d / "notes.txt").write_text("just text") and d / "notes.txt", "notes.txt"),
    (lambda d: (d / "flat.png", PILImage.fromarray(np.full((28, 28), 7, np.uint8)).save(d / "flat.png"))[0], "flat.png"),
])
def test_bad_images_fail_in_one_line(tmp_path, make, name):
    proc = run("analyze", make(tmp_path), "--out", tmp_path / "out")
    assert_one_line_error(proc, name)
    assert not (tmp_path / "out" / "report.json").exists()


def test_a_truncated_dicom_fails_in_one_line(data_root, tmp_path):
    raw = (data_root / "dicom" / "CT_small.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(raw[: len(raw) // 2])
    assert_one_line_error(run("analyze", cut, "--out", tmp_path / "out"), "cut.dcm")


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary", b"   \n"])
def test_an_unreadable_note_fails_in_one_line(cases, tmp_path, content):
    note = tmp_path / "bad-note.txt"
    note.write_bytes(content)
    proc = run("analyze", cases["normal"], "--notes", note, "--out", tmp_path / "out")
    assert_one_line_error(proc, "bad-note.txt")


def test_evaluate_json_and_predictions(data_root, tmp_path, val):
    from sklearn.metrics import roc_auc_score
    preds = tmp_path / "preds.csv"
    proc = run("evaluate", "--model", "pneumonia", "--data", data_root / "medmnist" / "pneumoniamnist.npz",
               "--split", "val", "--json", "--predictions", preds)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    rows = np.genfromtxt(preds, delimiter=",", names=True)
    assert open(preds).readline().strip() == "id,label,probability"
    assert result["n"] == len(rows) == 524
    np.testing.assert_array_equal(rows["label"], val[1])
    assert result["auc"] == pytest.approx(roc_auc_score(rows["label"], rows["probability"]), abs=1e-6)
    assert result["auc"] >= 0.95
    for key in ("accuracy", "accuracy_at_threshold", "sensitivity", "specificity"):
        assert 0 <= result[key] <= 1


def test_evaluate_on_a_withheld_split_says_so(data_root):
    proc = run("evaluate", "--model", "pneumonia", "--data", data_root / "medmnist" / "pneumoniamnist.npz",
               "--split", "test", "--json")
    assert_one_line_error(proc, "pneumoniamnist.npz")


def test_unknown_model_name_fails_in_one_line(cases, tmp_path):
    proc = run("analyze", cases["normal"], "--model", "no-such-model", "--out", tmp_path / "o")
    assert_one_line_error(proc, "no-such-model")


def test_heatmap_explanation_of_a_model_without_its_own_map_fails_in_one_line(cases, tmp_path):
    proc = run("analyze", cases["normal"], "--model", "pneumonia", "--explain", "heatmap", "--out", tmp_path / "o")
    assert_one_line_error(proc, "pneumonia")
    assert not (tmp_path / "o").exists()


def test_demo_analyses_a_normal_and_a_pneumonia_case(data_root, tmp_path):
    proc = run("demo", "--out", tmp_path / "demo", "--data", data_root, "--offline")
    assert proc.returncode == 0, proc.stderr
    assert "normal" in proc.stdout and "pneumonia" in proc.stdout
    normal = json.loads((tmp_path / "demo" / "normal" / "report.json").read_text())
    pneumonia = json.loads((tmp_path / "demo" / "pneumonia" / "report.json").read_text())
    assert not normal["suggestion"]["suggested"] and pneumonia["suggestion"]["suggested"]
    for case in ("normal", "pneumonia"):
        assert str(tmp_path / "demo" / case / "report.html") in proc.stdout


def test_deid_from_the_command_line_removes_identifiers_and_keeps_pixels(data_root, tmp_path):
    ds = pydicom.dcmread(data_root / "dicom" / "6154")
    ds.PatientName, ds.PatientID = "Doe^Jane", "ID-998877"
    ds.PatientBirthDate, ds.AccessionNumber = "19610203", "ACC-5544"
    src = tmp_path / "in" / "study.dcm"
    src.parent.mkdir()
    ds.save_as(src)
    proc = run("deid", src.parent, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    out = pydicom.dcmread(tmp_path / "out" / "study.dcm")
    raw = (tmp_path / "out" / "study.dcm").read_bytes()
    for ident in IDENTIFIERS:
        assert ident.encode() not in raw and ident not in proc.stdout + proc.stderr
    assert out.PatientIdentityRemoved == "YES"
    np.testing.assert_array_equal(out.pixel_array, ds.pixel_array)
    assert_one_line_error(run("deid", tmp_path / "nowhere", tmp_path / "x"), "nowhere")


def test_cli_knows_every_trainable_data_set():
    from secondread.cli import TRAINABLE
    from secondread.train import DATASETS
    assert sorted(TRAINABLE) == sorted(DATASETS)


def test_evaluate_split_all_with_plots(data_root, tmp_path):
    preds = tmp_path / "all.csv"
    proc = run("evaluate", "--model", "pneumonia", "--data", data_root / "medmnist" / "pneumoniamnist.npz",
               "--split", "all", "--json", "--predictions", preds, "--plots", tmp_path / "plots")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    ids = [line.split(",")[0] for line in preds.read_text().splitlines()[1:]]
    assert result["n"] == len(ids) == 4708 + 524 and len(set(ids)) == len(ids)
    assert ids[0] == "train/0" and "val/523" in ids
    assert (tmp_path / "plots" / "roc.png").is_file() and (tmp_path / "plots" / "confusion.png").is_file()


def test_nodules_command_writes_the_contracted_csv(data_root, tmp_path):
    import csv
    lidc = data_root / "ct" / "LIDC-IDRI-0001"
    out = tmp_path / "nodules.csv"
    proc = run("nodules", lidc / "series", "--json", "--predictions", out)
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)
    rows = list(csv.DictReader(out.open()))
    assert out.read_text().splitlines()[0] == "rank,score,x_mm,y_mm,z_mm,diameter_mm"
    truth = next(csv.DictReader((lidc / "nodules.csv").open()))
    centre = np.array([float(truth[k]) for k in ("x_mm", "y_mm", "z_mm")])
    best = min(rows, key=lambda r: np.linalg.norm(np.array([float(r[k]) for k in ("x_mm", "y_mm", "z_mm")]) - centre))
    distance = np.linalg.norm(np.array([float(best[k]) for k in ("x_mm", "y_mm", "z_mm")]) - centre)
    assert distance < float(truth["diameter_mm"]) / 2  # a candidate sits inside the readers' nodule
    assert_one_line_error(run("nodules", data_root / "dicom" / "CT_small.dcm"), "CT_small.dcm")


def test_localise_command_writes_the_contracted_csv(data_root, renamed_copy, tmp_path):
    import csv
    out = tmp_path / "loc.csv"
    proc = run("localise", "--model", "mammo-blobs", "--data", data_root / "mammography" / "mini-mias",
               "--split", "val", "--json", "--predictions", out)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)["summary"]
    assert out.read_text().splitlines()[0] == "id,rank,score,x,y,radius"
    rows = list(csv.DictReader(out.open()))
    assert all((data_root / "mammography" / "mini-mias" / r["id"]).is_file() for r in rows)
    assert all(0 <= float(r["x"]) < 1024 and 0 <= float(r["y"]) < 1024 for r in rows)
    assert 0 <= summary["top3"] <= 1
    copied = tmp_path / "copy.csv"  # the same split of a copy under another name: the same rows
    proc = run("localise", "--model", "mammo-blobs", "--data", renamed_copy("mammography/mini-mias"),
               "--split", "val", "--predictions", copied)
    assert proc.returncode == 0, proc.stderr
    assert copied.read_text() == out.read_text()
    assert_one_line_error(run("localise", "--model", "nope", "--data", data_root), "nope")


def test_analyze_merges_a_fhir_record_and_flags_a_contradiction(cases, data_root, tmp_path):
    synthea = data_root / "text" / "fhir-synthea"
    smoker = next(synthea.glob("Yi_Weissnat_*.json"))  # index.csv: current every day smoker
    note = tmp_path / "never.txt"
    note.write_text("Never smoker. Cough for two days.\n")
    out = tmp_path / "fhir"
    proc = run("analyze", cases["pneumonia"], "--notes", note, "--record", smoker, "--out", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    record = report["record"]
    assert record["demographics"]["sex"] == "female"
    assert [c["concept"] for c in record["contradictions"]] == ["smoking"]
    assert report["suggestion"]["summary"]["source"] == "deterministic"
    texts = (out / "report.json").read_text() + (out / "report.html").read_text() + proc.stdout + proc.stderr
    assert "Weissnat" not in texts and "Yi_" not in texts  # the file name carries the patient's name


def test_a_3d_model_analyses_a_nifti_volume(data_root, tmp_path):
    import nibabel as nib
    with np.load(data_root / "medmnist" / "adrenalmnist3d.npz") as npz:
        volume = npz["val_images"][0].astype(np.float32)
    path = tmp_path / "adrenal.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    out = tmp_path / "adrenal"
    proc = run("analyze", path, "--model", "adrenal-ct-3d", "--out", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["shape"] == [28, 28, 28] and report["findings"][0]["label"] == "adrenal hyperplasia"
    assert np.asarray(PILImage.open(out / "image.png")).shape == (28, 28)
    assert_one_line_error(run("analyze", data_root / "dicom" / "CT_small.dcm", "--model", "adrenal-ct-3d",
                              "--out", tmp_path / "x"), "CT_small.dcm")


def test_batch_command_resumes_and_reports_failures(cases, tmp_path):
    import pyarrow.parquet as pq
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(cases["pneumonia"], folder / "a.png")
    shutil.copy(cases["normal"], folder / "b.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "batch"
    first = run("batch", folder, "--out", out, "--workers", "0", "--quiet")
    assert first.returncode == 1 and "Traceback" not in first.stderr and "broken.png" in first.stdout
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted(r["status"] for r in table) == ["done", "done", "failed"]
    again = run("batch", folder, "--out", out, "--workers", "0", "--quiet")
    assert "0 analysed now" in again.stdout
    assert pq.read_table(out / "results.parquet").num_rows == 3

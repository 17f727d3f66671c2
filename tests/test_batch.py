"""Batch analysis on real data: rows checked against the model and against ``analyze_image``,
resuming from the journal, ``--retry-failed``, DICOM/series discovery, manifests, and Ray.

The studies are PneumoniaMNIST validation images written as PNG files (the shipped pneumonia
bundle was chosen on this split: these tests check the batch machinery, not the model's accuracy).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage

from secondread.batch import format_summary, run_batch
from secondread.batch.discover import discover
from secondread.batch.journal import NAMES
from secondread.errors import SecondreadError

N = 30


def write_pngs(data_root: Path, folder: Path, n: int = N) -> list[np.ndarray]:
    images = np.load(data_root / "medmnist" / "pneumoniamnist.npz")["val_images"][:n]
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        PILImage.fromarray(im).save(folder / f"{i:03d}.png")
    return list(images)


def rows_of(out: Path) -> list[dict]:
    return pq.read_table(out / "results.parquet").to_pylist()


@pytest.fixture(scope="module")
def pngs(data_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pngs") / "in"
    images = write_pngs(data_root, folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # a corrupt file
    return folder, images


@pytest.fixture(scope="module")
def reference(pngs, tmp_path_factory):
    """One uninterrupted in-process run that the other runs are compared with."""
    out = tmp_path_factory.mktemp("ref") / "out"
    summary = run_batch(pngs[0], out, workers=0, progress=False)
    return out, summary


def test_rows_match_the_model_and_reports_match_analyze(pngs, reference, tmp_path):
    from secondread.analyze import analyze_image
    from secondread.models.bundle import load_bundle

    folder, images = pngs
    out, summary = reference
    rows = {r["source"]: r for r in rows_of(out)}
    assert set(rows) == {f"{i:03d}.png" for i in range(N)} | {"broken.png"}
    assert list(pq.read_schema(out / "results.parquet").names) == list(NAMES)
    # independent reference: the torch network on the pixels as Pillow reads them
    bundle = load_bundle("pneumonia", backend="torch")
    expected = bundle.predict_proba([np.asarray(PILImage.open(folder / f"{i:03d}.png")) for i in range(N)])
    got = np.array([rows[f"{i:03d}.png"]["probability"] for i in range(N)])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # same network; batch of 1 vs 30
    for i in range(N):
        r = rows[f"{i:03d}.png"]
        assert r["status"] == "done" and r["error"] is None
        assert r["positive"] == (r["probability"] >= bundle.threshold)
        assert r["decision"] == (bundle.decide(r["probability"])["operating_point"] or "none")
        assert (r["region"] is not None) == r["positive"]  # Grad-CAM region only when a point is crossed
        assert len(r["study_id"]) == 16 and r["report"] == f"studies/{r['study_id']}/pneumonia"
    bad = rows["broken.png"]
    assert bad["status"] == "failed" and "\n" not in bad["error"] and bad["probability"] is None
    assert summary.rows == {"done": N, "failed": 1} and summary.exit_code == 1
    assert "broken.png" in format_summary(summary)
    # the batch's report is the one analyze_image writes (bar the creation time)
    r = rows["004.png"]
    batch_report = json.loads((out / r["report"] / "report.json").read_text())
    single = analyze_image(folder / "004.png", tmp_path / "single", load_bundle("pneumonia", backend="torch"))
    for report in (batch_report, single):
        report.pop("created")
    single = json.loads(json.dumps(single))
    differ = {k: (batch_report["suggestion"][k], single["suggestion"][k]) for k in single["suggestion"] if single["suggestion"][k] != batch_report["suggestion"].get(k)}
    assert not differ, differ
    assert sorted(p.name for p in (out / r["report"]).iterdir()) == sorted(p.name for p in (tmp_path / "single").iterdir())


def test_pool_gives_the_same_rows_and_resume_skips_what_is_done(pngs, reference, tmp_path):
    ref = {r["study_id"]: r for r in rows_of(reference[0])}
    out = tmp_path / "out"
    first = run_batch(pngs[0], out, workers=2, progress=False)
    assert first.analysed == N + 1
    rows = {r["study_id"]: r for r in rows_of(out)}
    assert rows.keys() == ref.keys()
    for sid, r in rows.items():
        assert (r["status"], r["probability"], r["error"]) == (ref[sid]["status"], ref[sid]["probability"], ref[sid]["error"])
    again = run_batch(pngs[0], out, workers=2, progress=False)
    assert again.analysed == 0 and again.already == N + 1
    assert rows_of(out) == list(rows.values()) or {r["study_id"]: r for r in rows_of(out)} == rows
    retry = run_batch(pngs[0], out, workers=2, retry_failed=True, progress=False)
    assert retry.analysed == 1  # only the failed study
    attempts = {r["source"]: r["attempts"] for r in rows_of(out)}
    assert attempts["broken.png"] == 2 and {v for k, v in attempts.items() if k != "broken.png"} == {1}


def test_dicom_folder_series_and_samples(data_root, tmp_path):
    """A folder with the LIDC series (133 slices, one study, skipped: no CT volume model yet), DICOM
    samples that share a Series UID without stacking (studies one by one), a multi-frame file
    (a volume: skipped) and a 2D CR image (analysed)."""
    inp = tmp_path / "archive"
    shutil.copytree(data_root / "ct" / "LIDC-IDRI-0001" / "series", inp / "lidc")
    (inp / "samples").mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "emri_small.dcm", "6154"):
        shutil.copy(data_root / "dicom" / name, inp / "samples" / name)
    found = discover(inp)
    kinds = {s.source: s.kind for s in found.studies}
    assert kinds == {"lidc": "series", "samples/CT_small.dcm": "image", "samples/MR_small.dcm": "image",
                     "samples/MR_small_RLE.dcm": "image", "samples/emri_small.dcm": "image", "samples/6154": "image"}
    summary = run_batch(inp, tmp_path / "out", workers=0, progress=False)
    rows = {r["source"]: r for r in rows_of(tmp_path / "out")}
    assert rows["lidc"]["status"] == "skipped" and rows["lidc"]["error"].startswith("no model for CT volumes yet")
    assert rows["samples/emri_small.dcm"]["status"] == "skipped"
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "6154"):
        assert rows[f"samples/{name}"]["status"] == "done", rows[f"samples/{name}"]
    # the same pixels re-encoded give the same probability
    assert rows["samples/MR_small.dcm"]["probability"] == pytest.approx(rows["samples/MR_small_RLE.dcm"]["probability"])
    assert summary.exit_code == 0 and summary.rows == {"done": 4, "skipped": 2}


def test_manifest_with_notes_and_identifier_free_names(data_root, pngs, tmp_path):
    """A CSV manifest (path,notes,fhir); a folder named like a patient never reaches a report folder's
    name, a report or the study id."""
    patient = tmp_path / "DOE^JANE_MRN123456"
    patient.mkdir()
    shutil.copy(pngs[0] / "001.png", patient / "chest.png")
    note = Path(__file__).resolve().parents[1] / "src" / "secondread" / "demo" / "note_pneumonia.txt"
    manifest = tmp_path / "list.csv"
    fhir = next((data_root / "text" / "fhir-synthea").glob("Alberto_Atencio_*.json"))  # a name in the file name
    manifest.write_text(f"path,notes,fhir\n{patient.name}/chest.png,{note},{fhir}\nmissing.png,,\n"
                        f"{patient.name}/chest.png,,\n")
    run_batch(manifest, tmp_path / "out", workers=0, progress=False)
    rows = {r["source"]: r for r in rows_of(tmp_path / "out")}
    assert set(rows) == {f"{patient.name}/chest.png", "missing.png"}  # listed twice, analysed once
    assert rows["missing.png"]["status"] == "failed" and "not found" in rows["missing.png"]["error"]
    done = rows[f"{patient.name}/chest.png"]
    report_dir = tmp_path / "out" / done["report"]
    report = (report_dir / "report.json").read_text()
    assert json.loads(report)["record"]["facts"], "the note was read"
    for path in (tmp_path / "out" / "studies").rglob("*"):
        assert "DOE" not in str(path) and "MRN" not in str(path)
    assert "DOE" not in report and "MRN123456" not in report and "DOE" not in done["study_id"]
    assert "Alberto" not in report and "Atencio" not in report


def test_unknown_model_and_missing_input_are_one_line_errors(pngs, tmp_path):
    with pytest.raises(SecondreadError, match="no such model bundle"):
        run_batch(pngs[0], tmp_path / "a", models=("no-such-model",), progress=False)
    with pytest.raises(SecondreadError, match="input not found"):
        run_batch(tmp_path / "nowhere", tmp_path / "b", progress=False)


@pytest.mark.slow
def test_ray_resumes_a_partial_journal_with_identical_results(pngs, reference, tmp_path):
    """Ray (a local instance, 2 actors) finishes a batch whose journal lost 12 studies (as after
    a kill): it analyses exactly those, and the results equal the uninterrupted run's."""
    pytest.importorskip("ray")
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    with sqlite3.connect(out / "journal.sqlite") as db:
        lost = [r[0] for r in db.execute("SELECT study_id FROM results ORDER BY study_id LIMIT 12")]
        db.executemany("DELETE FROM results WHERE study_id = ?", [(s,) for s in lost])
    summary = run_batch(pngs[0], out, workers=2, ray_address="local", progress=False)
    assert summary.backend == "ray" and summary.analysed == 12 and summary.already == N + 1 - 12
    ref = {r["study_id"]: r for r in rows_of(reference[0])}
    rows = {r["study_id"]: r for r in rows_of(out)}
    assert rows.keys() == ref.keys()
    for sid in rows:
        assert (rows[sid]["status"], rows[sid]["probability"], rows[sid]["error"]) == \
               (ref[sid]["status"], ref[sid]["probability"], ref[sid]["error"])
        assert rows[sid]["attempts"] == 1  # no study recorded twice


def test_auto_model_reads_a_ct_series_with_the_nodule_search_and_writes_dicom(data_root, tmp_path):
    """``--model auto``: the LIDC CT goes to the lung-nodule search (SR + SEG beside its report),
    a CR goes to the pneumonia model; each row says which model spoke, once."""
    folder = tmp_path / "in"
    shutil.copytree(data_root / "ct" / "LIDC-IDRI-0001" / "series", folder / "lidc")
    shutil.copy(data_root / "dicom" / "RG3_UNCR.dcm", folder / "cr.dcm")
    out = tmp_path / "out"
    summary = run_batch(folder, out, models=["auto"], workers=0, progress=False)
    rows = {Path(r["source"]).name: r for r in rows_of(out)}
    assert summary.rows["done"] == 2 and set(rows) == {"lidc", "cr.dcm"}
    ct, cr = rows["lidc"], rows["cr.dcm"]
    assert ct["model"] == cr["model"] == "auto"
    assert ct["model_used"] == "lung-nodule-candidates" and ct["probability"] is None
    assert ct["decision"] == "review (>= 6 mm)" and ct["positive"] and "largest" in ct["region"]
    report = json.loads((out / ct["report"] / "report.json").read_text())
    assert ct["region"].startswith(f"{len(report['findings'])} nodule candidate(s)")
    assert {p.name for p in (out / ct["report"]).glob("*.dcm")} == {"sr.dcm", "seg.dcm"}
    assert cr["model_used"] == "pneumonia" and 0 <= cr["probability"] <= 1
    assert (out / cr["report"] / "sr.dcm").is_file()


def test_batch_summaries_from_a_language_model_in_pool_workers(data_root, tmp_path):
    """``--llm-url``: every study's summary is asked of the (scripted, loopback) server, also from
    forked pool workers; an answer the guardrail passes is used, word for word."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from llm_server import ScriptedChatServer

    from secondread.records.llm import LLMConfig

    folder = tmp_path / "in"
    write_pngs(data_root, folder, n=4)
    answer = "The image model gives its calibrated probability for pneumonia. Decision support, not a diagnosis."
    with ScriptedChatServer() as server:
        server.reply(content=answer)
        run_batch(folder, tmp_path / "out", workers=2, progress=False, llm=LLMConfig(url=server.url, model="t"))
        asked = len(server.requests)
    rows = rows_of(tmp_path / "out")
    assert asked == len(rows) == 4 and all(r["status"] == "done" for r in rows)
    summaries = [json.loads((tmp_path / "out" / r["report"] / "report.json").read_text())["suggestion"]["summary"]
                 for r in rows]
    assert all(s["source"] == "llm" and s["text"] == answer for s in summaries), summaries

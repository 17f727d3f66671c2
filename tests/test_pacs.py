"""A real PACS round trip: Orthanc (Debian's orthanc + orthanc-dicomweb) on loopback, started here.

The real LIDC-IDRI series and DICOM samples are uploaded through Orthanc's own REST API; then
``secondread pacs analyze`` and ``secondread pacs watch --once`` run as the user would run them (a
subprocess), and what arrived is checked independently: through Orthanc's REST API and pydicom,
not through our client. The LIDC volume is analysed once in the whole file (by the first watch).
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).parent))
from orthanc import Orthanc, missing

REPO = Path(__file__).resolve().parents[1]
SAMPLES = ["CT_small.dcm", "MR_small.dcm", "RG3_UNCR.dcm"]
OUTPUT_LOG: list[str] = []  # everything our commands printed, for the privacy check at the end
WATCH_ARGS = ["--max-attempts", "1", "--settle", "0"]  # failed studies: retried in the last run only


def run_cli(*args: str, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    """``python -m secondread -v ...`` as a user runs it; output kept for the privacy check."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    env.pop("SECONDREAD_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "secondread", "-v", *args], capture_output=True,
                          text=True, env=env, timeout=600, check=False)
    OUTPUT_LOG.extend([proc.stdout, proc.stderr])
    assert "Traceback" not in proc.stderr, proc.stderr
    if check_rc is not None:
        assert proc.returncode == check_rc, (proc.stdout, proc.stderr)
    return proc


# --- Orthanc and what is uploaded to it ---

@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    why = missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"{why}: the PACS tests need it in CI")
        pytest.skip(why)
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


def _copy_with_new_uids(src: Path, dst: Path, truncate_pixels: bool = False) -> str:
    """A new study from a real file: new study/series/instance UIDs; optionally half its pixel data."""
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if truncate_pixels:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(dst, enforce_file_format=True)
    return ds.StudyInstanceUID


@pytest.fixture(scope="module")
def studies(orthanc, data_root, tmp_path_factory) -> dict[str, str]:
    """Upload the LIDC series, three samples and a broken copy; return name -> Study Instance UID."""
    uids = {}
    series = sorted((data_root / "ct" / "LIDC-IDRI-0001" / "series").glob("*.dcm"))
    assert len(series) == 133
    for path in series:
        uids["lidc"] = _study_uid(orthanc, orthanc.upload(path))
    for name in SAMPLES:
        uids[name] = _study_uid(orthanc, orthanc.upload(data_root / "dicom" / name))
    broken = tmp_path_factory.mktemp("broken") / "broken.dcm"
    _copy_with_new_uids(data_root / "dicom" / "MR_small.dcm", broken, truncate_pixels=True)
    uids["broken"] = _study_uid(orthanc, orthanc.upload(broken))
    return uids


@pytest.fixture(scope="module")
def identifiers(data_root) -> list[str]:
    """Patient names, IDs, birth dates and accession numbers of everything uploaded."""
    found = set()
    files = [data_root / "ct" / "LIDC-IDRI-0001" / "series" / "000001.dcm"]
    files += [data_root / "dicom" / n for n in SAMPLES]
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
            value = str(ds.get(kw, "") or "")
            if len(value) >= 4:
                found.add(value)
                found.update(p for p in value.split("^") if len(p) >= 4)
    assert {"LIDC-IDRI-0001", "CompressedSamples^CT1", "4MR1"} <= found
    return sorted(found)


def _study_uid(orthanc: Orthanc, answer: dict) -> str:
    return orthanc.get_json(f"/studies/{answer['ParentStudy']}")["MainDicomTags"]["StudyInstanceUID"]


def _orthanc_id(orthanc: Orthanc, study_uid: str) -> str:
    status, body = orthanc.request("POST", "/tools/lookup", study_uid.encode(), "text/plain")
    assert status == 200
    return next(r["ID"] for r in json.loads(body) if r["Type"] == "Study")


def study_series(orthanc: Orthanc, study_uid: str) -> list[dict]:
    """The study's series as Orthanc sees them: Modality, SeriesInstanceUID, instance ids."""
    out = []
    for s in orthanc.get_json(f"/studies/{_orthanc_id(orthanc, study_uid)}/series"):
        out.append({**s["MainDicomTags"], "instances": s["Instances"]})
    return out


def read_instance(orthanc: Orthanc, instance_id: str) -> pydicom.Dataset:
    status, body = orthanc.request("GET", f"/instances/{instance_id}/file")
    assert status == 200
    return pydicom.dcmread(io.BytesIO(body))


def our_objects(orthanc: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    """Every instance in the study that is not one of the uploaded image series (i.e. ours)."""
    out = []
    for s in study_series(orthanc, study_uid):
        if s.get("Modality") in ("SR", "SEG") or "secondread" in str(s.get("SeriesDescription", "")).lower():
            out += [read_instance(orthanc, i) for i in s["instances"]]
    return out


def source_sops(orthanc: Orthanc, study_uid: str, modality: str) -> set[str]:
    uids = set()
    for s in study_series(orthanc, study_uid):
        if s.get("Modality") == modality:
            for i in s["instances"]:
                uids.add(orthanc.get_json(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"])
    return uids


SOP_KIND = {"1.2.840.10008.5.1.4.1.1.88.34": "sr", "1.2.840.10008.5.1.4.1.1.66.4": "seg"}


def _kind(ds: pydicom.Dataset) -> str:
    uid = str(ds.SOPClassUID)
    return SOP_KIND.get(uid) or ("sc" if uid.startswith("1.2.840.10008.5.1.4.1.1.7") else uid)


def check_results(orthanc: Orthanc, study_uid: str, modality: str, report_dirs: list[Path],
                  expect: set[str] = frozenset({"sr"})) -> None:
    """Every ``*.dcm`` written next to a report.json is in the study on the PACS, once; our SR, SEG
    and SC are there (at least ``expect``), readable by highdicom/pydicom, in the source's study and
    frame of reference, referencing the source images."""
    import highdicom as hd

    stored = {d.SOPInstanceUID: d for d in our_objects(orthanc, study_uid)}
    written = [f for d in report_dirs for f in d.glob("*.dcm")]
    for f in written:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.SOPInstanceUID in stored, f"{f.name} not on the PACS"
        assert ds.StudyInstanceUID == study_uid
    assert len(stored) == len(written)  # nothing stored twice
    kinds = {_kind(d) for d in stored.values()}
    assert expect <= kinds <= {"sr", "seg", "sc"}, kinds
    sources = source_sops(orthanc, study_uid, modality)
    frames_of_reference = {str(d.get("FrameOfReferenceUID", "")) for d in source_datasets(orthanc, study_uid, modality)}
    for d in stored.values():
        assert d.StudyInstanceUID == study_uid and d.PatientID == _first_source(orthanc, study_uid, modality).PatientID
        if _kind(d) == "sr":
            hd.sr.Comprehensive3DSR.from_dataset(d)  # a valid TID 1500 document for highdicom
            evidence = {r.ReferencedSOPInstanceUID for st in d.CurrentRequestedProcedureEvidenceSequence
                        for se in st.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
            assert evidence & sources and evidence <= sources | set(stored)  # images (+ our SEG)
        elif _kind(d) == "seg":
            seg = hd.seg.Segmentation.from_dataset(d)
            refs = {r.ReferencedSOPInstanceUID for se in d.ReferencedSeriesSequence
                    for r in se.ReferencedInstanceSequence}
            assert refs and refs <= sources
            assert d.FrameOfReferenceUID in frames_of_reference
            assert seg.number_of_segments >= 1 and d.pixel_array.any()
        else:
            assert d.pixel_array.ndim == 3 and d.pixel_array.shape[-1] == 3  # the RGB overlay


def source_datasets(orthanc: Orthanc, study_uid: str, modality: str, limit: int = 2) -> list[pydicom.Dataset]:
    out = []
    for s in study_series(orthanc, study_uid):
        if s.get("Modality") == modality:
            out += [read_instance(orthanc, i) for i in s["instances"][:limit]]
    return out


def _first_source(orthanc: Orthanc, study_uid: str, modality: str) -> pydicom.Dataset:
    return source_datasets(orthanc, study_uid, modality, limit=1)[0]


# --- the client layer (the viewer uses studies() and fetch()) ---

def test_client_lists_studies_without_identifiers(orthanc, studies, identifiers):
    from secondread.pacs.client import PacsClient

    found = {s["study_uid"]: s for s in PacsClient(orthanc.dicomweb).studies()}
    assert set(studies.values()) <= set(found)
    lidc = found[studies["lidc"]]
    assert lidc["modalities"] == ["CT"] and lidc["instances"] == 133 and lidc["series"] == 1
    assert all(set(s) == {"study_uid", "modalities", "series", "instances", "date", "time"} for s in found.values())
    assert not any(i in json.dumps(list(found.values())) for i in identifiers)
    recent = {s["study_uid"] for s in PacsClient(orthanc.dicomweb).studies(since="20040101")}
    assert studies["CT_small.dcm"] in recent and studies["lidc"] not in recent  # LIDC is dated 20000101


def test_client_fetch_writes_series_folders_byte_exact_pixels(orthanc, studies, data_root, tmp_path):
    from secondread.pacs.client import PacsClient

    source = pydicom.dcmread(data_root / "dicom" / "RG3_UNCR.dcm")
    files = PacsClient(orthanc.dicomweb).fetch(studies["RG3_UNCR.dcm"], tmp_path)
    assert files == [tmp_path / source.SeriesInstanceUID / f"{source.SOPInstanceUID}.dcm"]
    fetched = pydicom.dcmread(files[0])
    assert fetched.PixelData == source.PixelData and fetched.Rows == source.Rows
    assert not list(tmp_path.rglob("*.tmp"))


def test_client_store_sends_instances_with_stow(orthanc, data_root, tmp_path):
    """STOW-RS round trip on a throw-away study (deleted afterwards, so the watch tests never see it)."""
    from secondread.errors import SecondreadError
    from secondread.pacs.client import PacsClient

    copy = tmp_path / "copy.dcm"
    uid = _copy_with_new_uids(data_root / "dicom" / "CT_small.dcm", copy)
    client = PacsClient(orthanc.dicomweb)
    assert client.store([copy]) == 1
    try:
        [series] = study_series(orthanc, uid)
        stored = read_instance(orthanc, series["instances"][0])
        assert stored.SOPInstanceUID == pydicom.dcmread(copy).SOPInstanceUID
        assert stored.pixel_array.tolist() == pydicom.dcmread(copy).pixel_array.tolist()
    finally:
        orthanc.request("DELETE", f"/studies/{_orthanc_id(orthanc, uid)}")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    with pytest.raises(SecondreadError, match="junk.dcm: not a readable DICOM file"):
        client.store([junk])


# --- pacs analyze ---

@pytest.fixture(scope="module")
def analyzed_mr(orthanc, studies, tmp_path_factory):
    out = tmp_path_factory.mktemp("pacs-analyze")
    proc = run_cli("pacs", "analyze", "--url", orthanc.dicomweb, "--study", studies["MR_small.dcm"],
                   "--out", str(out))
    return proc, out


def test_pacs_analyze_fetches_analyses_and_stores_back(orthanc, studies, analyzed_mr):
    proc, out = analyzed_mr
    report_dirs = [p.parent for p in out.glob("*/report.json")]
    assert len(report_dirs) == 1, proc.stdout  # one series, one image
    report = json.loads((report_dirs[0] / "report.json").read_text())
    assert report["input"]["modality"] == "MR"
    assert report_dirs[0].name in proc.stdout and "stored" in proc.stdout
    check_results(orthanc, studies["MR_small.dcm"], "MR", report_dirs)


def test_pacs_analyze_errors_are_one_line(orthanc, studies):
    proc = run_cli("pacs", "analyze", "--url", orthanc.dicomweb, "--study", "1.2.3.4.5", check_rc=1)
    assert proc.stderr.strip().splitlines()[-1] == \
        f"secondread: error: {orthanc.dicomweb} study 1.2.3.4.5: study not found on the server (HTTP 404)"
    with_port = f"http://127.0.0.1:{_closed_port()}/dicom-web"
    proc = run_cli("pacs", "analyze", "--url", with_port, "--study", "1.2.3", check_rc=1)
    assert len(proc.stderr.strip().splitlines()) == 1 and with_port in proc.stderr and "cannot connect" in proc.stderr


def _closed_port() -> int:
    from orthanc import free_port
    return free_port()  # nothing listens there once the probe socket is closed


class _HtmlHandler(BaseHTTPRequestHandler):
    """A web server that answers every request with an HTML page (a wrong URL, a login page...)."""

    def do_GET(self):
        body = b"<html><body>not a PACS</body></html>"
        self.send_response(500 if "1.2.500" in self.path else 200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_non_dicom_answers_are_one_line_errors():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HtmlHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    try:
        proc = run_cli("pacs", "analyze", "--url", url, "--study", "1.2.3", check_rc=1)
        assert len(proc.stderr.strip().splitlines()) == 1 and "not DICOMweb" in proc.stderr, proc.stderr
        proc = run_cli("pacs", "analyze", "--url", url, "--study", "1.2.500", check_rc=1)
        assert proc.stderr.strip() == \
            f"secondread: error: {url} study 1.2.500: the server answered HTTP 500 Internal Server Error"
        from secondread.errors import SecondreadError
        from secondread.pacs.client import PacsClient

        with pytest.raises(SecondreadError, match="not DICOMweb|not a DICOM JSON"):
            PacsClient(url).studies()
    finally:
        server.shutdown()


# --- pacs watch ---

def state_rows(path: Path) -> dict[str, dict]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    rows = {r["study_uid"]: dict(r) for r in db.execute("SELECT * FROM studies")}
    db.close()
    return rows


@pytest.fixture(scope="module")
def first_watch(orthanc, studies, analyzed_mr, tmp_path_factory):
    work = tmp_path_factory.mktemp("watch")
    state, out = work / "state.sqlite", work / "out"
    proc = run_cli("pacs", "watch", "--url", orthanc.dicomweb, "--state", str(state), "--out", str(out),
                   "--once", *WATCH_ARGS, check_rc=1)  # 1: the broken study failed
    return proc, state, out


def test_watch_analyses_every_study_and_records_the_failure(orthanc, studies, first_watch):
    proc, state, out = first_watch
    rows = state_rows(state)
    assert set(rows) == set(studies.values())
    for name, uid in studies.items():
        row = rows[uid]
        assert row["attempts"] == 1 and row["finished"], row
        if name == "broken":
            assert row["status"] == "failed"
            assert row["error"] and "\n" not in row["error"] and "instance" in row["error"]
        else:
            assert row["status"] == "done" and row["error"] is None, row
    assert f"poll: {len(studies)} study(ies) on the server" in proc.stdout and "1 failed" in proc.stdout
    assert f"study {studies['broken']}: failed:" in proc.stderr
    # the LIDC series is one volume: one input, one report folder
    assert rows[studies["lidc"]]["inputs"] == 1
    lidc_reports = [p.parent for p in (out / studies["lidc"]).glob("*/report.json")]
    assert len(lidc_reports) == 1
    assert json.loads((lidc_reports[0] / "report.json").read_text())["input"]["shape"][0] == 133
    check_results(orthanc, studies["lidc"], "CT", lidc_reports, expect={"sr", "seg", "sc"})
    for name, modality in (("CT_small.dcm", "CT"), ("RG3_UNCR.dcm", "CR")):
        check_results(orthanc, studies[name], modality,
                      [p.parent for p in (out / studies[name]).glob("*/report.json")])
    assert rows[studies["MR_small.dcm"]]["inputs"] == 0  # `pacs analyze` did it: our SR is there, not redone


def _instance_counts(orthanc: Orthanc, uids) -> dict[str, int]:
    return {u: sum(len(s["instances"]) for s in study_series(orthanc, u)) for u in uids}


def test_second_watch_analyses_nothing_new(orthanc, studies, first_watch):
    _, state, out = first_watch
    before_rows, before_counts = state_rows(state), _instance_counts(orthanc, studies.values())
    proc = run_cli("pacs", "watch", "--url", orthanc.dicomweb, "--state", str(state), "--out", str(out),
                   "--once", *WATCH_ARGS)
    assert "0 analysed, 0 failed" in proc.stdout
    assert state_rows(state) == before_rows
    assert _instance_counts(orthanc, studies.values()) == before_counts


def test_watch_restart_after_a_crash_redoes_that_study_only(orthanc, studies, first_watch, data_root,
                                                            tmp_path):
    _, state, out = first_watch
    new = tmp_path / "new.dcm"
    new_uid = _copy_with_new_uids(data_root / "dicom" / "CT_small.dcm", new)
    orthanc.upload(new)
    before = state_rows(state)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "secondread", "pacs", "watch", "--url", orthanc.dicomweb,
                             "--state", str(state), "--out", str(out), "--once", *WATCH_ARGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            row = state_rows(state).get(new_uid) if state.exists() else None
            if row and row["status"] == "running":
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the watcher finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # a crash mid-study: no clean-up of any kind
    finally:
        proc.wait(timeout=30)
        OUTPUT_LOG.extend(proc.communicate())
    crashed = state_rows(state)
    assert crashed[new_uid]["status"] == "running" and crashed[new_uid]["attempts"] == 1
    # the restart may try a failed study again (--max-attempts 2): the broken one fails again
    proc = run_cli("pacs", "watch", "--url", orthanc.dicomweb, "--state", str(state), "--out", str(out),
                   "--once", "--settle", "0", "--max-attempts", "2", check_rc=1)
    assert "1 analysed, 1 failed" in proc.stdout and f"study {new_uid}: done" in proc.stdout
    after = state_rows(state)
    assert after[new_uid]["status"] == "done" and after[new_uid]["attempts"] == 2
    broken = studies["broken"]
    assert after[broken]["status"] == "failed" and after[broken]["attempts"] == 2
    assert {u: r for u, r in after.items() if u not in (new_uid, broken)} == \
        {u: r for u, r in before.items() if u != broken}
    reports = [p.parent for p in (out / new_uid).glob("*/report.json")]
    assert len(reports) == 1
    check_results(orthanc, new_uid, "CT", reports)
    srs = [d for d in our_objects(orthanc, new_uid) if d.Modality == "SR"]
    assert len(srs) == 1  # one set of results, not two


def test_state_waits_for_a_study_to_settle_and_allows_one_watcher(tmp_path):
    from secondread.errors import SecondreadError
    from secondread.pacs.watch import State

    state = State(tmp_path / "s.sqlite")
    try:
        with pytest.raises(SecondreadError, match="another watcher is using this state file"):
            State(tmp_path / "s.sqlite")
        study = {"study_uid": "1.2.3", "instances": 10}
        assert state.settled([study], 0.3) == []  # first seen
        time.sleep(0.35)
        assert state.settled([{**study, "instances": 12}], 0.3) == []  # still arriving
        assert state.settled([{**study, "instances": 12}], 0.3) == []
        time.sleep(0.35)
        assert state.settled([{**study, "instances": 12}], 0.3) == ["1.2.3"]
        assert state.settled([study], 0) == ["1.2.3"]
    finally:
        state.close()
    State(tmp_path / "s.sqlite").close()  # the lock went with the first watcher


# --- privacy: last, over everything the commands above printed and stored ---

def test_no_patient_identifier_in_output_or_state(identifiers, first_watch):
    _, state, out = first_watch
    assert len(OUTPUT_LOG) >= 8  # the commands above ran (with -v)
    text = "\n".join(OUTPUT_LOG)
    state_bytes = state.read_bytes()
    reports = "\n".join(p.read_text(errors="replace") for p in out.rglob("report.*"))
    for ident in identifiers:
        assert ident not in text, "a patient identifier appears in the output"
        assert ident.encode() not in state_bytes, "a patient identifier appears in the state file"
        assert ident not in reports, "a patient identifier appears in a report"

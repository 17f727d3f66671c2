"""The optional language-model backend against a real HTTP server on loopback.

The server (``tests/llm_server.py``) speaks the OpenAI-compatible chat API and is scripted per
test: a faithful answer, an answer that invents a finding / a side / a size / a category, a late
answer, an HTTP error, malformed JSON, a redirect. A llama.cpp server with a tiny GGUF model is
used as well when ``llama_cpp`` and ``gguf`` are installed (see ``test_llama_cpp_server``).
"""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest
from llm_server import ScriptedChatServer

from secondread.errors import SecondreadError
from secondread.records import llm
from secondread.records.fhir import read_fhir
from secondread.records.merge import merge_record
from secondread.records.notes import extract_facts

NOTE = ("Mr. Quentin Zarkovsky (MRN 55512345), seen 2024-03-02. Never smoker. Fever and productive cough "
        "for three days. No pneumonia in the past.")
SECRETS = ["Quentin", "Zarkovsky", "55512345", "2024-03-02", "productive cough for three days"]
FINDINGS = [{"label": "pneumonia", "probability": 0.8731, "positive": True, "operating_point_crossed": "balanced",
             "region": {"x": 120, "y": 88, "width": 40, "height": 52},
             "measurements": {"width_mm": 23.4, "height_mm": 30.1}}]
FAITHFUL = ("The image model suggests pneumonia with a calibrated probability of 87%, in a 23-year-old female. "
            "The note says never smoker while the coded record says current smoker; the note mentions fever and cough.")


@pytest.fixture(scope="module")
def record(data_root):
    bundle = data_root / "text" / "fhir-synthea" / "Yi_Weissnat_0edbf0a2-10d4-4ccd-a522-6aaeb41f2b41.json"
    return merge_record(extract_facts(NOTE, source="note.txt"), read_fhir(bundle))


@pytest.fixture()
def server():
    with ScriptedChatServer() as s:
        yield s


def config(server, **kw):
    return llm.LLMConfig(url=server.url, model="tiny-test", **kw)


def test_off_by_default_is_deterministic_and_passes_its_own_guardrail(record):
    summary = llm.summarise(record, FINDINGS)
    assert summary.source == "deterministic" and summary.note is None
    assert summary.text == llm.deterministic_summary(record, FINDINGS)
    assert "suggests pneumonia" in summary.text and "23-year-old female" in summary.text
    assert "disagree on smoking" in summary.text and summary.text.endswith(llm.DISCLAIMER)
    facts = llm.structured_payload(record, FINDINGS)
    assert llm.check_output(summary.text, facts) == []
    assert llm.check_output(llm.deterministic_explanation(FINDINGS, record), facts) == []
    assert llm.explain_why("why pneumonia?", FINDINGS, record).source == "deterministic"


def test_deterministic_summaries_of_every_synthea_record_pass_the_guardrail(data_root):
    for path in sorted((data_root / "text" / "fhir-synthea").glob("*.json")):
        merged = merge_record(None, read_fhir(path))
        text = llm.deterministic_summary(merged, FINDINGS)
        assert llm.check_output(text, llm.structured_payload(merged, FINDINGS)) == [], path.name


def test_faithful_answer_passes_and_only_structured_data_is_sent(server, record, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    server.reply(content=FAITHFUL)
    summary = llm.summarise(record, FINDINGS, config(server))
    assert (summary.source, summary.text, summary.note) == ("llm", FAITHFUL, None)
    assert len(server.requests) == 1
    sent = server.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["json"]["model"] == "tiny-test"
    assert [m["role"] for m in sent["json"]["messages"]] == ["system", "user"]
    body = json.dumps(sent["json"])
    for secret in SECRETS:
        assert secret not in body
    sent_facts = json.loads(sent["json"]["messages"][1]["content"].split("\n", 1)[1])
    assert sent_facts == llm.structured_payload(record, FINDINGS)
    assert sent_facts["findings"][0]["label"] == "pneumonia" and "region" not in sent_facts["findings"][0]
    assert {"concept": "fever", "stance": "present", "from": "note"} in sent_facts["record"]
    out, err = capfd.readouterr()
    for secret in SECRETS + ["Fever", "never smoker"]:
        assert secret not in caplog.text + out + err


@pytest.mark.parametrize("answer, reason", [
    ("Pneumonia is likely; a small pneumothorax is also present.", "mentions pneumothorax"),
    ("Pneumonia in the right lower lobe, probability 87%.", "laterality right"),
    ("Pneumonia with a 15 mm consolidation.", "mentions consolidation"),
    ("Pneumonia; the region measures 4.5 cm.", "states 4.5 cm"),
    ("Pneumonia (87%), Lung-RADS 4B.", "Lung-RADS 4B"),
    ("Pneumonia, history of lung cancer.", "mentions lung cancer"),
])
def test_invented_content_is_dropped_for_the_deterministic_summary(server, record, answer, reason, caplog):
    caplog.set_level(logging.INFO)
    server.reply(content=answer)
    summary = llm.summarise(record, FINDINGS, config(server))
    assert summary.source == "deterministic"
    assert summary.text == llm.deterministic_summary(record, FINDINGS)
    assert summary.note.startswith("language model answer dropped by the guardrail") and reason in summary.note
    assert "\n" not in summary.note
    assert reason in caplog.text and "Zarkovsky" not in caplog.text


STANCE_FINDINGS = [{"label": "pneumonia", "probability": 0.8731, "positive": True},
                   {"label": "pneumothorax", "probability": 0.04, "positive": False}]


@pytest.fixture(scope="module")
def plain_record():
    """Fever and cough present, pleural effusion absent; nothing says pneumonia is absent."""
    return merge_record(extract_facts("Fever and productive cough for three days. No pleural effusion."), None)


@pytest.mark.parametrize("answer, reason", [
    ("There is no pneumonia; the patient has fever and cough.", "states pneumonia as absent"),
    ("Pneumonia has been ruled out.", "states pneumonia as absent"),
    ("Pneumonia is likely; the patient is afebrile.", "states fever as absent"),
    ("Pneumonia with a pleural effusion.", "states pleural effusion as present"),
    ("Pneumonia and a small pneumothorax.", "states pneumothorax as present"),
])
def test_opposite_stance_is_dropped_for_the_deterministic_summary(server, plain_record, answer, reason):
    server.reply(content=answer)
    summary = llm.summarise(plain_record, STANCE_FINDINGS, config(server))
    assert summary.source == "deterministic"
    assert summary.text == llm.deterministic_summary(plain_record, STANCE_FINDINGS)
    assert summary.note.startswith("language model answer dropped by the guardrail") and reason in summary.note


@pytest.mark.parametrize("answer", [
    "The image model suggests pneumonia (87%), not pneumothorax; no pleural effusion; fever and cough.",
    "Pneumonia is suggested. Pneumothorax is not suggested. The note mentions fever and cough but no effusion.",
    "Possible pneumothorax is not excluded by the note; pneumonia is suggested.",  # uncertain: not compared
    # a model's probability of a finding asserts neither presence nor absence: not compared, so a
    # faithful "4 % probability of pneumothorax" on a negative finding is not dropped
    "Pneumonia is suggested; the probability of pneumothorax is 4%, below the threshold.",
    "The model gives a low probability of pneumothorax and suggests pneumonia.",
])
def test_same_stance_in_other_words_passes(server, plain_record, answer):
    server.reply(content=answer)
    assert llm.summarise(plain_record, STANCE_FINDINGS, config(server)).source == "llm"


def test_deterministic_text_reads_back_with_its_own_stances(plain_record, record):
    """The fallback must pass its own stance check, whatever stances the record holds (including the
    wording that used to fail: "present: ...; absent: ..." made "absent" negate every concept before it)."""
    note = extract_facts("Never smoker. Fever and productive cough. No pneumonia in the past. Mother had lung "
                         "cancer. Possible tuberculosis. History of asthma. Afebrile today.")
    for rec in (plain_record, record, merge_record(note, None)):
        for findings in (STANCE_FINDINGS, FINDINGS, []):
            facts = llm.structured_payload(rec, findings)
            for text in (llm.deterministic_summary(rec, findings), llm.deterministic_explanation(findings, rec)):
                assert llm.check_output(text, facts) == [], text
    text = llm.deterministic_summary(plain_record, STANCE_FINDINGS)
    assert llm.stated_stances(text) == {"pneumonia": {"affirmed"}, "pneumothorax": {"negated"}, "fever": {"affirmed"},
                                        "cough": {"affirmed"}, "pleural_effusion": {"negated"}}


def test_sizes_within_rounding_and_unit_conversion_pass(server, record):
    server.reply(content="Pneumonia (87%); the highlighted region is 2.3 cm wide and 30 mm high.")
    assert llm.summarise(record, FINDINGS, config(server)).source == "llm"
    server.reply(content="Pneumonia; the region is 2.6 cm wide.")  # 26 mm: no such size
    assert llm.summarise(record, FINDINGS, config(server)).source == "deterministic"


def test_explain_why_is_guarded_too(server, record):
    server.reply(content="Because the model gives pneumonia 87% and the note mentions fever and cough.")
    answer = llm.explain_why("Why pneumonia? Patient Mr. Quentin Zarkovsky, MRN 55512345.", FINDINGS, record,
                             config(server))
    assert answer.source == "llm"
    body = json.dumps(server.requests[-1]["json"])
    assert "Zarkovsky" not in body and "55512345" not in body and "Why pneumonia?" in body
    server.reply(content="Because of the left-sided effusion.")
    answer = llm.explain_why("Why?", FINDINGS, record, config(server))
    assert answer.source == "deterministic" and "pleural effusion" in answer.note and "left" in answer.note
    assert answer.text == llm.deterministic_explanation(FINDINGS, record)


def test_timeout_falls_back_within_the_configured_time(server, record):
    server.reply(delay=20, content=FAITHFUL)
    started = time.monotonic()
    summary = llm.summarise(record, FINDINGS, config(server, timeout=0.5))
    elapsed = time.monotonic() - started
    assert summary.source == "deterministic" and "0.5 s time-out" in summary.note
    assert elapsed < 0.5 + 1.5, elapsed  # the configured time-out plus a margin for a busy machine


@pytest.mark.parametrize("behaviour, reason", [
    ({"status": 500}, "HTTP error 500"),
    ({"status": 404}, "HTTP error 404"),
    ({"raw": b"{not json"}, "malformed answer (not JSON)"),
    ({"raw": b'{"choices": []}'}, "malformed answer (no choices[0].message.content)"),
    ({"content": "   "}, "empty answer"),
    ({"redirect": "http://10.255.255.1:9/v1/chat/completions"}, "HTTP error 302"),
])
def test_server_errors_fall_back(server, record, behaviour, reason):
    server.reply(**behaviour)
    summary = llm.summarise(record, FINDINGS, config(server, timeout=5))
    assert summary.source == "deterministic" and summary.note == f"language model not used: {reason}"
    assert summary.text == llm.deterministic_summary(record, FINDINGS)


def test_server_down_falls_back(record):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    summary = llm.summarise(record, FINDINGS, llm.LLMConfig(url=f"http://127.0.0.1:{port}", model="m", timeout=5))
    assert summary.source == "deterministic" and summary.note.startswith("language model not used: cannot reach")


@pytest.mark.parametrize("url", ["http://10.0.0.7:8080", "http://192.168.1.20:11434", "https://api.example.org",
                                 "http://127.0.0.1.example.org:80", "ftp://127.0.0.1/", "not a url", "http://[::1"])
def test_non_loopback_or_bad_urls_are_refused(url):
    with pytest.raises(SecondreadError) as info:
        llm.LLMConfig(url=url, model="m")
    assert "\n" not in str(info.value) and "language-model URL" in str(info.value)


def test_loopback_forms_and_explicit_remote_are_accepted():
    for url in ("http://127.0.0.1:8080", "http://127.1.2.3:1", "http://localhost:11434/", "http://[::1]:8000"):
        assert llm.LLMConfig(url=url, model="m").endpoint.endswith("/v1/chat/completions")
    assert llm.LLMConfig(url="https://gpu-box.example.org", model="m", allow_remote=True)
    with pytest.raises(SecondreadError, match="time-out"):
        llm.LLMConfig(url="http://127.0.0.1:1", model="m", timeout=0)


def test_scrub_removes_identifier_patterns():
    text = llm.scrub("Mrs. Ann Lee, MRN: A12345, DOB 03/04/1961, acc 2024-01-02, 1.2.840.113619.2.5, a@b.org, "
                     "(617) 555-1234, pneumonia 23 mm")
    for secret in ("Ann Lee", "A12345", "03/04/1961", "2024-01-02", "1.2.840", "a@b.org", "555-1234"):
        assert secret not in text
    assert text.endswith("pneumonia 23 mm")


# ------------------------------------------------------------------ a real llama.cpp server


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server on loopback with two tiny GGUF models it builds.

    Skipped when ``llama_cpp`` (``pip install 'secondread[llm-test]'``: a source build of llama.cpp)
    or ``gguf`` is not installed; the scripted server above covers the same behaviour without them.
    """
    pytest.importorskip("gguf")
    pytest.importorskip("llama_cpp.server.app")
    import subprocess
    import sys
    import urllib.request

    from tiny_gguf import write_tiny_gguf

    folder = tmp_path_factory.mktemp("gguf")
    models = [{"model": str(write_tiny_gguf(folder / f"{word}.gguf", word)), "model_alias": f"tiny-{word}",
               "chat_format": "chatml", "n_ctx": 4096, "n_threads": 1, "verbose": False}
              for word in ("pneumonia", "left")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = folder / "server.json"
    settings.write_text(json.dumps({"host": "127.0.0.1", "port": port, "models": models}))
    log_file = open(folder / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file", str(settings)],
                            stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=2) as r:
                    served = {m["id"] for m in json.load(r)["data"]}
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("llama.cpp server did not start: " + (folder / "server.log").read_text()[-500:])
                time.sleep(0.3)
        assert served == {"tiny-pneumonia", "tiny-left"}
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()


def test_llama_cpp_server_answer_within_the_result_is_used(llama_server, record):
    summary = llm.summarise(record, FINDINGS, llm.LLMConfig(url=llama_server, model="tiny-pneumonia",
                                                            timeout=60, max_tokens=6))
    assert summary.source == "llm" and summary.note is None
    assert summary.text.split() == ["pneumonia"] * 6


def test_llama_cpp_server_invented_side_is_dropped(llama_server, record):
    summary = llm.explain_why("Why pneumonia?", FINDINGS, record,
                              llm.LLMConfig(url=llama_server, model="tiny-left", timeout=60, max_tokens=6))
    assert summary.source == "deterministic" and "laterality left" in summary.note
    assert summary.text == llm.deterministic_explanation(FINDINGS, record)


def test_llama_cpp_server_time_out_falls_back(llama_server, record):
    started = time.monotonic()
    summary = llm.summarise(record, FINDINGS, llm.LLMConfig(url=llama_server, model="tiny-pneumonia",
                                                            timeout=0.05, max_tokens=200))
    assert summary.source == "deterministic" and "time-out" in summary.note
    assert time.monotonic() - started < 0.05 + 1.5

"""FHIR R4 bundles (Synthea) -> PatientRecord, and the merge with a note.

References are independent of the code under test: the data set's own ``index.csv`` (age, sex,
latest smoking status, notable conditions), a plain ``json`` walk of each bundle, and a
hand-written table of which SNOMED display means which of our concepts.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import json
import re

import pytest

from secondread.errors import SecondreadError
from secondread.records.fhir import read_fhir
from secondread.records.merge import load_record, merge_record
from secondread.records.notes import extract_facts
from secondread.suggest import record_evidence

# Hand-checked: each notable condition of index.csv and the concept it must become.
NOTABLE = {
    "Non-small cell carcinoma of lung, TNM stage 1 (disorder)": ("lung_cancer", {}),
    "Non-small cell lung cancer (disorder)": ("lung_cancer", {}),
    "Suspected lung cancer (situation)": ("lung_cancer", {"uncertain": True}),
    "Pulmonary emphysema (disorder)": ("emphysema", {}),
    "Chronic obstructive bronchitis (disorder)": ("copd", {}),
    "Epilepsy": ("epilepsy", {}),
    "Seizure disorder": ("epilepsy", {}),
    "History of single seizure (situation)": ("seizure", {"historical": True}),
    "Childhood asthma": ("asthma", {"historical": True}),  # resolved in 2013 (abatementDateTime)
    "Brain damage - traumatic": ("brain_injury", {}),
    "Stroke": ("stroke", {}),
}
SMOKING = {"Former smoker": "former", "Never smoker": "never", "Current every day smoker": "current"}


@pytest.fixture(scope="module")
def synthea(data_root):
    folder = data_root / "text" / "fhir-synthea"
    with open(folder / "index.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8
    return folder, rows


def _resources(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _day(text: str) -> dt.date:
    return dt.date.fromisoformat(text[:10])


def _latest_clinical_date(bundle: dict) -> dt.date:
    """Independent: the latest clinical date in the bundle (period ends are plans and bills, not events)."""
    found = re.findall(r'"(?:effectiveDateTime|onsetDateTime|abatementDateTime|authoredOn|issued|start|'
                       r'recordedDate|date|occurrenceDateTime|performedDateTime)": "(\d{4}-\d{2}-\d{2})',
                       json.dumps(bundle))
    return max(dt.date.fromisoformat(d) for d in found)


def _age(born: dt.date, at: dt.date) -> int:
    years = at.year - born.year
    if (at.month, at.day) < (born.month, born.day):
        years -= 1
    return years


def test_synthea_demographics_smoking_and_conditions(synthea):
    folder, rows = synthea
    for row in rows:
        path = folder / row["file"]
        raw = json.loads(path.read_text(encoding="utf-8"))
        patient = _resources(raw, "Patient")[0]
        died = patient.get("deceasedDateTime")
        at = _day(died) if died else _latest_clinical_date(raw)
        record = read_fhir(path, reference_date=at)
        demo = record.demographics

        # Age and sex: the index and our own computation from the raw birth date agree with the record.
        assert demo["age"] == int(row["patient_age"]) == _age(_day(patient["birthDate"]), at), row["file"]
        assert demo["sex"] == row["sex"]
        assert demo["deceased"] == bool(died)
        assert demo["age_at"] == ("death" if died else "reference date")

        # Smoking: the index's latest status, and a json walk to the latest 72166-2 observation.
        smoking_obs = sorted(
            (o for o in _resources(raw, "Observation") if o["code"]["coding"][0]["code"] == "72166-2"),
            key=lambda o: o["effectiveDateTime"])
        latest = smoking_obs[-1]["valueCodeableConcept"]["coding"][0]["display"]
        assert SMOKING[latest] == SMOKING[row["smoking_status"]] == record.smoking["status"]
        assert record.smoking["observations"] == len(smoking_obs)
        ever_current = any(o["valueCodeableConcept"]["coding"][0]["code"] == "449868002" for o in smoking_obs)
        assert record.smoking["ever_current"] == ever_current
        smoke_facts = [f for f in record.facts if f["concept"] == "smoking"]
        assert len(smoke_facts) == 1
        assert smoke_facts[0]["negated"] == (record.smoking["status"] == "never")
        assert smoke_facts[0]["historical"] == (record.smoking["status"] == "former")

        # Conditions: every notable condition, with the concept and flags of the hand table.
        conditions = {c["code"]["coding"][0]["display"]: c for c in _resources(raw, "Condition")}
        notable = [n for n in row["notable_conditions"].split("; ") if n]
        for name in notable:
            concept, flags = NOTABLE[name]
            facts = [f for f in record.facts if f["text"] == name]
            assert len(facts) == 1, (row["file"], name)
            fact = facts[0]
            assert fact["concept"] == concept and fact["section"] == "fhir:Condition"
            assert fact["attributes"]["code"] == conditions[name]["code"]["coding"][0]["code"]
            assert fact["attributes"]["onset"] == conditions[name]["onsetDateTime"][:10]
            resolved = "abatementDateTime" in conditions[name]
            assert fact["attributes"]["status"] == ("resolved" if resolved else "active")
            for flag in ("negated", "uncertain", "historical", "family", "hypothetical"):
                assert fact[flag] == flags.get(flag, False), (name, flag)
        # Nothing else becomes a concept fact; every other Condition is kept as "other".
        mapped = [f for f in record.facts if f["section"] == "fhir:Condition"]
        assert len(mapped) + len(record.other_conditions) == len(_resources(raw, "Condition"))
        assert {f["text"] for f in mapped} == set(notable)


def test_synthea_output_has_no_identifiers(synthea):
    folder, rows = synthea
    for row in rows:
        path = folder / row["file"]
        raw = json.loads(path.read_text(encoding="utf-8"))
        patient = _resources(raw, "Patient")[0]
        merged = merge_record(None, read_fhir(path))
        text = json.dumps(merged)
        secrets = [patient["birthDate"], patient["id"], *patient["name"][0]["given"], patient["name"][0]["family"],
                   *[i["value"] for i in patient.get("identifier", [])],
                   *[line for a in patient.get("address", []) for line in a.get("line", [])],
                   *[t["value"] for t in patient.get("telecom", [])], path.name, path.stem.split("_")[0]]
        for secret in secrets:
            assert secret not in text, (row["file"], "identifier leaked")


def test_merge_flags_note_that_contradicts_the_record(synthea):
    folder, _ = synthea
    record = read_fhir(folder / "Birgit_Schmeler_7e8ee10e-569b-4229-9380-62c49244902c.json")
    note = extract_facts("SOCIAL HISTORY: Former smoker, quit in 2010.\nASSESSMENT: Patient denies COPD. "
                         "Mother had asthma.", source="note.txt")
    merged = merge_record(note, record)
    assert set(merged) >= {"source", "area", "facts", "demographics", "contradictions"}
    assert merged["source"] == "note.txt + fhir" and merged["area"] == "chest"
    assert merged["demographics"]["sex"] == "female"
    assert {f["origin"] for f in merged["facts"]} == {"note", "fhir"}
    by_concept = {c["concept"]: c for c in merged["contradictions"]}
    assert set(by_concept) == {"smoking", "copd"}  # the mother's asthma is not the patient's
    assert by_concept["smoking"]["note_says"] == "former smoker"
    assert by_concept["smoking"]["record_says"] == "never smoker"
    assert by_concept["copd"]["note_says"] == "absent"
    assert "Chronic obstructive bronchitis" in by_concept["copd"]["record_says"]
    cited = by_concept["copd"]["sources"]["note"][0]
    assert note_text_at(note, cited) == "COPD"
    assert by_concept["copd"]["sources"]["fhir"][0]["code"] == "185086009"


def note_text_at(note, cited):
    return next(f.text for f in note.facts if f.start == cited["start"] and f.end == cited["end"])


def test_merge_never_smoker_note_vs_current_smoker_record_and_agreeing_note(synthea):
    folder, _ = synthea
    record = read_fhir(folder / "Yi_Weissnat_0edbf0a2-10d4-4ccd-a522-6aaeb41f2b41.json")
    merged = merge_record(extract_facts("Never smoker. No pneumonia."), record)
    assert [(c["concept"], c["note_says"], c["record_says"]) for c in merged["contradictions"]] == [
        ("smoking", "never smoker", "current smoker")]
    agree = merge_record(extract_facts("Current smoker. No pneumonia."), record)
    assert agree["contradictions"] == []
    # The coded current smoking is a risk factor for pneumonia; the note's negated pneumonia contradicts.
    evidence = record_evidence("pneumonia", agree["facts"])
    assert [f["text"] for f in evidence["risk_factors"]] == ["Current smoker", "Current every day smoker"]
    assert [f["concept"] for f in evidence["contradicts"]] == ["pneumonia"]


def test_emphysema_answers_a_note_that_denies_copd_and_never_smoker_is_no_risk(synthea):
    folder, _ = synthea
    merged = merge_record(extract_facts("Never smoker. Denies COPD."),
                          read_fhir(folder / "Tony_Beer_bb8cd3e5-8910-4eea-bbc6-3f64a4a655b8.json"))
    assert [c["concept"] for c in merged["contradictions"]] == ["copd"]
    assert record_evidence("pneumonia", merged["facts"])["risk_factors"] == []


def test_load_record_from_files(synthea, tmp_path):
    folder, _ = synthea
    note = tmp_path / "note.txt"
    note.write_text("Never smoker. Cough.", encoding="utf-8")
    bundle = folder / "Yi_Weissnat_0edbf0a2-10d4-4ccd-a522-6aaeb41f2b41.json"
    merged = load_record(note, bundle, reference_date=dt.date(2018, 12, 31))
    assert merged["source"] == "note.txt + fhir" and merged["demographics"]["age"] == 16
    assert merged["contradictions"] == []  # before 2019 the record said never smoker too
    assert [c["concept"] for c in load_record(note, bundle)["contradictions"]] == ["smoking"]
    assert load_record(None, None) is None
    assert load_record(None, bundle)["source"] == "fhir"


def test_merge_of_either_side_alone():
    only_note = merge_record(extract_facts("Fever and cough.", source="n.txt"), None)
    assert only_note["source"] == "n.txt" and only_note["fhir"] is None and only_note["contradictions"] == []
    assert only_note["demographics"]["age"] is None
    assert merge_record(None, None)["facts"] == []


# ------------------------------------------------------------------------------ crafted bundles

NAME = "Zzyzxqwerty"
BIRTH = "1961-07-14"


def _bundle(*resources: dict) -> dict:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:00000000-0000-0000-0000-{i:012d}", "resource": r}
                      for i, r in enumerate(resources)]}


def _patient(**extra) -> dict:
    return {"resourceType": "Patient", "id": "p1", "name": [{"family": NAME, "given": ["Ann"]}],
            "identifier": [{"system": "urn:mrn", "value": "MRN-998877"}], "gender": "female",
            "birthDate": BIRTH, **extra}


def _cc(system, code, display):
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


SCT, LNC, RX = "http://snomed.info/sct", "http://loinc.org", "http://www.nlm.nih.gov/research/umls/rxnorm"
SUBJECT = {"reference": "urn:uuid:00000000-0000-0000-0000-000000000000"}


def _condition(code, display, clinical="active", verification="confirmed", onset="2020-01-01", **extra):
    status = "http://terminology.hl7.org/CodeSystem/condition-"
    return {"resourceType": "Condition", "subject": SUBJECT, "code": _cc(SCT, code, display), "onsetDateTime": onset,
            "clinicalStatus": {"coding": [{"system": status + "clinical", "code": clinical}]},
            "verificationStatus": {"coding": [{"system": status + "ver-status", "code": verification}]}, **extra}


def _observation(system, code, display, when, **value):
    return {"resourceType": "Observation", "status": "final", "subject": SUBJECT, "code": _cc(system, code, display),
            "effectiveDateTime": when, **value}


def _write(tmp_path, data, name="bundle.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_crafted_bundle_meds_imaging_vitals_statuses(tmp_path):
    bundle = _bundle(
        _patient(),
        _condition("195967001", "Asthma", verification="refuted"),
        _condition("13645005", "COPD", verification="entered-in-error"),
        _condition("233604007", "Pneumonia", verification="provisional", onset="2024-03-01"),
        _condition("254637007", "NSCLC", onset="2024-06-01"),  # after the study date: not yet known
        _observation(LNC, "72166-2", "Tobacco smoking status", "2024-02-01",
                     valueCodeableConcept=_cc(SCT, "449868002", "Current every day smoker")),
        _observation(SCT, "401201003", "Cigarette pack-years", "2024-02-01",
                     valueQuantity={"value": 35, "unit": "{pack-years}"}),
        _observation(LNC, "2708-6", "Oxygen saturation", "2024-02-20", valueQuantity={"value": 91, "unit": "%"}),
        _observation(LNC, "2708-6", "Oxygen saturation", "2023-01-01", valueQuantity={"value": 99, "unit": "%"}),
        _observation(LNC, "9279-1", "Respiratory rate", "2024-02-20", valueQuantity={"value": 24, "unit": "/min"}),
        {"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": SUBJECT,
         "authoredOn": "2023-11-02", "medicationCodeableConcept": _cc(RX, "999999", "predniSONE 20 MG Oral Tablet")},
        {"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": SUBJECT,
         "authoredOn": "2023-11-02", "medicationCodeableConcept": _cc(RX, "978950", "Natazia 28 Day Pack")},
        {"resourceType": "MedicationRequest", "status": "stopped", "intent": "order", "subject": SUBJECT,
         "authoredOn": "2020-11-02", "medicationCodeableConcept": _cc(RX, "1", "tacrolimus 1 MG")},
        {"resourceType": "ImagingStudy", "status": "available", "subject": SUBJECT, "started": "2023-05-05",
         "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4.5"}],
         "series": [{"uid": "1.2.3.4.5.6", "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM",
                                                       "code": "CT"},
                     "bodySite": {"system": SCT, "code": "51185008", "display": "Thoracic structure"}}]},
    )
    record = read_fhir(_write(tmp_path, bundle), reference_date=dt.date(2024, 3, 10))
    odd = _write(tmp_path, _bundle(_patient(gender=NAME)), "odd.json")
    assert read_fhir(odd).demographics["sex"] == "unknown"  # outside FHIR's value set: never echoed
    assert record.demographics == {"age": 62, "sex": "female", "deceased": False, "age_at": "reference date"}
    facts = {(f["concept"], f["section"]): f for f in record.facts}
    assert facts[("asthma", "fhir:Condition")]["negated"] is True
    assert ("copd", "fhir:Condition") not in facts
    assert facts[("pneumonia", "fhir:Condition")]["uncertain"] is True
    assert "lung_cancer" not in record.concepts()
    assert facts[("smoking", "fhir:Observation")]["attributes"]["pack_years"] == 35
    assert facts[("immunosuppression", "fhir:MedicationRequest")]["text"] == "predniSONE 20 MG Oral Tablet"
    assert facts[("hormone_therapy", "fhir:MedicationRequest")]["attributes"]["code"] == "978950"
    assert len(record.medications) == 2  # the stopped one is not active
    vitals = {v["name"]: v for v in record.vitals}
    assert vitals["oxygen_saturation"]["value"] == 91 and vitals["oxygen_saturation"]["date"] == "2024-02-20"
    assert vitals["respiratory_rate"]["value"] == 24
    assert not {"hypoxia", "tachypnoea"} & record.concepts()  # measured 19 days before the study
    recent = read_fhir(_write(tmp_path, bundle, "b2.json"), reference_date=dt.date(2024, 2, 21))
    derived = {f["concept"]: f for f in recent.facts if f["category"] == "SYMPTOM"}
    assert set(derived) == {"hypoxia", "tachypnoea"}
    assert derived["hypoxia"]["attributes"] == {"code": "2708-6", "value": 91.0, "unit": "%", "date": "2024-02-20"}
    assert [f["concept"] for f in record_evidence("pneumonia", recent.facts)["supports"]] == ["hypoxia", "tachypnoea"]
    assert record.imaging == [{"modality": ["CT"], "body_site": ["Thoracic structure"], "date": "2023-05-05",
                               "series": 1}]
    text = json.dumps(record.to_dict())
    for secret in (NAME, BIRTH, "MRN-998877", "1.2.3.4.5"):
        assert secret not in text
    # A refuted asthma versus a note that affirms it is a contradiction too.
    merged = merge_record(extract_facts("Asthma, on inhalers."), record)
    assert [(c["concept"], c["record_says"]) for c in merged["contradictions"]] == [("asthma", "refuted")]
    # Today is the default reference date, and a death before it freezes the age.
    dead = _write(tmp_path, _bundle(_patient(deceasedDateTime="2001-07-13T10:00:00Z")), "dead.json")
    assert read_fhir(dead).demographics == {"age": 39, "sex": "female", "deceased": True, "age_at": "death"}


@pytest.mark.parametrize("mutate, expected", [
    (lambda b: b["entry"][0]["resource"].update(gender={"text": NAME}), "validation error"),
    (lambda b: b["entry"][0]["resource"].update(birthDate=NAME + BIRTH), "validation error"),
    (lambda b: b["entry"][0]["resource"].update(nickname=NAME), "validation error"),
    (lambda b: b.update(resourceType="Patient"), "expected a FHIR Bundle, found Patient"),
    (lambda b: b.update(resourceType=NAME + " x"), "expected a FHIR Bundle, found no resourceType"),
    (lambda b: b["entry"].append(copy.deepcopy(b["entry"][0])), "2 Patient resources"),
])
def test_invalid_bundle_one_line_without_values(tmp_path, mutate, expected):
    bundle = _bundle(_patient())
    mutate(bundle)
    path = _write(tmp_path, bundle)
    with pytest.raises(SecondreadError) as info:
        read_fhir(path)
    message = str(info.value)
    assert message.startswith(str(path) + ": ") and expected in message
    assert "\n" not in message and NAME not in message and BIRTH not in message


@pytest.mark.parametrize("content, expected", [
    (b"", "not valid UTF-8 JSON"), (b"{not json", "not valid UTF-8 JSON"), (b"\xff\xfe\x00", "not valid UTF-8 JSON"),
    (b"[1, 2]", "JSON is not an object"),
])
def test_bad_files(tmp_path, content, expected):
    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(SecondreadError, match=expected):
        read_fhir(path)
    with pytest.raises(SecondreadError, match="not found"):
        read_fhir(tmp_path / "missing.json")
    with pytest.raises(SecondreadError, match="is a directory"):
        read_fhir(tmp_path)

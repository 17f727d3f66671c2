"""Facts from a structured record: a FHIR R4 ``Bundle`` (as Synthea and most EHR exports write it).

Why a second reader needs it: the note may be silent or stale, while the coded record says the
patient has active COPD or smoked every day last year. Coded facts are read here into the same
shape as a note's facts (:class:`secondread.records.notes.Fact`), with concept names from
``rules/fhir/codes.json`` (SNOMED CT, LOINC, RxNorm -> our concepts), so that ``suggest`` and
``merge`` treat both sources alike.

Validation uses the ``fhir.resources`` R4B models: R4B is the release whose resource definitions
match R4 bundles for every resource read here (``fhir.resources``' default package is R5, which
rejects R4 content such as ``Encounter.class`` as a single Coding). A bundle that does not validate
is refused with one line that names the file, the number of errors and where the first one is,
never a value from the record.

Privacy: the Patient resource is read for two things only, the age at a reference date and the
administrative sex. Name, identifiers, birth date, address, telecom and narrative text are dropped
before anything leaves this module; the bundle's file name is not used either (Synthea names files
after the patient), so ``PatientRecord.source`` is just ``"fhir"``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from secondread.errors import SecondreadError
from secondread.files import read_limited

MAX_BUNDLE_BYTES = 100_000_000
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ACTIVE_CLINICAL = {"active", "recurrence", "relapse"}
PAST_CLINICAL = {"inactive", "remission", "resolved"}
UNCERTAIN_VERIFICATION = {"unconfirmed", "provisional", "differential"}
ADMINISTRATIVE_GENDER = {"male", "female", "other", "unknown"}  # FHIR's required value set
_SAFE_LOC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")


@dataclass
class PatientRecord:
    """What one FHIR bundle says about a patient, without identifiers.

    ``facts`` are dicts shaped like ``Fact.to_dict()`` (``section`` is ``"fhir:<ResourceType>"``,
    ``start``/``end`` are None because there is no text to point into), so ``suggest`` reads them
    unchanged. ``demographics`` is ``{"age", "sex", "deceased", "age_at"}``; ``age_at`` says which
    date the age refers to (``"reference date"``, ``"today"`` or ``"death"``), never the date itself.
    """

    demographics: dict[str, Any] = field(default_factory=dict)
    facts: list[dict[str, Any]] = field(default_factory=list)
    smoking: dict[str, Any] | None = None
    vitals: list[dict[str, Any]] = field(default_factory=list)
    medications: list[dict[str, Any]] = field(default_factory=list)
    imaging: list[dict[str, Any]] = field(default_factory=list)
    other_conditions: list[dict[str, Any]] = field(default_factory=list)
    source: str = "fhir"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the report's contract)."""
        return {
            "source": self.source,
            "demographics": dict(self.demographics),
            "facts": [dict(f) for f in self.facts],
            "smoking": self.smoking,
            "vitals": list(self.vitals),
            "medications": list(self.medications),
            "imaging": list(self.imaging),
            "other_conditions": list(self.other_conditions),
        }

    def concepts(self) -> set[str]:
        """All concepts the coded record mentions."""
        return {f["concept"] for f in self.facts}


@functools.lru_cache(maxsize=1)
def code_maps() -> dict[str, Any]:
    """``rules/fhir/codes.json``: code -> concept maps (data, not code)."""
    from secondread.records.notes import rules_dir

    return json.loads((rules_dir() / "fhir" / "codes.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------- reading


def load_bundle(path: str | os.PathLike):
    """Read and validate a FHIR R4 Bundle with the ``fhir.resources`` R4B models.

    Raises
    ------
    SecondreadError
        Missing, a directory, too large, not JSON, not a Bundle, or not valid FHIR (the message
        gives the number of errors and the location of the first, no values).
    """
    data = read_limited(path, MAX_BUNDLE_BYTES, "FHIR file", "a FHIR Bundle JSON file")
    try:
        raw = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        raise SecondreadError(path, "not a FHIR JSON file (not valid UTF-8 JSON)") from None
    if not isinstance(raw, dict):
        raise SecondreadError(path, "not a FHIR resource (JSON is not an object)")
    kind = raw.get("resourceType")
    if kind != "Bundle":
        shown = kind if isinstance(kind, str) and _SAFE_LOC.match(kind) else "no resourceType"
        raise SecondreadError(path, f"expected a FHIR Bundle, found {shown}")
    return _validate(path, raw)


def _validate(path, raw: dict):
    """Validate with pydantic; report only counts and field paths (the inputs may hold identifiers)."""
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    try:
        return Bundle.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        where = ".".join(str(p) for p in errors[0]["loc"] if isinstance(p, int) or _SAFE_LOC.match(str(p)))
        kind = errors[0].get("type", "invalid")
        raise SecondreadError(
            path, f"not a valid FHIR R4 Bundle: {len(errors)} validation error(s), first at {where or 'top level'} ({kind})"
        ) from None
    except (ValueError, TypeError) as exc:  # fhir.core raises plain errors for some type mix-ups
        raise SecondreadError(path, f"not a valid FHIR R4 Bundle ({type(exc).__name__})") from None


def read_fhir(path: str | os.PathLike, reference_date: dt.date | None = None) -> PatientRecord:
    """Read a FHIR R4 Bundle into a :class:`PatientRecord` as of ``reference_date``.

    Parameters
    ----------
    path : path
        A FHIR Bundle (JSON), e.g. a Synthea patient.
    reference_date : datetime.date, optional
        The date the record is read for (the study date). The age is computed at that date (or at
        death, if earlier); anything recorded after it is ignored, since it was not known when the
        image was taken. Default: today.

    Raises
    ------
    SecondreadError
        See :func:`load_bundle`; also a bundle with more than one Patient.
    """
    bundle = load_bundle(path)
    resources: dict[str, list] = {}
    for entry in bundle.entry or []:
        if entry.resource is not None:
            resources.setdefault(entry.resource.get_resource_type(), []).append(entry.resource)
    patients = resources.get("Patient", [])
    if len(patients) > 1:
        raise SecondreadError(path, f"bundle has {len(patients)} Patient resources, expected one")
    as_of = reference_date or dt.date.today()
    record = PatientRecord()
    record.demographics = _demographics(patients[0] if patients else None, reference_date)
    for condition in resources.get("Condition", []):
        _add_condition(record, condition, as_of)
    _add_observations(record, resources.get("Observation", []), as_of)
    for request in resources.get("MedicationRequest", []):
        _add_medication(record, request, as_of)
    for study in resources.get("ImagingStudy", []):
        _add_imaging(record, study, as_of)
    return record


# -------------------------------------------------------------------------------------- resources


def _demographics(patient, reference_date: dt.date | None) -> dict[str, Any]:
    """Age at the reference date (or at death) and sex; the birth date itself goes no further."""
    if patient is None:
        return {"age": None, "sex": None, "deceased": None, "age_at": None}
    at, age_at = (reference_date, "reference date") if reference_date else (dt.date.today(), "today")
    died = _date(getattr(patient, "deceasedDateTime", None))
    deceased = bool(getattr(patient, "deceasedBoolean", False)) or died is not None
    if died is not None and died <= at:
        at, age_at = died, "death"
    born = _date(patient.birthDate)
    age = None if born is None or born > at else at.year - born.year - ((at.month, at.day) < (born.month, born.day))
    sex = patient.gender if patient.gender in ADMINISTRATIVE_GENDER else ("unknown" if patient.gender else None)
    return {"age": age, "sex": sex, "deceased": deceased, "age_at": age_at if age is not None else None}


def _add_condition(record: PatientRecord, condition, as_of: dt.date) -> None:
    verification = _status(condition.verificationStatus)
    if verification == "entered-in-error":
        return
    onset = _date(getattr(condition, "onsetDateTime", None) or getattr(condition, "recordedDate", None))
    if onset is not None and onset > as_of:
        return
    clinical = _status(condition.clinicalStatus)
    abated = _date(getattr(condition, "abatementDateTime", None))
    past = clinical in PAST_CLINICAL or (abated is not None and abated <= as_of)
    coding, mapping = _lookup(condition.code, code_maps()["conditions"])
    text = _display(condition.code, coding)
    attributes = {
        "code": coding.code if coding else None,
        "system": coding.system if coding else None,
        "clinical_status": clinical,
        "verification_status": verification,
        "onset": _iso(onset),
        "abatement": _iso(abated) if abated is not None and abated <= as_of else None,
        "status": "resolved" if past else ("active" if clinical in ACTIVE_CLINICAL or clinical is None else clinical),
    }
    if mapping is None:
        record.other_conditions.append({"text": text, **{k: attributes[k] for k in ("code", "status", "onset")}})
        return
    record.facts.append(_fact(
        mapping["concept"], mapping.get("category", "CONDITION"), text, "Condition", attributes,
        negated=verification == "refuted",
        uncertain=verification in UNCERTAIN_VERIFICATION or bool(mapping.get("uncertain")),
        historical=past or bool(mapping.get("historical")),
        family=bool(mapping.get("family")),
    ))


def _add_observations(record: PatientRecord, observations: list, as_of: dt.date) -> None:
    """Smoking status (latest LOINC 72166-2 answer), pack-years, and the latest of a few vitals."""
    maps = code_maps()
    smoking_code = maps["smoking_status"]["observation_code"]
    pack_codes = {(c["system"], c["code"]) for c in maps["smoking_status"]["pack_years_codes"]}
    vital_names = maps["vitals"].get(LOINC, {})
    smoking, packs, vitals = [], [], {}
    for obs in observations:
        if obs.status in ("entered-in-error", "cancelled"):
            continue
        when = _date(getattr(obs, "effectiveDateTime", None) or getattr(obs, "issued", None))
        if when is not None and when > as_of:
            continue
        codes = {(c.system, c.code) for c in (obs.code.coding or [])}
        if (smoking_code["system"], smoking_code["code"]) in codes and obs.valueCodeableConcept is not None:
            smoking.append((when or dt.date.min, obs))
        elif codes & pack_codes and obs.valueQuantity is not None and obs.valueQuantity.value is not None:
            packs.append((when or dt.date.min, float(obs.valueQuantity.value)))
        else:
            for system, code in codes:
                name = vital_names.get(code) if system == LOINC else None
                if name and obs.valueQuantity is not None and obs.valueQuantity.value is not None:
                    previous = vitals.get(name)
                    if previous is None or (when or dt.date.min) >= previous[0]:
                        vitals[name] = (when or dt.date.min, obs, code)
    record.vitals = [
        {"name": name, "value": float(obs.valueQuantity.value), "unit": obs.valueQuantity.unit or obs.valueQuantity.code,
         "code": code, "date": _iso(when if when != dt.date.min else None)}
        for name, (when, obs, code) in sorted(vitals.items())
    ]
    if smoking:
        _add_smoking(record, smoking, packs)
    _add_vital_facts(record, as_of)


def _add_vital_facts(record: PatientRecord, as_of: dt.date) -> None:
    """Recent vitals beyond a threshold as symptom facts (``vital_sign_facts`` in the code map)."""
    rules = code_maps().get("vital_sign_facts", {})
    recent = dt.timedelta(days=rules.get("recent_days", 3))
    latest = {v["name"]: v for v in record.vitals}
    for rule in rules.get("rules", []):
        vital = latest.get(rule["vital"])
        if vital is None or vital["date"] is None or as_of - dt.date.fromisoformat(vital["date"]) > recent:
            continue
        value = vital["value"]
        if (("below" in rule and value < rule["below"]) or ("above" in rule and value > rule["above"])
                or ("at_least" in rule and value >= rule["at_least"])):
            text = f"{vital['name'].replace('_', ' ')} {value:g} {vital['unit'] or ''}".strip()
            record.facts.append(_fact(rule["concept"], "SYMPTOM", text, "Observation",
                                      {k: vital[k] for k in ("code", "value", "unit", "date")}))


def _add_smoking(record: PatientRecord, smoking: list, packs: list) -> None:
    answers = code_maps()["smoking_status"]["answers"]
    history = []
    for when, obs in sorted(smoking, key=lambda item: item[0]):
        coding, status = None, None
        for c in obs.valueCodeableConcept.coding or []:
            if c.system == SNOMED and c.code in answers:
                coding, status = c, answers[c.code]
                break
        history.append((when, status or "unknown", coding, obs))
    when, status, coding, obs = history[-1]
    pack_years = max(packs)[1] if packs else None
    ever_current = any(s == "current" for _, s, _, _ in history)
    summary = {
        "status": status,
        "date": _iso(when if when != dt.date.min else None),
        "ever_current": ever_current,
        "observations": len(history),
        "pack_years": pack_years,
        "code": coding.code if coding else None,
    }
    record.smoking = summary
    if status == "unknown":
        return
    attributes = {"status": status, "code": summary["code"], "system": SNOMED if coding else None,
                  "date": summary["date"], "ever_current": ever_current}
    if pack_years is not None:
        attributes["pack_years"] = int(pack_years) if float(pack_years).is_integer() else pack_years
    record.facts.append(_fact(
        "smoking", "RISK_FACTOR", _display(obs.valueCodeableConcept, coding), "Observation", attributes,
        negated=status == "never", historical=status == "former",
    ))


def _add_medication(record: PatientRecord, request, as_of: dt.date) -> None:
    """Active medication requests; immunosuppressants and hormones become risk-factor facts."""
    if request.status != "active":
        return
    authored = _date(getattr(request, "authoredOn", None))
    if authored is not None and authored > as_of:
        return
    concept = getattr(request, "medicationCodeableConcept", None)
    if concept is None:
        return
    maps = code_maps()["medications"]
    coding, flag = _lookup(concept, maps)
    text = _display(concept, coding)
    if flag is None:
        words = (text or "").lower()
        flag = next((v for k, v in maps["ingredients"].items() if re.search(rf"\b{re.escape(k)}\b", words)), None)
    attributes = {"code": coding.code if coding else None, "system": coding.system if coding else None,
                  "authored": _iso(authored), "status": "active"}
    record.medications.append({"text": text, "risk_flag": flag, **attributes})
    if flag is not None:
        record.facts.append(_fact(flag, "RISK_FACTOR", text, "MedicationRequest", attributes))


def _add_imaging(record: PatientRecord, study, as_of: dt.date) -> None:
    """Modality, body site and date of prior imaging (no UIDs: they identify the study)."""
    started = _date(getattr(study, "started", None))
    if started is not None and started > as_of:
        return
    modalities, sites = [], []
    for coding in getattr(study, "modality", None) or []:
        if coding.code and coding.code not in modalities:
            modalities.append(coding.code)
    for series in study.series or []:
        if series.modality is not None and series.modality.code and series.modality.code not in modalities:
            modalities.append(series.modality.code)
        site = series.bodySite
        if site is not None and (site.display or site.code) and (site.display or site.code) not in sites:
            sites.append(site.display or site.code)
    record.imaging.append({"modality": modalities, "body_site": sites, "date": _iso(started),
                           "series": len(study.series or [])})


# ---------------------------------------------------------------------------------------- helpers


def _fact(concept: str, category: str, text: str | None, resource: str, attributes: dict, *,
          negated: bool = False, uncertain: bool = False, historical: bool = False,
          hypothetical: bool = False, family: bool = False) -> dict[str, Any]:
    """A fact in ``Fact.to_dict()``'s shape; the display text stands in for the sentence."""
    return {"concept": concept, "category": category, "text": text, "start": None, "end": None,
            "section": f"fhir:{resource}", "sentence": text, "negated": negated, "uncertain": uncertain,
            "historical": historical, "hypothetical": hypothetical, "family": family,
            "attributes": attributes}


def _lookup(concept, table: dict):
    """The first coding of a CodeableConcept found in ``table[system][code]`` (else the first coding)."""
    codings = list(getattr(concept, "coding", None) or [])
    for coding in codings:
        hit = table.get(coding.system or "", {}).get(coding.code or "") if isinstance(table.get(coding.system or ""), dict) else None
        if hit is not None:
            return coding, hit
    return (codings[0] if codings else None), None


def _display(concept, coding) -> str | None:
    return (getattr(concept, "text", None) or (coding.display if coding else None)
            or (coding.code if coding else None))


def _status(concept) -> str | None:
    for coding in getattr(concept, "coding", None) or []:
        if coding.code:
            return coding.code
    return None


def _date(value) -> dt.date | None:
    """A FHIR date/dateTime (object or partial string like ``"1985"``) as a date."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    match = re.match(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?", str(value))
    if not match:
        return None
    year, month, day = match.groups()
    return dt.date(int(year), int(month or 1), int(day or 1))


def _iso(value: dt.date | None) -> str | None:
    return None if value is None else value.isoformat()

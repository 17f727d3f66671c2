"""One patient summary from the note and the coded record, with their disagreements flagged.

Why flag instead of resolving: when the note says "never smoker" and the coded record says
"current every day smoker", either may be wrong (a copied-forward note, a miscoded answer), and the
smoking risk changes what a nodule means. A second reader must not pick one silently; it shows
both, with where each came from, and lets the reader decide.

What counts as a contradiction (ConText family and hypothetical mentions never do):

- smoking: the note's status (never / former / current / smoker) differs from the record's latest
  LOINC 72166-2 answer; a record that ever said "current" contradicts a note's "never smoker";
- any other concept: the note negates it while the record has it active (affirmed, confirmed, not
  resolved), or the note denies any history of it ("no history of asthma", a negated historical
  mention) while the record has it at all, or the note affirms it while the record marks it refuted.

Concepts are compared through ``broader`` in ``rules/fhir/codes.json`` (a coded "pulmonary
emphysema" answers a note's "no COPD").
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

from typing import Any

from secondread.records.fhir import PatientRecord, code_maps

SMOKER_WORDS = {"never": "never smoker", "former": "former smoker", "current": "current smoker",
                "ever": "smoker (current or past)"}


def merge_record(notes, fhir: PatientRecord | None, area: str | None = None) -> dict[str, Any]:
    """Merge a note's facts (``RecordFacts``) and a FHIR record into one report ``record`` dict.

    Parameters
    ----------
    notes : RecordFacts or None
        From :func:`secondread.records.notes.extract_facts` / ``extract_from_file``.
    fhir : PatientRecord or None
        From :func:`secondread.records.fhir.read_fhir`.
    area : str, optional
        Body area; defaults to the note's area, else ``"chest"``.

    Returns
    -------
    dict
        ``{"source", "area", "facts", "demographics", "contradictions", "fhir"}``. ``source`` is the
        note's name, ``"fhir"``, or both joined by ``" + "``; ``facts`` are the note's facts then the
        record's, each with ``"origin"`` (``"note"`` or ``"fhir"``); ``contradictions`` is a list of
        ``{"concept", "note_says", "record_says", "sources": {"note": [...], "fhir": [...]}}``;
        ``fhir`` holds the record's smoking summary, vitals, medications, imaging and other conditions.
    """
    note_facts = [dict(f.to_dict(), origin="note") for f in (notes.facts if notes is not None else [])]
    record_facts = [dict(f, origin="fhir") for f in (fhir.facts if fhir is not None else [])]
    sources = [s for s in ((notes.source or "note") if notes is not None else None,
                           fhir.source if fhir is not None else None) if s]
    extra = fhir.to_dict() if fhir is not None else {}
    return {
        "source": " + ".join(sources) if sources else None,
        "area": area or (notes.area if notes is not None else "chest"),
        "facts": note_facts + record_facts,
        "demographics": extra.get("demographics", {"age": None, "sex": None, "deceased": None, "age_at": None}),
        "contradictions": find_contradictions(note_facts, record_facts),
        "fhir": {k: extra[k] for k in ("smoking", "vitals", "medications", "imaging", "other_conditions")}
        if fhir is not None else None,
    }


@dataclass(frozen=True)
class RecordSource:
    """Where a patient's record is (a note and/or a FHIR bundle), read once the study is known.

    Why not read it up front: which rules read the note depends on the body area of the model the
    image is given to (chosen per image when the user names none), and a FHIR age is the age on the
    study date, which is in the image's header. :func:`secondread.analyze.analyze_loaded` calls
    :meth:`load` with both.

    One source is read once per (area, study date): ``analyze`` reads it up front to fail early and
    again for each image, and a note takes ~0.1 s through medspaCy. The memory lives in the
    instance (one command or request), never across calls, since a path may be rewritten later.
    """

    notes: str | os.PathLike | None = None
    fhir: str | os.PathLike | None = None
    _read: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __bool__(self) -> bool:
        return self.notes is not None or self.fhir is not None

    def load(self, area: str = "chest", reference_date=None) -> dict[str, Any] | None:
        """The merged record read with ``area``'s rules and ages on ``reference_date`` (a copy:
        callers may add to it)."""
        key = (area, reference_date)
        if key not in self._read:
            self._read[key] = load_record(self.notes, self.fhir, area=area, reference_date=reference_date)
        return copy.deepcopy(self._read[key])


def load_record(notes_path=None, fhir_path=None, area: str = "chest",
                reference_date=None) -> dict[str, Any] | None:
    """Read a note file and/or a FHIR bundle and merge them: what ``analyze`` puts in ``record``.

    ``reference_date`` (a ``datetime.date``, e.g. the study date) is passed to
    :func:`secondread.records.fhir.read_fhir`. Returns None when neither file is given. Bad files
    raise :class:`secondread.errors.SecondreadError` (one line, naming the file).
    """
    from secondread.records.fhir import read_fhir
    from secondread.records.notes import extract_from_file

    if notes_path is None and fhir_path is None:
        return None
    notes = extract_from_file(notes_path, area=area) if notes_path is not None else None
    fhir = read_fhir(fhir_path, reference_date=reference_date) if fhir_path is not None else None
    return merge_record(notes, fhir, area=area)


def find_contradictions(note_facts: list[dict], record_facts: list[dict]) -> list[dict[str, Any]]:
    """Where the note and the coded record disagree about the patient (see the module docstring)."""
    note_facts = [f for f in note_facts if not (f.get("family") or f.get("hypothetical"))]
    record_facts = [f for f in record_facts if not (f.get("family") or f.get("hypothetical"))]
    out = []
    smoking = _smoking_contradiction(note_facts, record_facts)
    if smoking:
        out.append(smoking)
    for concept in sorted({_broad(f["concept"]) for f in note_facts} - {"smoking"}):
        mentions = [f for f in note_facts if _broad(f["concept"]) == concept]
        coded = [f for f in record_facts if _broad(f["concept"]) == concept]
        if not coded:
            continue
        active = [f for f in coded if _affirmed(f) and not f.get("historical")]
        ever = [f for f in coded if _affirmed(f)]
        refuted = [f for f in coded if f.get("negated")]
        denied = [f for f in mentions if f.get("negated")]
        denied_ever = [f for f in denied if f.get("historical")]
        affirmed = [f for f in mentions if _affirmed(f) and not f.get("historical")]
        if denied_ever and ever:
            out.append(_entry(concept, "no history of it", _record_words(ever), denied_ever, ever))
        elif denied and active:
            out.append(_entry(concept, "absent", _record_words(active), denied, active))
        elif affirmed and refuted and not ever:
            out.append(_entry(concept, "present", "refuted", affirmed, refuted))
    return out


def _smoking_contradiction(note_facts: list[dict], record_facts: list[dict]) -> dict | None:
    coded = [f for f in record_facts if f["concept"] == "smoking" and f["section"] == "fhir:Observation"]
    mentions = [f for f in note_facts if f["concept"] == "smoking" and not f.get("uncertain")]
    if not coded or not mentions:
        return None
    record_status = coded[-1]["attributes"]["status"]
    ever_current = bool(coded[-1]["attributes"].get("ever_current"))
    by_status: dict[str, list] = {}
    for f in mentions:
        by_status.setdefault(_note_smoking_status(f), []).append(f)
    clash = []
    for status, facts in by_status.items():
        if status == "never" and (record_status in ("former", "current") or ever_current):
            clash += facts
        elif status in ("former", "current", "ever") and record_status == "never":
            clash += facts
        elif {status, record_status} == {"former", "current"}:
            clash += facts
    if not clash:
        return None
    note_says = ", ".join(sorted({SMOKER_WORDS[_note_smoking_status(f)] for f in clash}))
    record_says = SMOKER_WORDS[record_status] + (" (current at an earlier visit)" if ever_current and record_status != "current" else "")
    return _entry("smoking", note_says, record_says, clash, coded[-1:])


def _note_smoking_status(fact: dict) -> str:
    """never / former / current / ever from one note mention's ConText flags and wording."""
    if fact.get("negated"):
        return "never"
    if fact.get("historical"):
        return "former"
    words = (fact.get("text") or "").lower()
    if "pack" in words or "history" in words or "py" == words:
        return "ever"
    return "current"


def _affirmed(fact: dict) -> bool:
    return not (fact.get("negated") or fact.get("uncertain") or fact.get("family") or fact.get("hypothetical"))


def _record_words(facts: list[dict]) -> str:
    statuses = sorted({(f.get("attributes") or {}).get("status") or "present" for f in facts})
    return f"{' / '.join(statuses)}: " + "; ".join(sorted({f.get("text") or f["concept"] for f in facts}))


def _broad(concept: str) -> str:
    return code_maps().get("broader", {}).get(concept, concept)


def _entry(concept: str, note_says: str, record_says: str, note: list[dict], record: list[dict]) -> dict:
    return {
        "concept": concept,
        "note_says": note_says,
        "record_says": record_says,
        "sources": {
            "note": [{k: f.get(k) for k in ("text", "start", "end", "section")} for f in note],
            "fhir": [{"text": f.get("text"), "section": f.get("section"),
                      **{k: (f.get("attributes") or {}).get(k) for k in ("code", "status", "onset", "date")
                         if (f.get("attributes") or {}).get(k) is not None}} for f in record],
        },
    }

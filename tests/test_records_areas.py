"""Breast and brain record rules, and sections: hand-checked sentences with known answers.

Each case is a sentence a radiologist would read in a request or report, with the concept, and
the ConText attributes a clinician gives it; the rules files are data, these are their checks.
"""

from __future__ import annotations

import pytest

from secondread.records.notes import extract_facts
from secondread.suggest import record_area, record_evidence

FLAGS = ("negated", "uncertain", "historical", "hypothetical", "family")


def _find(text: str, area: str, concept: str) -> dict:
    facts = [f.to_dict() for f in extract_facts(text, area=area).facts if f.concept == concept]
    assert facts, f"{concept} not found in {text!r}"
    return facts[0]


def _flags(fact: dict) -> set[str]:
    return {k for k in FLAGS if fact[k]}


@pytest.mark.parametrize("text, concept, flags", [
    ("Palpable lump in the left breast.", "breast_mass", set()),
    ("No suspicious microcalcifications.", "calcification", {"negated"}),
    ("Possible architectural distortion in the upper outer quadrant.", "breast_mass", {"uncertain"}),
    ("Her mother had breast cancer at 45.", "breast_cancer", {"family"}),
    ("She is a BRCA1 mutation carrier.", "brca", set()),
    ("Status post right lumpectomy in 2015.", "breast_surgery", {"historical"}),
    ("On hormone replacement therapy.", "hormone_therapy", set()),
    ("No axillary lymphadenopathy.", "axillary_lymphadenopathy", {"negated"}),
    ("Bloody nipple discharge for two weeks.", "nipple_discharge", set()),
])
def test_breast_rules(text, concept, flags):
    assert _flags(_find(text, "breast", concept)) == flags


@pytest.mark.parametrize("text, concept, flags", [
    ("New-onset seizures for three weeks.", "seizure", set()),
    ("Morning headaches with nausea.", "headache", set()),
    ("No focal weakness.", "focal_deficit", {"negated"}),
    ("FLAIR hyperintensity in the left frontal lobe.", "flair_abnormality", set()),
    ("No midline shift.", "mass_effect", {"negated"}),
    ("Previous craniotomy for a low-grade glioma.", "brain_surgery", {"historical"}),
    ("Father had a brain tumor.", "brain_tumour", {"family"}),
    ("Rule out glioblastoma.", "glioma", {"uncertain"}),
    ("History of neurofibromatosis type 1.", "genetic_syndrome", {"historical"}),
])
def test_brain_rules(text, concept, flags):
    assert _flags(_find(text, "brain", concept)) == flags


def test_brain_rules_exclude_body_mass_index():
    facts = extract_facts("Body mass index 31. Fit and well otherwise.", area="brain").facts
    assert [f.concept for f in facts] == []


@pytest.mark.parametrize("heading", ["HISTORY:", "CLINICAL HISTORY:", "INDICATION:"])
def test_reason_for_exam_is_not_past_history(heading):
    """A request's 'HISTORY: cough and fever' is today's complaint, not a past episode."""
    fact = _find(f"{heading} cough and fever for 3 days.", "chest", "fever")
    assert fact["section"] == "reason_for_examination" and not fact["historical"]
    past = _find("PAST MEDICAL HISTORY: pneumonia.", "chest", "pneumonia")
    assert past["section"] == "past_medical_history" and past["historical"]


def test_family_breast_cancer_is_a_risk_factor_but_family_smoking_is_not():
    facts = [f.to_dict() for f in extract_facts("Mother had breast cancer. Father smokes.", area="breast").facts]
    evidence = record_evidence("malignant", facts)
    assert [f["concept"] for f in evidence["risk_factors"]] == ["breast_cancer"]
    assert evidence["risk_factors"][0]["family"] is True
    chest = [f.to_dict() for f in extract_facts("His father smokes.", area="chest").facts]
    assert record_evidence("pneumonia", chest)["risk_factors"] == []


def test_every_finding_names_an_area_with_rules():
    from secondread.records.notes import areas
    for finding in ("pneumonia", "malignant", "abnormal mammogram", "brain tumour"):
        assert record_area(finding) in areas()

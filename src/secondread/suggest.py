"""Where pixels and text meet: the suggestion, its evidence and its stated uncertainty.

Why: a second reader must say not only *what* it suggests but *why* and *how sure*: the image
model's calibrated probability and the operating point it crossed, what in the patient's record
supports or contradicts it, and what makes the suggestion less certain (a probability near the
threshold, image and record disagreeing, an image unlike the training data). Which record concepts
count as evidence for which finding is data (``evidence.json``), not code.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from .finding import Finding, format_probability

BORDERLINE = 0.10  # |p - threshold| below this is called borderline
CONFIDENT = 0.90   # p >= 0.90 or <= 0.10 (and not contradicted) is called high confidence


@lru_cache(maxsize=1)
def evidence_rules() -> dict[str, Any]:
    """Load ``evidence.json`` once."""
    return json.loads((Path(__file__).parent / "evidence.json").read_text(encoding="utf-8"))


def record_area(finding_label: str) -> str:
    """The body area whose record rules should read the note for this finding (default chest).

    >>> record_area("brain tumour"), record_area("malignant"), record_area("adrenal hyperplasia")
    ('brain', 'breast', 'chest')
    """
    return evidence_rules().get(finding_label, {}).get("area", "chest")


def _cite(fact: dict[str, Any]) -> dict[str, Any]:
    """The part of a record fact a reader needs to check it in the note."""
    keys = ("concept", "text", "section", "start", "end", "negated", "uncertain", "historical")
    return {k: fact.get(k) for k in keys}


def record_evidence(label: str, facts: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Sort record facts into support, contradiction, risk factors and history for ``label``.

    Current, affirmed mentions support; current negated mentions of the finding or its signs
    contradict; affirmed risk factors count whenever they occurred; past episodes are history, not
    support; hypothetical mentions are neither, and a relative's mention is neither (a father's
    smoking is not the patient's) unless the rules list it as a family risk (a mother's breast cancer).
    """
    rules = evidence_rules().get(label, {})
    out: dict[str, list[dict[str, Any]]] = {"supports": [], "contradicts": [], "risk_factors": [], "history": []}
    for fact in facts:
        concept = fact.get("concept")
        if fact.get("family"):  # a relative's disease is the patient's risk only where the rules say so
            if not fact.get("negated") and concept in rules.get("family_risk_factors", []):
                out["risk_factors"].append(_cite(fact) | {"family": True})
            continue
        if fact.get("hypothetical"):
            continue
        if concept in rules.get("risk_factors", []):
            if not fact.get("negated"):
                out["risk_factors"].append(_cite(fact))
        elif fact.get("historical"):
            if not fact.get("negated") and concept in rules.get("supports", []):
                out["history"].append(_cite(fact))
        elif fact.get("negated"):
            if concept in rules.get("against_when_negated", []):
                out["contradicts"].append(_cite(fact))
        elif concept in rules.get("supports", []):
            out["supports"].append(_cite(fact))
    return out


def _uncertainty(finding: Finding, threshold: float, evidence: dict[str, list], caveats: list[str],
                 validation: dict[str, Any]) -> dict[str, Any]:
    """State how sure the suggestion is, and why, in words a reader can check."""
    p = finding.probability
    margin = p - threshold
    reasons = list(caveats)
    if abs(margin) < BORDERLINE:
        reasons.append(f"the probability {p:.2f} is within {BORDERLINE:.2f} of the decision threshold {threshold:.2f}")
    if finding.positive and evidence["contradicts"]:
        reasons.append("the record argues against the image finding (negated mentions)")
    if not finding.positive and evidence["supports"]:
        reasons.append("the record mentions signs of the finding that the image model does not see")
    confident = p >= CONFIDENT or p <= 1 - CONFIDENT
    level = "low" if reasons and abs(margin) < BORDERLINE else ("moderate" if reasons or not confident else "high")
    if len(reasons) >= 2:
        level = "low"
    return {"level": level, "margin_to_threshold": round(margin, 4), "reasons": reasons,
            "model_validation": {k: validation.get(k) for k in ("auc", "auc_ci95", "sensitivity", "specificity", "n")
                                 if k in validation}}


def _concepts(facts: list[dict[str, Any]], mark_uncertain: bool = True) -> str:
    """Concept names, each once, with 'possible' where every mention in the note was uncertain."""
    names: dict[str, bool] = {}
    for f in facts:
        names[f["concept"]] = names.get(f["concept"], True) and mark_uncertain and bool(f.get("uncertain"))
    return ", ".join(f"possible {c}" if unsure else c for c, unsure in sorted(names.items()))


def _statement(finding: Finding, threshold: float, evidence: dict[str, list]) -> str:
    """One or two sentences a clinician reads first."""
    p = finding.probability
    if finding.positive:
        head = (f"The image suggests {finding.label} (calibrated probability {format_probability(p)}, above the "
                f"balanced operating point {threshold:.2f}); please review the highlighted region.")
    else:
        head = (f"The image model does not suggest {finding.label} (calibrated probability {format_probability(p)}, "
                f"below {threshold:.2f}).")
    present, absent = _concepts(evidence["supports"]), _concepts(evidence["contradicts"], mark_uncertain=False)
    parts = [head]
    if present:
        parts.append(("The record supports it: " if finding.positive else
                      "Yet the record mentions signs of it: ") + present + ".")
    if absent:
        parts.append(("The record argues against it: no " if finding.positive else
                      "The record agrees: no ") + absent + ".")
    if evidence["risk_factors"]:
        parts.append("Risk factors in the record: " + _concepts(evidence["risk_factors"]) + ".")
    return " ".join(parts)


def suggest(finding: Finding, facts: list[dict[str, Any]] | None, threshold: float,
            validation: dict[str, Any] | None = None, caveats: list[str] | None = None) -> dict[str, Any]:
    """Combine one image finding with the record into a suggestion with evidence and uncertainty.

    Parameters
    ----------
    finding : Finding
        The image model's finding (calibrated probability, operating points, region).
    facts : list of dict or None
        Record facts (``Fact.to_dict()``), or None when no record was given.
    threshold : float
        The balanced operating point the decision refers to.
    validation : dict, optional
        The model's validation metrics, quoted so the reader knows how good the model is.
    caveats : list of str, optional
        Reasons the image itself is less certain (e.g. unlike the training data).
    """
    evidence = record_evidence(finding.label, facts or [])
    record_agrees = None
    if evidence["supports"] or evidence["contradicts"]:
        record_agrees = bool(evidence["supports"]) == finding.positive and not (
            finding.positive and evidence["contradicts"])
    return {
        "finding": finding.label,
        "suggested": finding.positive,
        "probability": round(finding.probability, 4),
        "operating_point": finding.to_dict()["operating_point_crossed"],
        "statement": _statement(finding, threshold, evidence),
        "evidence": {"image": {"probability": round(finding.probability, 4), "region": finding.region,
                               "overlay": finding.overlay},
                     "record": evidence, "record_given": facts is not None},
        "record_agrees": record_agrees,
        "uncertainty": _uncertainty(finding, threshold, evidence, caveats or [], validation or {}),
    }

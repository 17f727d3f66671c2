"""The suggestion: evidence sorted by ConText attributes, and uncertainty stated for the right reasons."""

from secondread.finding import Finding
from secondread.suggest import record_evidence, suggest


def fact(concept, text=None, **context):
    base = {"concept": concept, "text": text or concept, "section": "hpi", "start": 0, "end": 1,
            "negated": False, "uncertain": False, "historical": False, "hypothetical": False, "family": False}
    return {**base, **context}


def finding(p, threshold=0.5):
    ops = {"screening": {"threshold": threshold - 0.3, "crossed": p >= threshold - 0.3},
           "balanced": {"threshold": threshold, "crossed": p >= threshold}}
    return Finding(label="pneumonia", probability=p, operating_points=ops, positive=p >= threshold)


def test_evidence_follows_context():
    facts = [fact("fever"), fact("pneumonia", negated=True), fact("pneumonia", historical=True),
             fact("pneumonia", "prior pneumonia", historical=True, negated=True), fact("smoking", family=True),
             fact("smoking"), fact("asthma", historical=True), fact("cough", hypothetical=True), fact("fracture")]
    ev = record_evidence("pneumonia", facts)
    assert [e["concept"] for e in ev["supports"]] == ["fever"]
    assert [e["concept"] for e in ev["contradicts"]] == ["pneumonia"]
    assert [e["text"] for e in ev["history"]] == ["pneumonia"]
    assert sorted(e["concept"] for e in ev["risk_factors"]) == ["asthma", "smoking"]


def test_confident_positive_with_support():
    s = suggest(finding(0.97), [fact("fever"), fact("cough")], 0.5, {"auc": 0.97, "n": 524})
    assert s["suggested"] and s["record_agrees"] is True
    assert s["operating_point"] == "balanced"
    assert s["uncertainty"]["level"] == "high" and s["uncertainty"]["reasons"] == []
    assert "cough, fever" in s["statement"]
    assert s["uncertainty"]["model_validation"] == {"auc": 0.97, "n": 524}


def test_disagreement_and_borderline_lower_confidence():
    s = suggest(finding(0.55), [fact("pneumonia", negated=True)], 0.5)
    assert s["suggested"] and s["record_agrees"] is False
    assert s["uncertainty"]["level"] == "low"
    assert any("argues against" in r for r in s["uncertainty"]["reasons"])
    assert any("within 0.10" in r for r in s["uncertainty"]["reasons"])


def test_negative_without_record_and_an_out_of_domain_caveat():
    s = suggest(finding(0.02), None, 0.5, caveats=["this image's modality is CT"])
    assert not s["suggested"] and s["operating_point"] is None and s["record_agrees"] is None
    assert not s["evidence"]["record_given"]
    assert s["uncertainty"]["level"] == "moderate" and s["uncertainty"]["reasons"] == ["this image's modality is CT"]


def test_statement_words_follow_the_decision():
    neg = suggest(finding(0.001), [fact("fever", negated=True)], 0.5)["statement"]
    assert "< 0.01" in neg and "The record agrees: no fever." in neg
    pos = suggest(finding(0.999), [fact("pneumonia", uncertain=True), fact("fever", negated=True)], 0.5)["statement"]
    assert "> 0.99" in pos and "supports it: possible pneumonia." in pos and "argues against it: no fever." in pos

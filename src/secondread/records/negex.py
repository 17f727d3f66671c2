"""The NegEx / ConText test kit: negation, temporality and experiencer of a given condition.

Why a separate pipeline from :mod:`notes`: here the *target* is given per row (the annotated
condition phrase), not found by our chest vocabulary, so the evaluation measures ConText itself —
medspaCy's default rules plus our additions in ``rules/context.json`` — exactly as the original
papers measured NegEx (Chapman 2001) and ConText (Harkema 2009).

Each row is one sentence. The condition is located in it case-insensitively (whitespace-tolerant);
that span becomes the only entity, the whole row is one sentence, and ConText's modifiers decide:

    negation     NEGATED_EXISTENCE                     -> Negated,        else Affirmed
    temporality  HYPOTHETICAL                          -> Not particular,
                 HISTORICAL                            -> Historical,     else Recent
    experiencer  FAMILY / OTHER_EXPERIENCER            -> Other,          else Patient

With the additions, three condition-level cues from ``rules/eval/negex_temporality.json`` may also
make a row Historical (:func:`_condition_cues`): habits (tobacco, alcohol, drugs), a history trigger
inside the condition ("STATUS POST CABG"), a negation or family trigger that names history ("no
history of"), a history trigger whose reach only a nearer history trigger had cut, and a one-line
row that is only a chronic disease ("HYPERTENSION.", an item of a diagnosis list).

"Family member" in the gold file is scored as "Other" (ConText's experiencer is Patient vs Other;
the test kit has 3 non-patient rows here), and "possible" does not occur, so POSSIBLE_EXISTENCE is
Affirmed. Rows whose condition is not in their sentence (a quirk of the kit) get the defaults.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import numpy as np

from secondread.atomic import write_csv
from secondread.errors import SecondreadError
from secondread.records import metrics
from secondread.records.notes import CONTEXT_RULE_FILES

TEMPORALITY_FILE = "eval/negex_temporality.json"
COLUMNS = ("line", "condition", "sentence", "negation", "temporality", "experiencer")
OUT_COLUMNS = ("line", "negation", "temporality", "experiencer")
VALUES = {
    "negation": ("Affirmed", "Negated"),
    "temporality": ("Recent", "Historical", "Not particular"),
    "experiencer": ("Patient", "Other"),
}
GOLD_ALIASES = {"experiencer": {"Family member": "Other"}}
HEADLINE = (("negation", "Negated"), ("temporality", "Historical"))
ANCHORS = {
    "NegEx (Chapman et al. 2001), negation on discharge summaries": {"ppv": 0.845, "sensitivity": 0.778},
    "ConText (Harkema et al. 2009)": "per-attribute F-measures per report type in the paper: good for "
    "negated and hypothetical, moderate for historical and other-experiencer (exact figures: see the paper; "
    "not copied here unverified)",
    "target (issue 6)": {"negated_f1": 0.93, "historical_f1": 0.80},
}

_NEGATED = {"NEGATED_EXISTENCE"}
_HISTORICAL = {"HISTORICAL"}
_HYPOTHETICAL = {"HYPOTHETICAL"}
_OTHER = {"FAMILY", "OTHER_EXPERIENCER"}


# -------------------------------------------------------------------------------------- reading


def read_annotations(path: str | os.PathLike) -> list[dict]:
    """Rows of a NegEx-format TSV, each a dict of :data:`COLUMNS` (values stripped).

    Raises
    ------
    SecondreadError
        Missing/unreadable file, wrong header, a row with the wrong number of fields, an empty
        condition or an unknown label value.
    """
    p = Path(path)
    if not p.is_file():
        raise SecondreadError(path, "annotation file not found" if not p.exists() else "is not a file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SecondreadError(path, "not a UTF-8 text file") from None
    except OSError as exc:
        raise SecondreadError(path, f"cannot read ({exc.strerror or type(exc).__name__})") from None
    lines = text.splitlines()
    if not lines:
        raise SecondreadError(path, "empty file, expected a NegEx TSV with a header")
    header = [h.strip().lower() for h in lines[0].split("\t")]
    if header != list(COLUMNS):
        raise SecondreadError(path, f"header must be {' / '.join(COLUMNS)} (tab-separated)")
    rows, seen = [], set()
    allowed = {k: set(v) | set(GOLD_ALIASES.get(k, {})) for k, v in VALUES.items()}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(COLUMNS):
            raise SecondreadError(path, f"line {number}: {len(cells)} fields, expected {len(COLUMNS)}")
        row = dict(zip(COLUMNS, (c.strip() for c in cells)))
        if not row["line"] or row["line"] in seen:
            raise SecondreadError(path, f"line {number}: empty or repeated id in the first column")
        seen.add(row["line"])
        if not row["condition"]:
            raise SecondreadError(path, f"line {number}: empty condition")
        for key, ok in allowed.items():
            if row[key] not in ok:
                raise SecondreadError(path, f"line {number}: unknown {key} value (expected one of {', '.join(sorted(ok))})")
        rows.append(row)
    if not rows:
        raise SecondreadError(path, "no annotation rows")
    return rows


# ------------------------------------------------------------------------------------ predicting


@functools.lru_cache(maxsize=None)
def build_context_pipeline(additions: bool = True):
    """Tokenizer + ConText (medspaCy defaults, plus our rule files when ``additions``), cached."""
    import medspacy

    from secondread.records.notes import add_context_rules

    nlp = medspacy.load(medspacy_enable=["medspacy_tokenizer"])
    add_context_rules(nlp.add_pipe("medspacy_context", config={"rules": None}), additions)
    return nlp


def find_condition(sentence: str, condition: str) -> tuple[int, int] | None:
    """Character span of ``condition`` in ``sentence``: case-insensitive, any run of whitespace.

    Falls back to the longest leading part of the condition that does occur (the kit has a few
    truncated sentences), and to ``None`` when not even its first word is there.
    """
    words = condition.split()
    for k in range(len(words), 0, -1):
        pattern = r"\s+".join(re.escape(w) for w in words[:k])
        m = re.search(r"(?<![A-Za-z0-9])" + pattern, sentence, re.IGNORECASE)
        if m is None:
            m = re.search(pattern, sentence, re.IGNORECASE)
        if m is not None:
            return m.start(), m.end()
    return None


def predict_rows(rows: list[dict], additions: bool = True) -> list[dict]:
    """``[{"line", "negation", "temporality", "experiencer"}]`` for each row, in the kit's vocabulary."""
    nlp = build_context_pipeline(additions)
    context = nlp.get_pipe("medspacy_context")
    out = []
    sentences = [" ".join(r["sentence"].split()) for r in rows]
    docs = nlp.pipe(sentences, disable=["medspacy_context"])
    for row, sentence, doc in zip(rows, sentences, docs):
        categories: set[str] = set()
        span = find_condition(sentence, row["condition"])
        if span is not None and len(doc):
            ent = doc.char_span(span[0], span[1], label="CONDITION", alignment_mode="expand")
            if ent is not None:
                for i, token in enumerate(doc):
                    token.is_sent_start = i == 0
                doc.ents = [ent]
                context(doc)
                categories = {
                    m.category for m in doc.ents[0]._.modifiers
                    if not (additions and _inside_negation(m, ent))
                }
                if additions:
                    categories |= _condition_cues(doc, doc.ents[0], row["condition"])
        out.append({"line": row["line"], **_labels(categories)})
    return out


@functools.lru_cache(maxsize=None)
def temporality_rules() -> dict:
    """``rules/eval/negex_temporality.json``: the condition-level temporality cues (data, not code)."""
    from secondread.records.notes import rules_dir

    data = json.loads((rules_dir() / TEMPORALITY_FILE).read_text(encoding="utf-8"))
    data["historical_conditions"] = [re.compile(p, re.IGNORECASE) for p in data["historical_conditions"]]
    for key in ("one_line_chronic", "one_line_acute"):
        data[key] = re.compile(data[key], re.IGNORECASE)
    return data


def _condition_cues(doc, target, condition: str) -> set[str]:
    """HISTORICAL when the condition itself says so, which ConText cannot see.

    Why: medspaCy never lets a trigger that overlaps the target modify it, and a history trigger
    inside the target cuts the scope of the one before it ("past medical history of CAD, STATUS
    POST CABG" ends up Recent). Cues from ``negex_temporality.json``: a habit (tobacco, alcohol,
    drugs: begun long before the visit, Harkema 2009's > 14 days); one of the ``inside_triggers``
    inside the condition; a negation or family trigger that names history ("no history of
    seizure"); any HISTORICAL trigger whose own reach covers the condition
    (:func:`_covers_unless_terminated`); a one-line row naming a chronic disease (:func:`_one_line_chronic`).
    """
    rules = temporality_rules()
    if any(p.search(condition) for p in rules["historical_conditions"]):
        return {"HISTORICAL"}
    if _one_line_chronic(doc.text, condition):
        return {"HISTORICAL"}
    inside = set(rules["inside_triggers"])
    history_words = {w.lower() for w in rules["negation_history_words"]}
    for m in doc._.context_graph.modifiers:
        start, end = m.modifier_span
        words = {t.lower_ for t in doc[start:end]}
        if m.category in _HISTORICAL and target.start <= start and end <= target.end and m.rule.literal in inside:
            return {"HISTORICAL"}
        if m in target._.modifiers and m.category in _NEGATED | _OTHER and words & history_words:
            return {"HISTORICAL"}
        if m.category in _HISTORICAL and _covers_unless_terminated(m, target, doc):
            return {"HISTORICAL"}
    return set()


def _one_line_chronic(sentence: str, condition: str) -> bool:
    """A row that is only the condition ("HYPERTENSION.") naming a chronic disease, not an acute one."""
    rules = temporality_rules()
    only = " ".join(sentence.split()).strip(" .;:").lower() == " ".join(condition.split()).strip(" .;:").lower()
    return only and bool(rules["one_line_chronic"].search(condition)) and not rules["one_line_acute"].search(condition)


def _covers_unless_terminated(modifier, target, doc) -> bool:
    """Whether ``modifier``'s own scope (direction, ``max_scope``, the row's one sentence) reaches
    ``target`` with only terminations cutting it.

    Why: medspaCy lets a trigger of the same category cut a scope ("past medical history
    significant for chronic low-back pain and BULGING DISKS": "chronic" ends the reach of
    "medical history"), which is right for counting modifiers but wrong for the attribute: the
    nearer trigger is historical too, it just does not reach that far.
    """
    start, end = modifier.modifier_span
    if start < target.end and target.start < end:
        return False
    direction = modifier.direction.lower()
    forward = target.start >= end and direction in ("forward", "bidirectional")
    backward = target.end <= start and direction in ("backward", "bidirectional")
    if not (forward or backward):
        return False
    gap = target.start - end if forward else start - target.end
    if modifier.max_scope is not None and gap >= modifier.max_scope:
        return False
    lo, hi = (end, target.start) if forward else (target.end, start)
    for other in doc._.context_graph.modifiers:
        o_start, o_end = other.modifier_span
        stops = other.direction.upper() == "TERMINATE" or other.category.upper() in modifier.rule.terminated_by
        if stops and lo <= o_start and o_end <= hi:
            return False
    return True


def _inside_negation(modifier, target) -> bool:
    """A negation trigger inside the condition phrase ("disc bulge without narrowing") describes a
    part of it, not the condition; history triggers inside it ("status post CABG") do count."""
    start, end = modifier.modifier_span
    return modifier.category in _NEGATED and start < target.end and target.start < end


def _labels(categories: set[str]) -> dict:
    """ConText modifier categories -> the kit's three attribute values."""
    if categories & _HYPOTHETICAL:
        temporality = "Not particular"
    elif categories & _HISTORICAL:
        temporality = "Historical"
    else:
        temporality = "Recent"
    return {
        "negation": "Negated" if categories & _NEGATED else "Affirmed",
        "temporality": temporality,
        "experiencer": "Other" if categories & _OTHER else "Patient",
    }


# ------------------------------------------------------------------------------------- scoring


def gold_value(row: dict, attribute: str) -> str:
    """The gold value of ``attribute`` in the scored vocabulary ("Family member" -> "Other")."""
    return GOLD_ALIASES.get(attribute, {}).get(row[attribute], row[attribute])


def score(rows: list[dict], predictions: list[dict]) -> dict:
    """Per attribute and value: precision, recall, F1, support; accuracy; confusion; headline CIs."""
    from sklearn.metrics import accuracy_score, confusion_matrix

    result: dict = {"n": len(rows), "attributes": {}}
    for attribute, values in VALUES.items():
        gold = [gold_value(r, attribute) for r in rows]
        pred = [p[attribute] for p in predictions]
        result["attributes"][attribute] = {
            "per_value": metrics.per_value_scores(gold, pred, values),
            "accuracy": float(accuracy_score(gold, pred)) if rows else float("nan"),
            "confusion": {
                "labels": list(values),
                "rows_gold_columns_predicted": confusion_matrix(gold, pred, labels=list(values)).tolist(),
            },
        }
    headline = {}
    for attribute, value in HEADLINE:
        gold = np.array([gold_value(r, attribute) for r in rows], dtype=object)
        pred = np.array([p[attribute] for p in predictions], dtype=object)
        f1 = metrics.binary_f1(gold, pred, value)
        ci = metrics.bootstrap_f1_ci(gold == value, pred == value)
        headline[f"{value.lower()}_f1"] = {"f1": f1, "ci95": ci}
    result["headline"] = headline
    return result


def write_predictions(predictions: list[dict], out: str | os.PathLike) -> None:
    """Write ``line	negation	temporality	experiencer`` atomically (temp file, then rename)."""
    write_csv(out, OUT_COLUMNS, ([p[c] for c in OUT_COLUMNS] for p in predictions), delimiter="\t")


def evaluate_negex(path_tsv: str | os.PathLike, predictions: str | os.PathLike | None = None,
                   additions: bool = True) -> dict:
    """Predict and score every row of a NegEx-format TSV; optionally write ``predictions`` (OUT.tsv).

    Returns a JSON-ready dict: ``n``, ``attributes`` (per value precision/recall/f1/support,
    accuracy, confusion), ``headline`` (Negated F1 and Historical F1 with bootstrap 95% CIs),
    ``anchors`` (published figures), ``rules`` (which ConText rules ran).
    """
    rows = read_annotations(path_tsv)
    predicted = predict_rows(rows, additions=additions)
    if predictions is not None:
        write_predictions(predicted, predictions)
    result = score(rows, predicted)
    result["file"] = Path(path_tsv).name
    result["rules"] = "medspaCy ConText defaults" + (" + " + " + ".join(CONTEXT_RULE_FILES) if additions else " only")
    result["vocabulary_note"] = "gold 'Family member' scored as 'Other'"
    result["anchors"] = ANCHORS
    return result


def evaluate_split(path_tsv: str | os.PathLike, additions: bool = True) -> dict:
    """``{"full", "dev", "heldout"}`` scores on the saved seeded split (``rules/eval/splits.json``)."""
    rows = read_annotations(path_tsv)
    predicted = predict_rows(rows, additions=additions)
    split = metrics.load_splits()["negex"]
    out = {"full": score(rows, predicted)}
    for part in ("dev", "heldout"):
        keep = set(split[part])
        idx = [i for i, r in enumerate(rows) if r["line"] in keep]
        out[part] = score([rows[i] for i in idx], [predicted[i] for i in idx])
    return out

"""Label chest X-ray reports with the 14 ChestX-ray14 findings + ``normal``, from their text alone.

Why: OpenI's reports come with NegBio's expert gold standard in exactly this vocabulary
(``text/openi/labels.csv``), so a rule-based labeler can be measured against it the way NegBio and
the ChestX-ray8 labeler were. Same tools as the note reader: medspaCy target rules per finding
(``rules/eval/openi_findings.json``, label = the column name) and ConText for negation and
uncertainty (medspaCy defaults + ``rules/context.json`` + ``rules/eval/context_negex.json`` +
``rules/eval/context_openi.json``).

Conventions of the gold standard, mirrored here. The gold labels are the report's OpenI MeSH major
terms mapped to the 14 findings (checked on the dev split: each column is exactly one or two MeSH
headings, e.g. Atelectasis = "Pulmonary Atelectasis", Pleural_Thickening = "Thickening", Emphysema =
"Emphysema" or "Pulmonary Emphysema"), so the rules follow how those coders read a report:
- a finding is 1 when the report affirms it (findings or impression); negated and hypothetical
  mentions do not count; historical ones do (a "stable" or "again seen" finding is still there);
- hedges: "X versus Y" and "probable X" were coded X, "possibly X", "may represent X", "suggests X"
  and differential lists were not (``rules/eval/context_openi.json`` swaps the notes' "versus" and
  "probable" rules for these); ``uncertain_positive`` in the rule file can still make every
  uncertain mention of a finding count;
- neighbouring MeSH headings stay apart: "bullous emphysema" (Bullous Emphysema), "pleural
  scarring" (Cicatrix), "enlarged cardiac silhouette" (Cardiac Shadow) and "volume loss" are not
  Emphysema, Pleural_Thickening, Cardiomegaly or Atelectasis;
- ``normal`` is 1 when the report affirms no abnormality at all: none of the 14 and none of the
  ``OTHER`` terms (granuloma, degenerative change, sternotomy, ...). In the gold file ``normal``
  equals the report's MeSH term "normal", i.e. nothing abnormal was coded;
- ``Hernia`` is never positive in this gold standard (0 of 3,851, although hiatal hernias are
  reported), so hernia mentions count only as ``OTHER``.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import numpy as np

from secondread.atomic import write_csv
from secondread.errors import SecondreadError
from secondread.records import metrics

FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
COLUMNS = ("filename", *FINDINGS, "normal")
REPORT_COLUMNS = ("filename", "findings", "impression")
RULE_FILE = "eval/openi_findings.json"
CONTEXT_FILES = ("context.json", "eval/context_negex.json", "eval/context_openi.json")
NEVER_POSITIVE = {"Hernia"}
OTHER = "OTHER"
EXCLUDED = "EXCLUDE"
ANCHORS = {
    "ChestX-ray8 labeler (Wang et al. 2017) on OpenI": {"f1_about": 0.90},
    "NegBio (Peng et al. 2018)": "on average 5.1 F1 points over NegEx on this gold standard",
    "target (issue 6)": {"micro_f1": 0.93, "macro_f1": 0.85},
}


# -------------------------------------------------------------------------------------- reading


def _read_csv(path, required: tuple[str, ...], what: str) -> tuple[list[str], list[dict]]:
    p = Path(path)
    if not p.is_file():
        raise SecondreadError(path, f"{what} not found" if not p.exists() else "is not a file")
    try:
        with p.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            missing = [c for c in required if c not in header]
            if missing:
                raise SecondreadError(path, f"not a {what}: missing column(s) {', '.join(missing)}")
            rows = []
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise SecondreadError(path, f"row {reader.line_num}: wrong number of fields")
                rows.append(row)
    except UnicodeDecodeError:
        raise SecondreadError(path, "not a UTF-8 CSV file") from None
    except csv.Error as exc:
        raise SecondreadError(path, f"malformed CSV ({exc})") from None
    except OSError as exc:
        raise SecondreadError(path, f"cannot read ({exc.strerror or type(exc).__name__})") from None
    if not rows:
        raise SecondreadError(path, f"no rows in {what}")
    names = [r["filename"] for r in rows]
    if len(set(names)) != len(names) or not all(names):
        raise SecondreadError(path, "empty or repeated filename")
    return header, rows


def read_reports(path) -> list[dict]:
    """Rows of a reports CSV (``filename``, ``findings``, ``impression``, other columns ignored)."""
    return _read_csv(path, REPORT_COLUMNS, "reports CSV")[1]


def read_labels(path) -> tuple[list[str], list[dict]]:
    """Header and rows of a labels CSV with the 14 findings + normal as 0/1."""
    header, rows = _read_csv(path, COLUMNS, "labels CSV")
    for row in rows:
        for c in COLUMNS[1:]:
            if row[c].strip() not in ("0", "1"):
                raise SecondreadError(path, f"{row['filename']}: {c} must be 0 or 1")
    return header, rows


# ------------------------------------------------------------------------------------- labelling


@functools.lru_cache(maxsize=None)
def build_labeler():
    """Tokenizer, PyRuSH sentences, finding target rules, ConText; built once per process."""
    import medspacy
    from medspacy.ner import TargetRule

    from secondread.records.notes import rules_dir

    nlp = medspacy.load(medspacy_enable=["medspacy_tokenizer", "medspacy_pyrush", "medspacy_target_matcher"])
    nlp.get_pipe("medspacy_target_matcher").add(TargetRule.from_json(str(rules_dir() / RULE_FILE)))
    context = nlp.add_pipe("medspacy_context", config={"rules": None})
    context.add(context_rules(context.DEFAULT_RULES_FILEPATH))
    return nlp


def context_rules(default_rules_file: str) -> list:
    """medspaCy's default ConText rules, then each of :data:`CONTEXT_FILES` in turn.

    A file's ``replace_defaults`` drops default rules by literal (as for notes); its
    ``replace_rules`` drops rules of *any* earlier source by literal. Why the second key: radiology
    reports code hedges differently from discharge summaries ("atelectasis versus scarring" and
    "probable effusion" are coded as present in the OpenI gold standard), so the labeler swaps a few
    of the notes' rules for its own without touching what notes read.
    """
    from medspacy.context import ConTextRule

    from secondread.records.notes import rules_dir

    defaults = ConTextRule.from_json(default_rules_file)
    data = [json.loads((rules_dir() / n).read_text(encoding="utf-8")) for n in CONTEXT_FILES]
    replaced_defaults = set().union(*(d.get("replace_defaults", []) for d in data))
    rules = [r for r in defaults if r.literal not in replaced_defaults]
    for name, d in zip(CONTEXT_FILES, data):
        drop = set(d.get("replace_rules", []))
        rules = [r for r in rules if r.literal not in drop] + ConTextRule.from_json(str(rules_dir() / name))
    return rules


def report_text(row: dict) -> str:
    """Findings then impression, each closed as a sentence (PyRuSH must not join them)."""
    parts = [(row.get(k) or "").strip() for k in ("findings", "impression")]
    return "\n\n".join(p if p.endswith((".", "!", "?")) else p + "." for p in parts if p)


@functools.lru_cache(maxsize=None)
def uncertain_positive() -> frozenset[str]:
    """Findings whose uncertain mentions count as positive (``uncertain_positive`` in the rule file)."""
    from secondread.records.notes import rules_dir

    data = json.loads((rules_dir() / RULE_FILE).read_text(encoding="utf-8"))
    return frozenset(data.get("uncertain_positive", []))


def label_texts(texts: list[str], uncertain_is_positive: bool | frozenset[str] | None = None) -> list[dict]:
    """``{finding: 0/1, ..., "normal": 0/1}`` per text (nlp.pipe over the batch).

    ``uncertain_is_positive``: True/False for every finding, a set of findings, or None for the
    rule file's choice.
    """
    if uncertain_is_positive is None:
        uncertain_is_positive = uncertain_positive()
    nlp = build_labeler()
    out = []
    for doc in nlp.pipe(texts, batch_size=64):
        positive: set[str] = set()
        for ent in doc.ents:
            if ent.label_ == EXCLUDED:
                continue
            if ent._.is_negated or ent._.is_hypothetical or ent._.is_family:
                continue
            if ent._.is_uncertain and not (uncertain_is_positive is True or (
                    not isinstance(uncertain_is_positive, bool) and ent.label_ in uncertain_is_positive)):
                continue
            positive.add(ent.label_)
        labels = {f: int(f in positive and f not in NEVER_POSITIVE) for f in FINDINGS}
        labels["normal"] = int(not positive)
        out.append(labels)
    return out


def write_labels(rows: list[dict], out_csv, header=COLUMNS) -> None:
    """Write the labels CSV atomically (temp file in the same folder, then rename)."""
    write_csv(out_csv, header, ([r[c] for c in header] for r in rows))


def label_reports(reports_csv, out_csv) -> dict:
    """Label every report of ``reports_csv`` and write ``out_csv`` (labels.csv's exact columns).

    Returns ``{"n", "out", "positives": {column: count}}``.
    """
    reports = read_reports(reports_csv)
    labels = label_texts([report_text(r) for r in reports])
    rows = [{"filename": r["filename"], **lab} for r, lab in zip(reports, labels)]
    write_labels(rows, out_csv)
    return {
        "n": len(rows),
        "out": Path(out_csv).name,
        "positives": {c: int(sum(r[c] for r in rows)) for c in COLUMNS[1:]},
    }


# --------------------------------------------------------------------------------------- scoring


def score_rows(pred: dict[str, dict], gold: dict[str, dict], names: list[str]) -> dict:
    """Per-column precision/recall/F1/support; micro and macro F1 over the findings present."""
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    cols = list(COLUMNS[1:])
    y_true = np.array([[int(gold[n][c]) for c in cols] for n in names], dtype=int)
    y_pred = np.array([[int(pred[n][c]) for c in cols] for n in names], dtype=int)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    per = {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i]),
               "predicted": int(y_pred[:, i].sum())} for i, c in enumerate(cols)}
    present = [i for i, c in enumerate(cols[:-1]) if y_true[:, i].sum() > 0]
    yt, yp = y_true[:, present], y_pred[:, present]
    micro = float(f1_score(yt, yp, average="micro", zero_division=0))
    macro = float(f1_score(yt, yp, average="macro", zero_division=0))
    return {
        "n": len(names),
        "per_label": per,
        "findings_scored": [cols[i] for i in present],
        "micro_f1": {"f1": micro, "ci95": metrics.bootstrap_f1_ci(yt.astype(bool), yp.astype(bool))},
        "macro_f1": {"f1": macro, "ci95": _macro_ci(yt, yp)},
    }


def _macro_ci(yt: np.ndarray, yp: np.ndarray) -> list[float]:
    """Bootstrap CI of macro F1 (mean of per-finding F1), rows resampled, vectorised."""
    n = len(yt)
    if n == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(metrics.BOOTSTRAP_SEED)
    idx = rng.integers(0, n, (metrics.BOOTSTRAP_ROUNDS, n))
    tp = (yt & yp)[idx].sum(1)
    fp = ((1 - yt) & yp)[idx].sum(1)
    fn = (yt & (1 - yp))[idx].sum(1)
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0).mean(1)
    return [float(np.quantile(f1, 0.025)), float(np.quantile(f1, 0.975))]


def score_labels(pred_csv, gold_csv, names: list[str] | None = None) -> dict:
    """Score a predicted labels CSV against the gold one (every gold row must be predicted)."""
    _, gold_rows = read_labels(gold_csv)
    _, pred_rows = read_labels(pred_csv)
    gold = {r["filename"]: r for r in gold_rows}
    pred = {r["filename"]: r for r in pred_rows}
    missing = [n for n in gold if n not in pred]
    if missing:
        raise SecondreadError(pred_csv, f"{len(missing)} report(s) of the gold file have no prediction")
    result = score_rows(pred, gold, names if names is not None else list(gold))
    result["anchors"] = ANCHORS
    return result


def evaluate_split(reports_csv, gold_csv, uncertain_is_positive: bool | frozenset[str] | None = None) -> dict:
    """``{"full", "dev", "heldout"}`` scores on the saved seeded split (``rules/eval/splits.json``)."""
    reports = read_reports(reports_csv)
    _, gold_rows = read_labels(gold_csv)
    gold = {r["filename"]: r for r in gold_rows}
    reports = [r for r in reports if r["filename"] in gold]
    labels = label_texts([report_text(r) for r in reports], uncertain_is_positive)
    pred = {r["filename"]: lab for r, lab in zip(reports, labels)}
    split = metrics.load_splits()["openi"]
    out = {"full": score_rows(pred, gold, list(pred))}
    for part in ("dev", "heldout"):
        out[part] = score_rows(pred, gold, [n for n in split[part] if n in pred])
    return out

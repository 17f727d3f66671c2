"""Evaluations of the record reader on real data: NegEx kit, OpenI reports, MTSamples robustness.

Metrics are checked against scikit-learn computed here independently; output files against the
exact contract the CLI promises; figures against floors measured on the held-out split minus a
margin (NegEx negated F1 0.976 and historical 0.803 held-out; OpenI micro 0.937, macro 0.890).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support

from secondread.errors import SecondreadError
from secondread.records import metrics, negex, reportlabels
from secondread.records.robustness import robustness

DATA = Path(os.environ.get("SECONDREAD_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
NEGEX = DATA / "text" / "negex" / "annotations.tsv"
OPENI = DATA / "text" / "openi"
MTSAMPLES = DATA / "text" / "mtsamples" / "mtsamples.csv"

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*W036"),
    pytest.mark.skipif(not NEGEX.is_file(), reason="real data folder not found (set SECONDREAD_DATA)"),
]


@pytest.fixture(scope="module")
def negex_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("negex") / "out.tsv"
    return negex.evaluate_negex(NEGEX, predictions=out), out


def test_negex_predictions_file_contract(negex_run):
    _, out = negex_run
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "line\tnegation\ttemporality\texperiencer"
    rows = [l.split("\t") for l in lines[1:]]
    with NEGEX.open(encoding="utf-8") as fh:
        ids = [l.split("\t")[0] for l in fh.read().splitlines()[1:] if l.strip()]
    assert [r[0] for r in rows] == ids
    assert {r[1] for r in rows} <= {"Affirmed", "Negated"}
    assert {r[2] for r in rows} <= {"Recent", "Historical", "Not particular"}
    assert {r[3] for r in rows} <= {"Patient", "Other"}
    assert not list(out.parent.glob(".*tmp*"))


def test_negex_metrics_match_sklearn(negex_run):
    result, out = negex_run
    gold = {r["line"]: r for r in negex.read_annotations(NEGEX)}
    with out.open(encoding="utf-8") as fh:
        pred = list(csv.DictReader(fh, delimiter="\t"))
    for attribute, values in negex.VALUES.items():
        g = [{"Family member": "Other"}.get(gold[p["line"]][attribute], gold[p["line"]][attribute]) for p in pred]
        y = [p[attribute] for p in pred]
        pr, rc, f1, sup = precision_recall_fscore_support(g, y, labels=list(values), zero_division=0)
        for i, v in enumerate(values):
            got = result["attributes"][attribute]["per_value"][v]
            assert got["precision"] == pytest.approx(pr[i]) and got["recall"] == pytest.approx(rc[i])
            assert got["f1"] == pytest.approx(f1[i]) and got["support"] == sup[i]
    neg = result["headline"]["negated_f1"]
    g = [gold[p["line"]]["negation"] == "Negated" for p in pred]
    y = [p["negation"] == "Negated" for p in pred]
    assert neg["f1"] == pytest.approx(f1_score(g, y))
    assert neg["ci95"][0] <= neg["f1"] <= neg["ci95"][1]


def test_negex_figures_above_measured_floor(negex_run):
    result, _ = negex_run
    assert result["n"] == 1584
    assert result["headline"]["negated_f1"]["f1"] >= 0.94
    assert result["headline"]["historical_f1"]["f1"] >= 0.78  # measured 0.829
    split = negex.evaluate_split(NEGEX)
    assert split["heldout"]["headline"]["negated_f1"]["f1"] >= 0.94
    # the additions must beat medspaCy's defaults on the part never used for tuning
    base = negex.evaluate_split(NEGEX, additions=False)
    for key in ("negated_f1", "historical_f1"):
        assert split["heldout"]["headline"][key]["f1"] > base["heldout"]["headline"][key]["f1"]


@pytest.mark.parametrize("sentence, condition, negation, temporality", [
    # habits began long before the visit (Harkema 2009: > 14 days), affirmed or denied
    ("Denies alcohol or DRUGS.", "drugs", "Negated", "Historical"),
    ("The patient SMOKES CIGARETTES.", "smokes cigarettes", "Affirmed", "Historical"),
    # a history trigger inside the condition counts (medspaCy never lets it modify its own target)
    ("Past medical history of coronary artery disease, STATUS POST CABG, hypertension.", "status post CABG",
     "Affirmed", "Historical"),
    # a negation that names history is both
    ("There was no history of a SEIZURE.", "seizure", "Negated", "Historical"),
    # a nearer history trigger does not end the reach of the first; a relative clause does
    ("A woman with a past medical history significant for chronic low-back pain as well as three BULGING DISKS.",
     "bulging disks", "Affirmed", "Historical"),
    ("A woman with a history of multiple sclerosis, who had been reported to have VAGINAL BLEEDING.",
     "vaginal bleeding", "Affirmed", "Recent"),
    # a one-line diagnosis-list item naming a chronic disease began > 14 days before; an acute one did not
    ("HYPERTENSION.", "Hypertension", "Affirmed", "Historical"),
    ("CHRONIC OBSTRUCTIVE PULMONARY DISEASE EXACERBATION.", "chronic obstructive pulmonary disease exacerbation",
     "Affirmed", "Recent"),
    ("She was admitted with hypertension and CHEST PAIN.", "chest pain", "Affirmed", "Recent"),
    # ... but not medspaCy's "presentation" trigger inside a finding, nor "complex medical history"
    ("ABDOMEN: BOWEL SOUNDS ARE PRESENT, nontender.", "Bowel sounds are present", "Affirmed", "Recent"),
    ("A woman with complex medical history who was admitted for LETHARGY.", "lethargy", "Affirmed", "Recent"),
    ("Extremities reveal no peripheral cyanosis or EDEMA.", "edema", "Negated", "Recent"),
])
def test_negex_condition_cues(sentence, condition, negation, temporality):
    row = {"line": "1", "condition": condition, "sentence": sentence}
    got = negex.predict_rows([row])[0]
    assert (got["negation"], got["temporality"]) == (negation, temporality)


@pytest.mark.parametrize("content", ["", "line\tcondition\tsentence\n1\tx\ty\n",
                                     "line\tcondition\tsentence\tnegation\ttemporality\texperiencer\n1\tfever\tno fever\tMaybe\tRecent\tPatient\n"])
def test_negex_malformed_tsv_is_one_line_error(tmp_path, content):
    bad = tmp_path / "bad.tsv"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(SecondreadError) as err:
        negex.evaluate_negex(bad)
    assert "bad.tsv" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SecondreadError, match="not found"):
        negex.evaluate_negex(tmp_path / "missing.tsv")


def test_splits_are_disjoint_and_cover_the_data():
    s = metrics.load_splits()
    for name, n in (("negex", 1584), ("openi", 3080)):
        dev, held = set(s[name]["dev"]), set(s[name]["heldout"])
        assert not dev & held and len(dev | held) == n


@pytest.fixture(scope="module")
def openi_subset(tmp_path_factory):
    """The first 600 reports (the labeler is the same on any subset; the full run is the benchmark)."""
    d = tmp_path_factory.mktemp("openi")
    with (OPENI / "reports.csv").open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [r for _, r in zip(range(600), reader)]
        header = reader.fieldnames
    reports = d / "reports.csv"
    with reports.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, header)
        w.writeheader()
        w.writerows(rows)
    out = d / "labels.csv"
    summary = reportlabels.label_reports(reports, out)
    return summary, reports, out, [r["filename"] for r in rows]


def test_labels_file_has_exactly_the_gold_columns(openi_subset):
    summary, _, out, names = openi_subset
    with (OPENI / "labels.csv").open(encoding="utf-8") as fh:
        gold_header = fh.readline().strip().split(",")
    with out.open(encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == gold_header
    assert [r[0] for r in rows[1:]] == names and summary["n"] == len(names)
    assert all(v in ("0", "1") for r in rows[1:] for v in r[1:])


def test_label_scores_match_sklearn_and_floor(openi_subset, tmp_path):
    _, _, out, names = openi_subset
    gold_sub = tmp_path / "gold.csv"
    with (OPENI / "labels.csv").open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        keep = [r for r in reader if r["filename"] in set(names)]
        header = reader.fieldnames
    with gold_sub.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, header)
        w.writeheader()
        w.writerows(keep)
    result = reportlabels.score_labels(out, gold_sub)
    gold = {r["filename"]: r for r in keep}
    with out.open(encoding="utf-8") as fh:
        pred = {r["filename"]: r for r in csv.DictReader(fh)}
    cols = result["findings_scored"]
    yt = [[int(gold[n][c]) for c in cols] for n in names]
    yp = [[int(pred[n][c]) for c in cols] for n in names]
    assert result["micro_f1"]["f1"] == pytest.approx(f1_score(yt, yp, average="micro"))
    assert result["macro_f1"]["f1"] == pytest.approx(f1_score(yt, yp, average="macro", zero_division=0))
    p, r, f, s = precision_recall_fscore_support([int(gold[n]["Cardiomegaly"]) for n in names],
                                                 [int(pred[n]["Cardiomegaly"]) for n in names], average="binary")
    assert result["per_label"]["Cardiomegaly"]["f1"] == pytest.approx(f)
    assert "Hernia" not in cols  # no positive in the gold standard
    assert result["micro_f1"]["f1"] >= 0.88  # measured 0.937 held-out on the full split


@pytest.mark.parametrize("text, finding, expected", [
    # the gold standard is the report's MeSH major terms: "X versus Y" and "probable X" were coded X
    ("Bibasilar atelectasis versus scarring.", "Atelectasis", 1),
    ("Probable small left pleural effusion.", "Effusion", 1),
    ("No significant change in the small left effusion.", "Effusion", 1),
    # ... but not a hedge, a differential list or a finding no longer seen
    ("Opacity, possibly atelectasis or scarring.", "Atelectasis", 0),
    ("Hyperexpanded lungs suggesting emphysema.", "Emphysema", 0),
    ("Primary differential considerations include atelectasis, infiltrate, aspiration.", "Infiltration", 0),
    ("Blunting could be secondary to a small effusion versus scarring.", "Effusion", 0),
    ("The previously seen right upper lobe mass lesion is not seen.", "Mass", 0),
    # separate MeSH headings: Bullous Emphysema, Cicatrix (pleural scarring), Cardiac Shadow
    ("Stable bullous emphysematous changes.", "Emphysema", 0),
    ("Bilateral apical pleural scarring.", "Pleural_Thickening", 0),
    ("Bilateral apical pleural thickening.", "Pleural_Thickening", 1),
    ("The cardiac silhouette is enlarged.", "Cardiomegaly", 0),
    ("The heart size is mildly enlarged.", "Cardiomegaly", 1),
    ("Borderline heart size, stable.", "Cardiomegaly", 1),
    ("The heart is not enlarged.", "Cardiomegaly", 0),
    ("Borderline cardiac enlargement.", "Cardiomegaly", 1),
    ("Heart size is upper limits normal or mildly enlarged.", "Cardiomegaly", 1),
    ("Scarring represents sequela from the patient's cystic fibrosis.", "Fibrosis", 0),
    ("Lateral view limited, however small bilateral pleural effusions suspected.", "Effusion", 0),
])
def test_labeler_follows_the_gold_standards_coding(text, finding, expected):
    assert reportlabels.label_texts([text])[0][finding] == expected


def test_malformed_reports_csv_is_one_line_error(tmp_path):
    bad = tmp_path / "reports.csv"
    bad.write_text("uid,text\n1,no effusion\n", encoding="utf-8")
    with pytest.raises(SecondreadError) as err:
        reportlabels.label_reports(bad, tmp_path / "out.csv")
    assert "reports.csv" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out.csv").exists()
    with pytest.raises(SecondreadError, match="not found"):
        reportlabels.score_labels(tmp_path / "none.csv", OPENI / "labels.csv")


def test_mtsamples_subsample_runs_without_error():
    r = robustness(MTSAMPLES, limit=60)
    assert r["notes"] == 60 and r["failures"] == [] and r["analysed"] + r["empty"] == 60
    assert r["facts"] > 0 and r["notes_per_second"] > 0


@pytest.mark.parametrize("area", ["breast", "brain"])
def test_mtsamples_subsample_runs_with_every_area(area):
    r = robustness(MTSAMPLES, limit=40, area=area)
    assert r["area"] == area and r["failures"] == [] and r["analysed"] + r["empty"] == 40

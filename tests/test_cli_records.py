"""`secondread records ...` from the command line: the output files' contracts, checked independently."""

import csv
import json
import os
import subprocess
import sys

import pytest
from sklearn.metrics import f1_score


def run(*args):
    return subprocess.run([sys.executable, "-m", "secondread", "records", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600)


def head(src, dst, rows, delimiter):
    """The header and the first ``rows`` data rows of a real file (keeps the test quick)."""
    with open(src, newline="", encoding="utf-8") as f:
        reader = list(csv.reader(f, delimiter=delimiter))
    with open(dst, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=delimiter, lineterminator="\n").writerows(reader[: rows + 1])
    return reader[0], reader[1: rows + 1]


def test_evaluate_negex_writes_the_contracted_tsv(data_root, tmp_path):
    src = tmp_path / "negex.tsv"
    _, rows = head(data_root / "text" / "negex" / "annotations.tsv", src, 200, "\t")
    out = tmp_path / "pred.tsv"
    proc = run("evaluate-negex", src, "--json", "--predictions", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    with open(out, newline="", encoding="utf-8") as f:
        pred = list(csv.DictReader(f, delimiter="\t"))
    assert open(out).readline().rstrip("\n") == "line\tnegation\ttemporality\texperiencer"
    assert [p["line"] for p in pred] == [r[0] for r in rows] and result["n"] == 200
    assert {p["negation"] for p in pred} <= {"Affirmed", "Negated"}
    assert {p["temporality"] for p in pred} <= {"Recent", "Historical", "Not particular"}
    assert {p["experiencer"] for p in pred} <= {"Patient", "Other"}
    gold = [r[3] for r in rows]
    ours = f1_score(gold, [p["negation"] for p in pred], pos_label="Negated")
    assert result["headline"]["negated_f1"]["f1"] == pytest.approx(ours)


def test_label_reports_keeps_the_gold_columns(data_root, tmp_path):
    reports = tmp_path / "reports.csv"
    _, report_rows = head(data_root / "text" / "openi" / "reports.csv", reports, 60, ",")
    out = tmp_path / "labels.csv"
    proc = run("label-reports", reports, "--out", out)
    assert proc.returncode == 0, proc.stderr
    with open(data_root / "text" / "openi" / "labels.csv", encoding="utf-8") as f:
        gold_header = f.readline().strip().split(",")
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == gold_header and len(rows) == 61
    assert all(v in ("0", "1") for row in rows[1:] for v in row[1:])
    assert [r[0] for r in rows[1:]] == [r[0] for r in report_rows]  # one row per report, in order


def test_bad_records_input_fails_in_one_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("not\ta negex file\n")
    proc = run("evaluate-negex", bad)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "bad.tsv" in proc.stderr

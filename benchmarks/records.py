"""Record-reading evaluations on the real data: NegEx kit, OpenI labels, MTSamples speed.

    .venv/bin/python benchmarks/records.py            # all three (MTSamples: 7-10 min on 2 shared cores)
    .venv/bin/python benchmarks/records.py --no-mtsamples

Each figure is given on the development part (rules were tuned looking at its errors), on the
held-out part (never looked at while tuning) and on the full set, with bootstrap 95% CIs; the split
is saved in src/secondread/records/rules/eval/splits.json. NegEx also runs medspaCy ConText with its
default rules only, in the same run, to show what the additions bought.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
DATA = Path(os.environ.get("SECONDREAD_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def ci(d):
    return f"{d['f1']:.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]"


def negex_tables():
    from secondread.records import negex

    path = DATA / "text" / "negex" / "annotations.tsv"
    print("## NegEx kit (text/negex/annotations.tsv, 1,584 sentences)")
    print(f"command: secondread records evaluate-negex {path} --json --predictions OUT.tsv\n")
    print("| rules | part | n | Negated F1 [95% CI] | Historical F1 [95% CI] |")
    print("|---|---|---|---|---|")
    runs = {}
    for additions, name in ((False, "medspaCy ConText defaults"), (True, "defaults + secondread additions")):
        runs[additions] = negex.evaluate_split(path, additions=additions)
        for part in ("dev", "heldout", "full"):
            s = runs[additions][part]
            print(f"| {name} | {part} | {s['n']} | {ci(s['headline']['negated_f1'])} | {ci(s['headline']['historical_f1'])} |")
    full = runs[True]["full"]
    print("\nPer value, full set, with additions:\n")
    print("| attribute | value | precision | recall | F1 | support |")
    print("|---|---|---|---|---|---|")
    for attribute, block in full["attributes"].items():
        for value, m in block["per_value"].items():
            print(f"| {attribute} | {value} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |")
    print("\nAnchors: NegEx (Chapman 2001) negation PPV 0.845 / sensitivity 0.778; target Negated F1 >= 0.93, Historical F1 >= 0.80.\n")


def openi_tables():
    from secondread.records import reportlabels

    d = DATA / "text" / "openi"
    print("## OpenI reports (text/openi: 3,080 reports, NegBio gold labels)")
    print(f"command: secondread records label-reports {d / 'reports.csv'} --out LABELS.csv\n")
    runs = reportlabels.evaluate_split(d / "reports.csv", d / "labels.csv")
    print("| part | n | micro F1 [95% CI] | macro F1 [95% CI] |")
    print("|---|---|---|---|")
    for part in ("dev", "heldout", "full"):
        s = runs[part]
        print(f"| {part} | {s['n']} | {ci(s['micro_f1'])} | {ci(s['macro_f1'])} |")
    print("\nPer finding, full set (and F1 on the held-out part):\n")
    print("| finding | precision | recall | F1 | support | predicted | held-out F1 (support) |")
    print("|---|---|---|---|---|---|---|")
    for c, m in runs["full"]["per_label"].items():
        h = runs["heldout"]["per_label"][c]
        print(f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} | {m['predicted']} "
              f"| {h['f1']:.3f} ({h['support']}) |")
    print("\nmicro/macro over the 13 findings with a positive (Hernia has none; normal is listed, not averaged).")
    print("Anchors: ChestX-ray8 labeler about 0.90 F1 on OpenI; NegBio +5.1 F1 over NegEx; target micro >= 0.93, macro >= 0.85.\n")


def mtsamples_table():
    from secondread.records.robustness import robustness

    path = DATA / "text" / "mtsamples" / "mtsamples.csv"
    print("## MTSamples robustness (4,999 notes through extract_facts)")
    r = robustness(path)
    print("| notes | empty | analysed | failures | seconds | notes/s | facts |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {r['notes']} | {r['empty']} | {r['analysed']} | {len(r['failures'])} | {r['seconds']} | {r['notes_per_second']} | {r['facts']} |")
    for f in r["failures"]:
        print(f"failure {f['id']}: {f['reason']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-mtsamples", action="store_true", help="skip the 4,999-note speed run")
    args = ap.parse_args(argv)
    negex_tables()
    openi_tables()
    if not args.no_mtsamples:
        mtsamples_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the lesion is, measured against the experts: one table, one row per task and split.

Run:  .venv/bin/python benchmarks/localisation.py [--data PATH] [--only ct|mammo]

Rows (each a function in ``TASKS`` returning a list of row dicts, so the segmentation rows can be
added beside them):

- **CT nodules** (LIDC-IDRI-0001): sensitivity for the nodules >= 3 of 4 readers marked at 1/8..8
  and 10 false positives per scan, the diameter error (Lung-RADS mean diameter minus the readers'
  mean) and the seconds for the whole series (read + lung mask + candidates). **One scan: an
  end-to-end check, not an evaluation.** Compared with the same pipeline without the closing that
  brings juxtapleural nodules into the lung mask.
- **mini-MIAS lesions**: pointing game and top-1/3/5 hit rates (a hit = a candidate centre inside an
  expert circle) with women-bootstrap 95 % CIs, per split (parameters chosen on ``train`` only),
  for the classical blob and calcification-cluster candidates and the trained detector, against the
  obvious alternative: one candidate at the breast's centroid.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from secondread import localise, nodules
from secondread.datasets import data_root


def _fmt(value, ci=None) -> str:
    if value is None:
        return "-"
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    return text + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def ct_rows(data: Path) -> list[dict]:
    series = data / "ct" / "LIDC-IDRI-0001" / "series"
    result = nodules.evaluate_nodules(series)
    sens = result["sensitivity_at_fp_per_scan"]
    [d] = result["diameters"]
    row = {"task": "CT nodules (LIDC-IDRI-0001, 1 scan)", "method": "HU lung mask + roundness x size",
           "metric": "sens@FP/scan 1/8,1,4,8,10; CPM; rank; diam err mm",
           "value": f"{sens['0.125']:.0f},{sens['1']:.0f},{sens['4']:.0f},{sens['8']:.0f},{sens['10']:.0f}; "
                    f"{result['cpm']}; {d.get('rank', '-')}; {d.get('diameter_error_mm', '-')} "
                    f"(long axis {d.get('long_axis_error_mm', '-')}; tol {d['tolerance_mm']})",
           "seconds": result["seconds"],
           "command": "python -c 'from secondread.nodules import evaluate_nodules as e; print(e(\"SERIES\"))'"}
    saved = nodules.CLOSING_MM
    try:  # the obvious alternative: no closing, juxtapleural tissue stays outside the lung mask
        nodules.CLOSING_MM = 0.01
        start = time.perf_counter()
        plain = nodules.evaluate_nodules(series)
        [p] = plain["diameters"]
        alt = {"task": row["task"], "method": "same, without the 10 mm closing", "metric": row["metric"],
               "value": f"sens@10 {plain['sensitivity_at_fp_per_scan']['10']}; rank {p.get('rank', '-')}; "
                        f"diam err {p.get('diameter_error_mm', '-')}",
               "seconds": round(time.perf_counter() - start, 2), "command": row["command"]}
    finally:
        nodules.CLOSING_MM = saved
    return [row, alt]


def _centroid_source(image):
    mask = localise.breast_region(image)
    rows, cols = np.nonzero(mask)
    return [localise.Region(1, 1.0, float(cols.mean()), float(rows.mean()), 50.0)] if len(rows) else []


def mammo_rows(data: Path) -> list[dict]:
    from secondread.calcifications import calcification_clusters

    blobs = "python -c 'from secondread.localise import localise_dataset as l; print(l(split=\"{split}\")[\"summary\"])'"
    sources = (("CLAHE + blob_log + DoG contrast", None, blobs),
               ("breast centroid (1 point)", _centroid_source, "python benchmarks/localisation.py --only mammo  # baseline of this file"),
               ("calcification clusters alone (Hessian specks)", lambda image: calcification_clusters(image, top=10),
                "secondread localise --model mammo-calcifications --data ../shared/data/mammography/mini-mias "
                "--split {split} --json"))
    out = []
    for method, source, command in sources:
        for split in ("train", "val"):
            r = localise.localise_dataset(data, split=split, source=source, abnormal_only=True)
            s = r["summary"]
            out.append({"task": f"mini-MIAS lesions, {split} ({s['scored_images']} img, {s['women']} women)",
                        "method": method, "metric": "pointing; top1; top3; top5 [95% CI]",
                        "value": "; ".join(_fmt(s[k], s[f"{k}_ci95"]) for k in ("pointing", "top1", "top3", "top5")),
                        "seconds": r["seconds"], "command": command.format(split=split)})
    out.append(_detector_row(data))
    return out


def _detector_row(data: Path) -> dict:
    """The trained lesion detector (``mammo-abnormal``'s own map, peaks after NMS) on the val women."""
    from secondread.maps import localise_with_map

    r = localise_with_map("mammo-abnormal", data / "mammography" / "mini-mias", split="val")
    s = r["summary"]
    return {"task": f"mini-MIAS lesions, val ({s['images']} img, {s['patients']} women)",
            "method": "mammo-abnormal detector (five heat maps trained on the circles, averaged; best calcification cluster at rank 3)",
            "metric": "pointing; top1; top3; top5 [95% CI]",
            "value": "; ".join(_fmt(s[k], s[f"{k}_ci95"]) for k in ("pointing", "top1", "top3", "top5")),
            "seconds": r["seconds"],
            "command": "secondread localise --model mammo-abnormal --data ../shared/data/mammography/mini-mias "
                       "--split val --json"}


def seg_rows(data: Path) -> list[dict]:
    """LGG FLAIR abnormality segmentation (out of fold, all patients): benchmarks/segmentation.py's rows."""
    sys.path.insert(0, str(Path(__file__).parent))
    from segmentation import seg_rows as rows

    return rows(data)


TASKS = {"ct": ct_rows, "mammo": mammo_rows, "seg": seg_rows}
"""Row makers by name."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data root (default $SECONDREAD_DATA or ../shared/data)")
    parser.add_argument("--only", choices=sorted(TASKS), action="append")
    args = parser.parse_args(argv)
    data = data_root(args.data)
    rows = [row for name in (args.only or TASKS) for row in TASKS[name](data)]
    print("| task | method | metric | value | seconds |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['method']} | {r['metric']} | {r['value']} | {r['seconds']} |")
    print("\nCommands:")
    for command in dict.fromkeys(r["command"] for r in rows):
        print(f"  {command}")
    print(f"  .venv/bin/python benchmarks/localisation.py{' --data ' + args.data if args.data else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``secondread demo``: two real validation chest X-rays, two sample notes, two reports.

Why: a newcomer should see the whole flow on real data in one command. The images come from the
PneumoniaMNIST validation split (never used for training); the demo takes the clearest normal case
and the clearest pneumonia case by the shipped model's own probability, and says which ones it took.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import numpy as np

from ..analyze import analyze_image
from ..errors import SecondreadError
from ..explain import save_png
from ..finding import format_probability
from ..io import medmnist
from ..models.bundle import load_bundle
from ..records import extract_from_file

DATASET = "pneumoniamnist"


def locate_data(data_dir: str | None, allow_download: bool) -> Path:
    """The PneumoniaMNIST file from the data folder, or (if allowed) downloaded into the user cache."""
    try:
        return medmnist.locate(DATASET, data_dir)
    except SecondreadError:
        if not allow_download:
            raise
        print(f"{DATASET}.npz not found in the data folder; downloading it (MD5-checked) ...")
        return medmnist.download(DATASET)


def pick_cases(probs: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """Index of the lowest-scored normal image and of the highest-scored pneumonia image."""
    normal = np.flatnonzero(labels == 0)
    pneumonia = np.flatnonzero(labels == 1)
    return {"normal": int(normal[np.argmin(probs[normal])]),
            "pneumonia": int(pneumonia[np.argmax(probs[pneumonia])])}


def run_demo(out: Path, data_dir: str | None = None, allow_download: bool = True) -> list[dict]:
    """Analyse the two cases with their sample notes; print a summary table; return the rows."""
    bundle = load_bundle("pneumonia")
    images, labels = medmnist.load_split(locate_data(data_dir, allow_download), "val")
    probs = bundle.predict_proba(list(images))
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    rows = []
    for case, index in pick_cases(probs, labels).items():
        image_path = save_png(inputs / f"{DATASET}-val-{index:03d}.png", images[index])
        note = inputs / f"note_{case}.txt"
        with resources.as_file(resources.files(__package__) / f"note_{case}.txt") as src:
            shutil.copyfile(src, note)
        record = extract_from_file(note).to_dict()
        report = analyze_image(image_path, out / case, bundle, record)
        s = report["suggestion"]
        rows.append({"case": case, "val_index": index, "label": bundle.labels[str(int(labels[index]))],
                     "probability": s["probability"], "suggested": s["suggested"],
                     "confidence": s["uncertainty"]["level"], "report": out / case / "report.html"})
    _print_table(rows, bundle)
    return rows


def _print_table(rows: list[dict], bundle) -> None:
    print(f"\nsecondread demo: model '{bundle.name}' {bundle.version}, validation AUC "
          f"{bundle.metrics['auc']:.3f}; balanced threshold {bundle.threshold:.3f}\n")
    print(f"{'case':<10} {'val #':>5}  {'truth':<10} {'p(pneumonia)':>12}  {'suggestion':<14} {'confidence':<10}")
    for r in rows:
        verdict = "pneumonia" if r["suggested"] else "no pneumonia"
        print(f"{r['case']:<10} {r['val_index']:>5}  {r['label']:<10} {format_probability(r['probability'], 3):>12}  "
              f"{verdict:<14} {r['confidence']:<10}")
    print("\nReports:")
    for r in rows:
        print(f"  {r['report']}")
    print("\nDecision support, not a diagnosis.")

"""One row per task: our validation AUC/ACC with bootstrap 95% CIs, training seconds, inference
speed, and the published MedMNIST v2 anchors (test split) beside them.

The AUC/ACC are re-measured here by evaluating each shipped bundle on the validation split (the
test splits are withheld); the ACC is MedMNIST's (probability > 0.5). Training seconds are those
the bundle recorded when ``make models`` built it on this machine, or, with ``--retrain``, a fresh
timed training run into a temporary folder. Inference is end to end (preprocessing included),
PyTorch, and ONNX Runtime when installed, over the validation split. Folder data sets (LGG,
mini-MIAS) are read from ``$SECONDREAD_DATA`` with their saved per-patient / per-woman split; their
CIs resample images, not patients.

    .venv/bin/python benchmarks/accuracy.py [--retrain]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from secondread.datasets import data_root
from secondread.evaluate import evaluate_bundle
from secondread.io.medmnist import load_split, locate
from secondread.models import load_bundle
from secondread.models.onnx import onnxruntime_available
from secondread.train import DATASETS, folder_samples, train_bundle

TARGETS = {"pneumoniamnist": "0.975 / 0.92", "breastmnist": "0.93 / 0.88", "adrenalmnist3d": "0.88 / 0.82",
           "lgg": "0.95 / -", "mini-mias": "report AUC with CI"}


def _val_data(dataset: str, info: dict) -> tuple[str | Path, list]:
    """What ``evaluate`` reads for ``dataset`` (the npz file's name, or the folder set's folder) and
    the validation images for the speed measurement."""
    if info.get("kind", "npz") != "folder":
        return dataset, load_split(locate(dataset), "val")[0]
    from importlib import import_module

    folder = data_root() / import_module(f"secondread.datasets.{info['loader']}").FOLDER
    return folder, [s.image.pixels for s in folder_samples(dataset, split="val")]


def _speed(name: str, images, backend: str) -> float:
    bundle = load_bundle(name, backend=backend)
    bundle.predict_proba(images[:8])
    start = time.perf_counter()
    bundle.predict_proba(images)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--retrain", action="store_true", help="time a fresh training run of each task")
    args = p.parse_args()
    torch.set_num_threads(2)
    ort = onnxruntime_available()
    print("| task | bundle | val n (pos) | val AUC (95% CI) | val ACC (95% CI) | train s | img/s torch | "
          "img/s ONNX | published anchors, test AUC / ACC | target (test) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dataset, info in DATASETS.items():
        name = info["name"]
        data, images = _val_data(dataset, info)
        r = evaluate_bundle(name, data, split="val")
        bundle = load_bundle(name)
        seconds = bundle.config["training"]["time_seconds"]
        if args.retrain:
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                train_bundle(dataset, Path(tmp) / name, progress=False)
                seconds = round(time.perf_counter() - start, 1)
        torch_rate = _speed(name, images, "torch")
        onnx_rate = f"{_speed(name, images, 'onnx'):.0f}" if ort else "n/a"
        anchors = "; ".join(f"{k} {a:.3f} / {c:.3f}" for k, (a, c) in info["anchors"].items())
        print(f"| {dataset} | {name} | {r['n']} ({r['n_positive']}) | {r['auc']:.3f} ({r['auc_ci95'][0]:.3f}-"
              f"{r['auc_ci95'][1]:.3f}) | {r['accuracy']:.3f} ({r['accuracy_ci95'][0]:.3f}-{r['accuracy_ci95'][1]:.3f}) | "
              f"{seconds:.0f} | {torch_rate:.0f} | {onnx_rate} | {anchors} | {TARGETS[dataset]} |")


if __name__ == "__main__":
    main()

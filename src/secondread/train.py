"""Train a detection model on a MedMNIST split and write it as a model bundle.

Why: the shipped bundle must be rebuildable by anyone from the public data (``make models``), and a
figure in a model card is only trustworthy if the run that produced it is deterministic and used
the training split only. Everything is seeded, the preprocessing is the bundle's own declarative
spec applied with ``preprocess.apply``, and the validation split only selects (epoch, temperature,
thresholds) -- it is never trained on.
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .errors import SecondreadError
from .evaluate import binary_metrics, expected_calibration_error, fit_temperature, medmnist_auc, operating_points
from .io.medmnist import load_split, locate, md5sum
from .models.bundle import batched_logits, calibrated, prepare_images, save_bundle
from .models.nets import build

THREADS = 2
MEDMNIST_CITATION = (
    "Jiancheng Yang, Rui Shi, Donglai Wei, Zequan Liu, Lin Zhao, Bilian Ke, Hanspeter Pfister, Bingbing Ni. "
    "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image classification. "
    "Scientific Data 10, 41 (2023). doi:10.1038/s41597-022-01721-8")

DATASETS: dict[str, dict[str, Any]] = {
    "pneumoniamnist": {
        "name": "pneumonia", "finding": "pneumonia", "positive_label": "pneumonia",
        "labels": {"0": "normal", "1": "pneumonia"},
        "card": {
            "intended_use": ("Decision support for research: a second reader that flags paediatric chest "
                             "radiographs that may show pneumonia for a qualified reader to review. Not a "
                             "diagnosis and not a medical device."),
            "data": ("PneumoniaMNIST (MedMNIST v2): 5,856 paediatric chest X-rays (Kermany et al. 2018, "
                     "Guangzhou Women and Children's Medical Center) resized to 28 x 28 px; label 0 normal, "
                     "1 pneumonia (bacterial and viral merged)."),
            "licence": "CC BY 4.0 (MedMNIST v2)",
            "citation": MEDMNIST_CITATION,
            "limits": [
                "Trained at 28 x 28 px: fine detail (small consolidations, lines, tubes) is invisible to it.",
                "Paediatric patients (1-5 years) from one hospital (Guangzhou); adults and other sites, "
                "scanners and populations are untested.",
                "About 3:1 pneumonia to normal in training; predictive values change with prevalence.",
                "Only pneumonia versus normal: other findings are neither detected nor excluded.",
                "Figures are on the validation split, which also chose the epoch, temperature and "
                "thresholds; the official test split was withheld and not used.",
            ],
        },
    },
}


def _seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and fix threads: same seed -> same weights on this machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light chest-radiograph augmentation: rotation +-10 deg, shift +-2 px, scale +-5 %, and
    contrast/brightness jitter. No left-right flip: laterality (heart on the left) matters."""
    n, _, h, w = x.shape
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=gen)
    angle, scale = u(-10, 10) * math.pi / 180, u(0.95, 1.05)
    tx, ty = u(-2, 2) * 2 / w, u(-2, 2) * 2 / h
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out * u(0.9, 1.1).view(n, 1, 1, 1) + u(-0.1, 0.1).view(n, 1, 1, 1)


def preprocessing_spec(train_images: np.ndarray, size: int = 28) -> list[dict]:
    """The stored spec: per-image min-max, area resize to ``size``, then the training set's mean/std.

    Min-max first makes the spec valid for any input range (uint8 MedMNIST or a full-size CR after
    VOI); the fixed mean/std are measured on the training split after the first two steps.
    """
    base = [{"op": "normalise", "method": "minmax"},
            {"op": "resize", "shape": [size, size], "interpolation": "area"}]
    x = prepare_images(base, train_images)
    return base + [{"op": "normalise", "method": "fixed", "mean": float(x.mean()), "std": float(x.std())}]


def _subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded random subset of ``limit`` training images (all, in order, if None)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:int(limit)])


def _fit(model, x_tr, y_tr, x_val, y_val, *, epochs, batch_size, lr, seed, patience, progress):
    """Adam on BCE-with-logits with early stopping on validation AUC; returns the best-epoch state."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr.astype(np.float32))
    best = {"auc": -1.0, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    history, bar = [], tqdm(range(1, epochs + 1), desc="train", unit="epoch", file=sys.stderr,
                            disable=not progress, leave=True)
    for epoch in bar:
        model.train()
        order, total = torch.randperm(len(xt), generator=gen), 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            loss = F.binary_cross_entropy_with_logits(model(_augment(xt[idx], gen)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        auc = medmnist_auc(y_val, batched_logits(model, x_val).numpy())
        history.append({"epoch": epoch, "loss": total / len(xt), "val_auc": auc})
        if auc > best["auc"]:
            best = {"auc": auc, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        bar.set_postfix(loss=f"{total / len(xt):.4f}", val_auc=f"{auc:.4f}", best=best["epoch"])
        if epoch - best["epoch"] >= patience:
            break
    bar.close()
    return best, history


def _validation_summary(model, x_val, y_val) -> dict[str, Any]:
    """Temperature, operating points and metrics, all on validation and on calibrated probabilities."""
    logits = batched_logits(model, x_val).numpy()
    temperature = fit_temperature(logits, y_val)
    probs = calibrated(logits, temperature)
    ops = operating_points(y_val, probs)
    metrics = binary_metrics(y_val, probs, ops["balanced"]["threshold"])
    metrics["ece_before_calibration"] = expected_calibration_error(y_val, calibrated(logits, 1.0))
    metrics["ece_after_calibration"] = metrics["ece"]
    return {"temperature": temperature, "operating_points": ops,
            "threshold": ops["balanced"]["threshold"], "metrics": metrics}


def train_bundle(dataset: str = "pneumoniamnist", out: str | os.PathLike = "bundle",
                 data_dir: str | os.PathLike | None = None, epochs: int = 30, batch_size: int = 128,
                 lr: float = 1e-3, seed: int = 0, patience: int = 5, limit: int | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Train the seed CNN on ``dataset``'s training split and save a bundle to ``out``.

    Early stopping keeps the weights of the epoch with the best validation AUC; the temperature,
    operating points and metrics are then fitted/measured on validation. ``limit`` caps the number
    of training images (a seeded random subset) for quick tests. Returns the bundle's config.
    """
    if dataset not in DATASETS:
        raise SecondreadError(None, f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    info, started = DATASETS[dataset], time.perf_counter()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    _seed_everything(seed)
    try:
        path = locate(dataset, data_dir)
        train_images, train_labels = load_split(path, "train")
        val_images, val_labels = load_split(path, "val")
        keep = _subset(len(train_images), limit, seed)
        train_images, train_labels = train_images[keep], train_labels[keep]
        spec = preprocessing_spec(train_images)
        x_tr, x_val = prepare_images(spec, train_images), prepare_images(spec, val_images)
        arch_args = {"in_channels": 1, "input_size": x_tr.shape[-1], "hidden": 512}
        torch.manual_seed(seed)
        model = build("seed_cnn", **arch_args)
        best, history = _fit(model, x_tr, train_labels, x_val, val_labels, epochs=epochs,
                             batch_size=batch_size, lr=lr, seed=seed, patience=patience, progress=progress)
        model.load_state_dict(best["state"])
        summary = _validation_summary(model, x_val, val_labels)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    today = datetime.now(timezone.utc).date().isoformat()
    config = {
        "name": info["name"], "version": today.replace("-", "."), "created": today,
        "architecture": "seed_cnn", "arch_args": arch_args, "input_shape": list(x_tr.shape[-2:]),
        "preprocessing": spec, "labels": info["labels"], "positive_label": info["positive_label"],
        "finding": info["finding"], **summary,
        "training": {"dataset": dataset, "split_used": "train", "n_train": int(len(x_tr)),
                     "n_val": int(len(x_val)), "limit": limit, "epochs_max": epochs,
                     "epochs_run": len(history), "best_epoch": best["epoch"], "patience": patience,
                     "batch_size": batch_size, "lr": lr, "optimizer": "Adam", "loss": "BCEWithLogits",
                     "augmentation": "rotation +-10 deg, shift +-2 px, scale +-5 %, contrast/brightness +-10 %; no flip",
                     "seed": seed, "threads": THREADS, "time_seconds": round(time.perf_counter() - started, 1),
                     "torch_version": torch.__version__, "history": history},
        "data_source": {"file": path.name, "md5": md5sum(path)},
        "card": info["card"],
    }
    save_bundle(out, model, config)
    return config

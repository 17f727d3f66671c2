"""Do test-time augmentation or a small ensemble pay for their time? Measured on validation.

What: for each MedMNIST bundle (``pneumonia``, ``breast-us-28``, ``adrenal-ct-3d``) this scores, on
the validation split and in one run,

- the shipped bundle as it is (one forward pass per image);
- test-time augmentation (TTA): the mean logit over a few fixed views that the modality's training
  augmentation already covers (``VIEWS``: small shifts and rotations for chest films, plus the
  left-right mirror for breast ultrasound and adrenal glands; never a flip that training did not
  use), calibrated with the bundle's own temperature;
- with ``--ensemble K``, an ensemble of the shipped bundle and K-1 more trained with seeds 1..K-1 by
  the same recipe (``secondread.train.train_bundle``; cached in ``--cache``), mean of the calibrated
  probabilities.

For each: val AUC with a bootstrap 95% CI, the paired bootstrap CI of the AUC difference against the
shipped bundle (same resampled images for both), ECE, and images/s of the network on prepared
inputs (2 threads, batch 128, best of 3). A variant "pays" only when its paired difference CI lies
above zero; otherwise the cost (views x or K x the inference time, K x the training time) buys
nothing measurable.

Why: issue #4 asks for TTA and ensembles "only where the benchmark shows they pay for their time".
The validation split also chose each bundle's epoch and temperature, so all figures are optimistic
in the same way; the difference between variants is what this measures. The test splits are never
read.

    PYTHONPATH=src .venv/bin/python benchmarks/tta.py [--bundles pneumonia breast-us-28 adrenal-ct-3d]
        [--ensemble 3] [--ensemble-bundles NAME ...] [--cache /tmp/secondread-ensembles] [--threads 2]

Measured (2-core CPU, 2026-11-24, ``--ensemble 3 --ensemble-bundles pneumonia adrenal-ct-3d``; the
machine was shared with two training jobs, so the img/s column is only comparable within a row
group, run at the same moment; the four extra seeds trained in 282-2782 s each under that load):

    bundle         variant                val AUC [95% CI]           dAUC vs shipped [95% CI]        ECE  pays?
    pneumonia      shipped                0.9971 [0.9942, 0.9992]     -                             0.023  -
    pneumonia      TTA, 7 views           0.9972 [0.9943, 0.9992]     +0.0000 [-0.0004, +0.0006]    0.013  no
    pneumonia      ensemble of 3 seeds    0.9977 [0.9950, 0.9995]     +0.0005 [-0.0003, +0.0014]    0.020  no
    breast-us-28   shipped                0.9348 [0.8142, 0.9933]     -                             0.072  -
    breast-us-28   TTA, 6 views           0.9265 [0.8073, 0.9945]     -0.0084 [-0.0407, +0.0147]    0.062  no
    adrenal-ct-3d  shipped                0.8852 [0.7888, 0.9583]     -                             0.089  -
    adrenal-ct-3d  TTA, 2 views           0.8882 [0.7909, 0.9623]     +0.0030 [-0.0187, +0.0240]    0.096  no
    adrenal-ct-3d  ensemble of 3 seeds    0.8876 [0.7963, 0.9588]     +0.0024 [-0.0321, +0.0385]    0.094  no

No variant's paired difference excludes zero, while each costs 2-7x the inference (and an ensemble
3x the training): none is shipped. The BreastMNIST ensemble (3 x ~10 min of training) was not run.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from secondread.evaluate import expected_calibration_error
from secondread.io.medmnist import load_split, locate
from secondread.models.bundle import (
    batched_logits,
    calibrated,
    load_bundle,
    prepare_images,
)
from secondread.train import train_bundle

DATA = {"pneumonia": "pneumoniamnist", "breast-us-28": "breastmnist", "adrenal-ct-3d": "adrenalmnist3d"}
RESAMPLES, SEED = 1000, 0

# (mirror, degrees, shift_x px, shift_y px) per view; each inside its modality's training augmentation
# (train.AUGMENTATIONS): chest +-10 deg / +-2 px, no flip; ultrasound flip, +-15 deg, +-2 px;
# adrenal column mirror only (the volumes are binary shapes: a shift or rotation resamples edges).
VIEWS = {
    "pneumonia": [(False, 0, 0, 0), (False, 0, 1, 0), (False, 0, -1, 0), (False, 0, 0, 1), (False, 0, 0, -1),
                  (False, 5, 0, 0), (False, -5, 0, 0)],
    "breast-us-28": [(False, 0, 0, 0), (True, 0, 0, 0), (False, 8, 0, 0), (False, -8, 0, 0),
                     (True, 8, 0, 0), (True, -8, 0, 0)],
    "adrenal-ct-3d": [(False, 0, 0, 0), (True, 0, 0, 0)],
}


def view(x: torch.Tensor, mirror: bool, degrees: float, sx: float, sy: float) -> torch.Tensor:
    """One fixed view of a prepared batch ``[N, 1, (D,) H, W]``: mirror along the columns, rotate in
    the image (axial) plane and shift by whole pixels; bilinear, border padding, as in training."""
    if not (degrees or sx or sy):
        return torch.flip(x, dims=[-1]) if mirror else x
    h, w = x.shape[-2:]
    a, m = math.radians(degrees), -1.0 if mirror else 1.0
    rows = [[math.cos(a) * m, -math.sin(a), sx * 2 / w], [math.sin(a) * m, math.cos(a), sy * 2 / h]]
    theta = torch.tensor(rows, dtype=x.dtype).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def tta_logits(model, x: torch.Tensor, views) -> torch.Tensor:
    """Mean logit over ``views`` (averaging logits keeps the bundle's temperature meaningful)."""
    return torch.stack([batched_logits(model, view(x, *v)) for v in views]).mean(0)


def images_per_second(fn, n: int) -> float:
    """Best of three timed calls of ``fn`` (which scores ``n`` prepared images)."""
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def paired_bootstrap(y: np.ndarray, base: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """AUC of ``other`` with its 95% CI, and the 95% CI of ``AUC(other) - AUC(base)`` on the same
    resampled images (1000 resamples, seed 0; resamples with one class skipped)."""
    rng, aucs, diffs = np.random.default_rng(SEED), [], []
    for _ in range(RESAMPLES):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            a, b = roc_auc_score(y[i], other[i]), roc_auc_score(y[i], base[i])
            aucs.append(a)
            diffs.append(a - b)
    return {"auc": float(roc_auc_score(y, other)), "auc_ci": np.percentile(aucs, [2.5, 97.5]).tolist(),
            "diff": float(roc_auc_score(y, other) - roc_auc_score(y, base)),
            "diff_ci": np.percentile(diffs, [2.5, 97.5]).tolist()}


def ensemble_members(name: str, k: int, cache: Path) -> list:
    """The shipped bundle plus ``k - 1`` bundles of the same recipe with seeds 1..k-1 (trained once,
    then read from ``cache``)."""
    members = [load_bundle(name)]
    for seed in range(1, k):
        folder = cache / f"{name}-seed{seed}"
        if not (folder / "bundle.json").is_file():
            started = time.perf_counter()
            train_bundle(DATA[name], out=folder, seed=seed, progress=False)
            print(f"  trained {name} seed {seed} in {time.perf_counter() - started:.0f} s")
        members.append(load_bundle(folder))
    return members


def score_bundle(name: str, data_dir: Path, ensemble: int, cache: Path) -> list[dict]:
    """Rows of the table for one bundle: shipped, TTA and (optionally) the ensemble."""
    bundle = load_bundle(name)
    images, labels = load_split(locate(DATA[name], data_dir), "val")
    y = bundle.finding_labels(labels)
    x = torch.from_numpy(prepare_images(bundle.preprocessing, images))
    views = VIEWS[name]
    base = calibrated(batched_logits(bundle.model, x), bundle.temperature)
    tta = calibrated(tta_logits(bundle.model, x, views), bundle.temperature)
    rows = [{"variant": "shipped", "p": base, "cost": 1,
             "ips": images_per_second(lambda: batched_logits(bundle.model, x), len(x))},
            {"variant": f"TTA, {len(views)} views", "p": tta, "cost": len(views),
             "ips": images_per_second(lambda: tta_logits(bundle.model, x, views), len(x))}]
    if ensemble > 1:
        members = ensemble_members(name, ensemble, cache)
        probs = np.mean([calibrated(batched_logits(m.model, x), m.temperature) for m in members], axis=0)
        rows.append({"variant": f"ensemble of {ensemble} seeds", "p": probs, "cost": ensemble,
                     "ips": images_per_second(lambda: [batched_logits(m.model, x) for m in members], len(x))})
    for row in rows:
        row.update(paired_bootstrap(y, base, row["p"]), ece=expected_calibration_error(y, row["p"]),
                   bundle=name, n=len(y), positives=int(y.sum()))
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'bundle':<14} {'variant':<22} {'val AUC [95% CI]':<26} {'dAUC vs shipped [95% CI]':<28} "
          f"{'ECE':>6} {'img/s':>8}  pays?")
    for r in rows:
        lo, hi = r["auc_ci"]
        dlo, dhi = r["diff_ci"]
        diff = "-" if r["variant"] == "shipped" else f"{r['diff']:+.4f} [{dlo:+.4f}, {dhi:+.4f}]"
        pays = "-" if r["variant"] == "shipped" else ("yes" if dlo > 0 else "no")
        print(f"{r['bundle']:<14} {r['variant']:<22} {r['auc']:.4f} [{lo:.4f}, {hi:.4f}]     {diff:<28} "
              f"{r['ece']:6.3f} {r['ips']:8.0f}  {pays}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundles", nargs="+", default=list(DATA), choices=list(DATA))
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("SECONDREAD_DATA", "../shared/data")))
    parser.add_argument("--ensemble", type=int, default=1, help="ensemble size (1 = no ensemble)")
    parser.add_argument("--ensemble-bundles", nargs="+", default=None,
                        help="bundles to build an ensemble for (default: all of --bundles)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/secondread-ensembles"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.bundles:
        k = args.ensemble if args.ensemble_bundles is None or name in args.ensemble_bundles else 1
        rows += score_bundle(name, args.data, k, args.cache)
    print_table(rows)


if __name__ == "__main__":
    main()

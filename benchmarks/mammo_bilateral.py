"""Does the other breast help the mini-MIAS detector? Input variants by CV over all 109 women.

Run:  PYTHONPATH=src .venv/bin/python benchmarks/mammo_bilateral.py [--variants single,canonical,bilateral,difference]
          [--folds 0,1,2,3,4] [--threads 1] [--data PATH] [--epochs N]

Why: a radiologist reads a mammogram beside the other breast; a lesion is what one breast has and
the other has not. The shipped detector (``secondread.mammo``) sees one image. Each variant here
changes only the detector's input channels; architecture, recipe (the ``mini-mias`` row of
``train.DATASETS``), training (:func:`secondread.mammo.fit_detector`) and scoring
(:func:`secondread.mammo.hit_rates`) are the shipped ones:

- ``single``: the image as shipped (the control, in the same run);
- ``canonical``: every image mirrored so its chest wall is on the left (lesion positions share a frame);
- ``bilateral``: canonical, plus the same woman's other breast (mini-MIAS pairs mdb(2k-1) with
  mdb(2k)) mirrored the same way and its breast's bounding box stretched onto this one's;
- ``difference``: bilateral, plus the image minus the aligned other breast.

Folds: the saved per-woman folds of ``datasets/splits/mini-mias.json`` over the training and
validation women together (the test women are withheld); each fold's detector never sees the women
it is scored on. Maps of mirrored inputs are mirrored back before scoring. Printed per variant:
top-1/3/5 hit rates (a candidate centre within an expert circle) with women-bootstrap 95 % CIs, and
the image AUC (abnormal vs normal) of the map's maximum pooled out of fold. About 15 min per variant
on one thread.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from skimage import transform

from secondread import localise, mammo
from secondread.datasets import minimias
from secondread.datasets.splits import load
from secondread.models.bundle import prepare_images
from secondread.models.nets import build
from secondread.train import DATASETS

VARIANTS = ("single", "canonical", "bilateral", "difference")
SIZE = int(DATASETS["mini-mias"]["input_size"])


SMALL = [{"op": "normalise", "method": "minmax"}, {"op": "resize", "shape": [SIZE, SIZE], "interpolation": "area"}]
"""The shipped detector's first two preprocessing steps (its z-score is per channel here)."""


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return 0, mask.shape[0], 0, mask.shape[1]
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def _partner(refnum: str, by_id: dict[str, int]) -> int | None:
    """mini-MIAS numbers a woman's two breasts 2k-1 and 2k."""
    n = int(refnum[3:])
    return by_id.get(f"mdb{n + 1 if n % 2 else n - 1:03d}")


def _onto(other: np.ndarray, other_mask: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``other`` with its breast's bounding box stretched onto ``mask``'s (both already canonical)."""
    r0, r1, c0, c1 = _bbox(mask)
    s0, s1, d0, d1 = _bbox(other_mask)
    out = np.zeros_like(other)
    out[r0:r1, c0:c1] = transform.resize(other[s0:s1, d0:d1], (r1 - r0, c1 - c0), order=1, anti_aliasing=True)
    return out


def inputs(samples, variant: str) -> tuple[np.ndarray, np.ndarray]:
    """``[N, C, S, S]`` z-scored channels of ``variant`` and which images were mirrored."""
    small = list(prepare_images(SMALL, [np.asarray(s.image.pixels) for s in samples])[:, 0])
    masks = [localise.breast_mask(x) for x in small]
    mirrored = np.array([variant != "single" and localise.chest_wall_side(m) == "right" for m in masks])
    canon = [x[:, ::-1] if f else x for x, f in zip(small, mirrored)]
    cmask = [m[:, ::-1] if f else m for m, f in zip(masks, mirrored)]
    channels = [np.stack(canon)]
    if variant in ("bilateral", "difference"):
        by_id = {s.id: i for i, s in enumerate(samples)}
        other = []
        for i, s in enumerate(samples):
            j = _partner(s.id, by_id)
            other.append(canon[i] if j is None else _onto(canon[j], cmask[j], cmask[i]))
        channels.append(np.stack(other))
        if variant == "difference":
            channels.append(channels[0] - channels[1])
    x = np.stack(channels, 1)
    x = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / x.std(axis=(0, 2, 3), keepdims=True)
    return x.astype(np.float32), mirrored


def cross_validate(samples, variant: str, folds: list[int], fold_of: dict[str, int], epochs: int | None = None) -> dict:
    from sklearn.metrics import roc_auc_score

    info = DATASETS["mini-mias"]
    opt = dict(info["optim"], **({"epochs": epochs} if epochs else {}))
    x, mirrored = inputs(samples, variant)
    grid = SIZE // mammo.MAP_STRIDE
    pairs = [mammo.lesion_target(s.lesions, s.image.shape, grid, float(opt["sigma_factor"])) for s in samples]
    targets, located = np.stack([t for t, _ in pairs]), np.array([k for _, k in pairs], dtype=bool)
    targets[mirrored] = targets[mirrored][:, :, ::-1]
    labels = np.array([int(s.label == int(info["positive_class"])) for s in samples])
    women = np.array([fold_of[s.patient] for s in samples])
    maps = np.zeros((len(samples), grid, grid), np.float32)
    start, scored = time.perf_counter(), np.isin(women, folds)
    for k in folds:
        tr, te = np.flatnonzero(women != k), np.flatnonzero(women == k)
        model = build(info["architecture"], **dict(info["arch_args"], in_channels=x.shape[1]))
        torch.manual_seed(1000 + k)
        mammo.fit_detector(model, x[tr], targets[tr], located[tr], labels[tr], epochs=int(opt["epochs"]),
                           batch_size=int(opt["batch_size"]), lr=float(opt["lr"]), weight_decay=float(opt["weight_decay"]),
                           pos_weight=float(opt["pos_weight"]), image_weight=float(opt["image_weight"]), seed=1000 + k,
                           located_image_weight=float(opt.get("located_image_weight", 1.0)))
        maps[te] = mammo.probability_maps(model, x[te])
    maps[mirrored] = maps[mirrored][:, :, ::-1]  # back to the image's own orientation before scoring
    idx = np.flatnonzero(scored)
    found = mammo.hit_rates(maps[idx], [samples[i] for i in idx])
    out = {"variant": variant, "images": found["images"], "seconds": round(time.perf_counter() - start),
           "auc": float(roc_auc_score(labels[idx], maps[idx].reshape(len(idx), -1).max(1)))}
    for key in ("top1", "top3", "top5"):
        out[key] = found[key]
        out[f"{key}_ci95"] = mammo._women_ci([p[key] for p in found["per_image"]], [p["patient"] for p in found["per_image"]])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--folds", default="0,1,2,3,4")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default=None)
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (smoke runs)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    samples = minimias.samples(a.data, "train") + minimias.samples(a.data, "val")
    fold_of = {w: k for k, fold in enumerate(load("mini-mias")["folds"]) for w in fold}
    folds = [int(k) for k in a.folds.split(",")]
    rows = []
    for variant in a.variants.split(","):
        rows.append(cross_validate(samples, variant, folds, fold_of, a.epochs))
        print(rows[-1], flush=True)
    print(f"\n{len({s.patient for s in samples})} women, folds {a.folds}, one detector per fold and variant\n")
    print("| variant | lesion images | top-1 | top-3 (95% CI, women) | top-5 | image AUC | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ci = r["top3_ci95"] or [float("nan")] * 2
        print(f"| {r['variant']} | {r['images']} | {r['top1']:.2f} | {r['top3']:.2f} ({ci[0]:.2f}-{ci[1]:.2f}) | "
              f"{r['top5']:.2f} | {r['auc']:.3f} | {r['seconds']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

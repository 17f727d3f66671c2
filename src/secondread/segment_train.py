"""Training ``brain-mri-seg``: a recipe measured by cross-validation over patients, then the model
(two U-Nets) trained on every patient.

Why cross-validation rather than the validation split: the val split holds 7 patients, and the
Dice of one recipe moves by up to 0.1 from one group of patients to the next (out-of-fold Dice
per saved fold ranged 0.67-0.77 for the shipped recipe on 2026-12-04; a scratch harness scored it
0.726, this trainer 0.705 at the same cut, and a second run of this trainer reproduced its 0.701
exactly). The previous bundle's val Dice, 0.789, was the luck of its 7 patients: the
same recipe scored 0.674 out of fold over all 36 patients. So:

1. **Cross-validation** (:func:`cross_validate`): for each of the 5 saved folds of ``lgg.json``
   (per patient, stratified by institution, all 36 patients), a U-Net is trained on the other four
   for a fixed number of epochs (nothing is chosen by epoch) and predicts the held-out patients.
2. **Post-processing** (:func:`choose_postprocessing`): whether to average each slice with its
   mirror image (test-time flip), whether to cut slice by slice or each patient's consecutive
   slices as one volume, the threshold, hysteresis low threshold and smallest region are chosen on
   those out-of-fold probabilities, maximising :func:`secondread.segment.selection_score` (half
   Dice on tumour slices, half empty slices left empty).
3. **Figures**: the out-of-fold masks under that post-processing are scored like any prediction
   (:func:`secondread.segment.summarise`, patient-bootstrap CIs) and recorded in ``bundle.json``
   as ``metrics``. The post-processing was chosen on the same predictions (5 choices), so they
   are slightly optimistic; the recipe itself was chosen among a handful by the same CV.
4. **The shipped weights**: the same recipe trained on all 36 patients (25 % more data than any
   fold model) for the same epochs; its in-sample figures are never reported.

The shipped recipe is an ensemble of two U-Nets with the same seed and different losses
(:data:`LOSS_NAMES`), whose mean probability is the bundle's output; the two train side by side in
two 1-thread processes (on 2 cores, 789.5 s for the pair on all 36 patients against 1019.5 s
trained in turn with 2 threads, 2026-12-05/06).

The recipe (:data:`RECIPE`) is data, stored in the bundle: a MONAI U-Net at 128 px on FLAIR
scaled by its foreground (``preprocess.foreground_scale``), Dice + BCE (per batch or per slice), AdamW with a one-cycle
schedule, every tumour slice plus as many empty ones per epoch, and augmentation that MRI
tolerates (small affine, left-right flip, intensity scale/shift, gamma).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import segment
from .errors import SecondreadError

RECIPE: dict[str, Any] = {
    "input": 128,
    "normalise": {"op": "normalise", "method": "foreground", "high": 99.5, "ceiling": 1.5},
    "arch_args": {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [8, 16, 32, 64, 128],
                  "strides": [2, 2, 2, 2], "num_res_units": 1},
    "epochs": 60, "batch": 8, "lr": 2e-3, "weight_decay": 1e-4,
    "gamma": [0.74, 1.35],
    "seeds": [2024, 2024], "loss": ["batch_dice", "slice_dice"],
}
"""The shipped recipe. Compared by 5-fold out-of-fold Dice on tumour slices at threshold 0.5 and
64 px specks on 2026-12-04 (``benchmarks/segmentation_recipes.md`` lists every run): min-max input
0.674; foreground-scaled input with gamma 0.700 at 40 epochs, 0.726 at 60 (80 epochs: 0.716 on
three folds where 60 gave 0.734); neighbouring slices as channels (2.5D) 0.672; 256 px patches
0.62 on one fold (stopped). On 2026-12-05/06, with the chosen post-processing: one U-Net with
``batch_dice`` 0.727 / FP rate 0.015 (the previous bundle), with ``slice_dice`` 0.747 / 0.038, the
two as one ensemble (this recipe) 0.769 / 0.039, the best selection score (0.865 against 0.856)."""
THREADS = 2
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
LOW_THRESHOLDS = (0.1, 0.2, 0.3, None)
"""Hysteresis: keep regions above the low threshold that reach the threshold somewhere (``None``:
no hysteresis). A faint rim of a lesion the model is sure of is lesion; a faint blob alone is not."""
MIN_REGIONS = (0, 16, 32, 64, 128)
"""Candidate smallest-region sizes, in pixels of the input grid (x4 at 256 px)."""
MIN_VOLUMES = (0, 64, 128, 256, 512, 1024)
"""Candidate smallest-region sizes when cutting volumes, in voxels of the input grid (x4 at 256 px).
Larger than :data:`MIN_REGIONS`: a lesion spans several slices."""
CUTS = {"slice": MIN_REGIONS, "volume": MIN_VOLUMES}
VIEWS = ("plain", "flip")
"""Out-of-fold predictions: of each slice alone, and the mean with its mirror image (test-time flip)."""


# ============================================================================ data
def load_patients(data_dir=None, patients: int | None = None) -> dict[str, Any]:
    """Every LGG slice with its mask and patient (optionally only the first ``patients``), and the
    saved per-patient folds restricted to them (empty folds dropped). ``runs`` groups the slices
    into series of consecutive slices (:func:`secondread.segment.series_runs`), as inference does."""
    from .datasets import lgg
    from .datasets.splits import load

    items = lgg.samples(data_dir)
    if patients is not None:
        keep = set(sorted({s.patient for s in items})[:patients])
        items = [s for s in items if s.patient in keep]
    present = {s.patient for s in items}
    folds = [sorted(set(f) & present) for f in load("lgg")["folds"]]
    return {"slices": [s.image.pixels for s in items],
            "masks": [s.lesions[0].mask if s.lesions else np.zeros(s.image.shape, bool) for s in items],
            "patients": [s.patient for s in items], "ids": [s.id for s in items],
            "runs": segment.series_runs([(s.patient, int(s.attributes["slice"])) for s in items]),
            "folds": [f for f in folds if f]}


def _unit_spec(recipe: dict) -> list[dict]:
    """The preprocessing before the training set's mean/std: the normalisation, then the resize."""
    size = int(recipe["input"])
    return [dict(recipe["normalise"]), {"op": "resize", "shape": [size, size], "interpolation": "area"}]


def small_masks(masks: list[np.ndarray], size: int) -> np.ndarray:
    """Expert masks at the input grid: a cell is lesion if mostly lesion (area resize, >= 0.5)."""
    import cv2

    return np.stack([cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) >= 0.5
                     for m in masks]).astype(np.float32)[:, None]


# ============================================================================ one model
def _augment(seed: int, gamma: tuple[float, float]):
    """What MRI tolerates: small rotations/scales/shifts, left-right flips, intensity scale/shift,
    and gamma (FLAIR contrast between lesion and brain varies between scanners)."""
    from monai.transforms import (Compose, RandAdjustContrastd, RandAffined, RandFlipd, RandScaleIntensityd,
                                  RandShiftIntensityd)

    t = Compose([
        RandAffined(keys=("image", "mask"), prob=0.8, rotate_range=(np.pi / 12,), scale_range=(0.1, 0.1),
                    translate_range=(8, 8), mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandFlipd(keys=("image", "mask"), prob=0.5, spatial_axis=1),
        RandAdjustContrastd(keys="image", prob=1.0, gamma=tuple(gamma)),
        RandScaleIntensityd(keys="image", factors=0.15, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ])
    t.set_random_state(seed)
    return t


def _prior_bias(net, prior: float = 0.02) -> None:
    """Start the output at the lesion prior (logit of ``prior``) instead of 0.5 everywhere.

    Why: under Adam a bias moves about ``lr`` per step, so a U-Net starting at p = 0.5 spends its
    first thousand steps only learning that most pixels are background; on a CPU budget of about a
    thousand steps that is the whole run (as with focal-loss detectors, Lin et al. 2017). The
    output convolutions (the top level's transposed convolution and its residual unit's last
    convolution add up) share the logit equally.
    """
    import torch

    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
             and m.out_channels == 1 and m.bias is not None]
    with torch.no_grad():
        for conv in convs:
            conv.bias.fill_(float(np.log(prior / (1 - prior))) / len(convs))


def _normalised(net, mean: float, std: float):
    """``net`` behind the bundle's fixed normalisation, for training on unit-scaled slices: rotations
    then pad with true background (0)."""
    import torch

    class Normalised(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net((x - mean) / std)

    return Normalised()


LOSS_NAMES = {"batch_dice": "MONAI DiceCELoss(sigmoid, batch=True)",
              "slice_dice": "mean MONAI DiceLoss(sigmoid) of the tumour slices + BCE of every slice"}
"""``batch_dice``: MONAI's Dice + BCE with the Dice pooled over the batch (a large lesion outweighs
a small one). ``slice_dice``: the Dice of each slice with tumour, averaged, + BCE on every slice;
the figure the bundle is judged by is the mean Dice per tumour slice, where the first and last
slices of a tumour count as much as its middle."""


def segmentation_loss(name: str):
    """The recipe's loss as ``loss(logits, masks) -> scalar``."""
    import torch
    from monai.losses import DiceCELoss, DiceLoss

    if name == "batch_dice":
        return DiceCELoss(sigmoid=True, batch=True)
    if name != "slice_dice":
        raise ValueError(f"unknown loss {name!r} (known: {', '.join(LOSS_NAMES)})")
    dice = DiceLoss(sigmoid=True, batch=False, reduction="none")

    def slice_dice(logits, masks):
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, masks)
        tumour = masks.flatten(1).any(1)
        return bce + dice(logits[tumour], masks[tumour]).mean() if tumour.any() else bce

    return slice_dice


def member_losses(recipe: dict) -> list[str]:
    """The loss of each member, one per seed: the recipe's ``loss`` is one name for all of them or a
    list of names, one per seed (members trained differently make errors that cancel more)."""
    loss = recipe.get("loss", "batch_dice")
    names = [loss] * len(recipe["seeds"]) if isinstance(loss, str) else list(loss)
    if len(names) != len(recipe["seeds"]):
        raise ValueError(f"{len(names)} losses for {len(recipe['seeds'])} seeds: give one, or one per seed")
    unknown = sorted(set(names) - set(LOSS_NAMES))
    if unknown:
        raise ValueError(f"unknown loss {unknown[0]!r} (known: {', '.join(LOSS_NAMES)})")
    return names


def fit(model, x: np.ndarray, y: np.ndarray, recipe: dict, seed: int, max_steps: int | None = None,
        log: Callable[[str], None] | None = None, loss: str = "batch_dice") -> list[dict]:
    """Train ``model`` for the recipe's fixed number of epochs; returns the per-epoch history.

    Each epoch sees every tumour slice and as many slices without tumour, drawn afresh (a third of
    the slices have tumour; balancing speeds learning the rare class, and the empty slices still
    teach the model to output nothing there). No epoch is chosen: the one-cycle schedule anneals
    the learning rate to zero, and the last weights are the model.
    """
    import torch

    loss_fn = segmentation_loss(loss)
    tumour = np.flatnonzero(y.reshape(len(y), -1).any(1))
    empty = np.setdiff1d(np.arange(len(y)), tumour)
    per_epoch = len(tumour) + min(len(empty), max(len(tumour), 1))
    steps_per_epoch = max(1, int(np.ceil(per_epoch / recipe["batch"])))
    total = recipe["epochs"] * steps_per_epoch if max_steps is None else min(max_steps, recipe["epochs"] * steps_per_epoch)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=max(total, 1),
                                                pct_start=_warm_up_fraction(total))
    aug, rng = _augment(seed, recipe["gamma"]), np.random.default_rng(seed)
    history, step = [], 0
    for epoch in range(1, recipe["epochs"] + 1):
        model.train()
        t0, losses = time.perf_counter(), []
        chosen = np.concatenate([tumour, rng.choice(empty, per_epoch - len(tumour), replace=False)])
        for idx in np.array_split(rng.permutation(chosen), steps_per_epoch):
            if step >= total:
                break
            pairs = [aug({"image": x[i], "mask": y[i]}) for i in idx]
            xb = torch.stack([torch.as_tensor(np.asarray(p["image"])) for p in pairs]).float()
            yb = torch.stack([torch.as_tensor(np.asarray(p["mask"])) for p in pairs]).float()
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4) if losses else None,
                        "seconds": round(time.perf_counter() - t0, 1)})
        if log:
            log(json.dumps(history[-1]))
        if step >= total:
            break
    return history


def _warm_up_fraction(total: int) -> float:
    """5 % of the steps rising to the peak learning rate, except when that is exactly one step:
    torch's ``OneCycleLR`` then divides by zero (20 steps, found with ``max_steps=20``)."""
    return 0.05 if total * 0.05 != 1 else 0.1


def train_model(slices: list[np.ndarray], masks: list[np.ndarray], recipe: dict, seed_offset: int = 0,
                max_steps: int | None = None, log: Callable[[str], None] | None = None, workers: int = 1):
    """One model of the recipe (a seed ensemble when it lists several seeds) trained on ``slices``.

    ``workers`` > 1 trains the members side by side in that many processes, sharing this process's
    threads between them (:func:`_train_members_in_parallel`). Returns ``(model, spec, history)``:
    the network (or :func:`segment.mean_of_members` of several) in eval mode, the full
    preprocessing spec with this training set's mean/std, and the histories.
    """
    from . import preprocess
    from .models.bundle import prepare_images

    x = prepare_images(_unit_spec(recipe), slices)
    y = small_masks(masks, int(recipe["input"]))
    mean, std = float(x.mean()), float(x.std())
    spec = preprocess.validate(_unit_spec(recipe) + [{"op": "normalise", "method": "fixed", "mean": mean, "std": std}])
    jobs = [(seed + seed_offset, loss) for seed, loss in zip(recipe["seeds"], member_losses(recipe))]
    if workers > 1 and len(jobs) > 1:
        trained = _train_members_in_parallel(x, y, recipe, jobs, (mean, std), max_steps, workers, log)
    else:
        trained = [train_member(x, y, recipe, seed, loss, (mean, std), max_steps, log) for seed, loss in jobs]
    nets, histories = zip(*trained)
    model = nets[0] if len(nets) == 1 else segment.mean_of_members(list(nets)).eval()
    return model, spec, histories[0] if len(histories) == 1 else list(histories)


def train_member(x: np.ndarray, y: np.ndarray, recipe: dict, seed: int, loss: str, scale: tuple[float, float],
                 max_steps: int | None = None, log: Callable[[str], None] | None = None, threads: int | None = None):
    """One U-Net from its seed alone (weights, sampling and augmentation all follow ``seed``), so it
    comes out the same whichever process trains it. Returns ``(net in eval mode, history)``."""
    import torch
    from monai.utils import set_determinism

    if threads:
        torch.set_num_threads(threads)
    set_determinism(seed=seed)
    torch.manual_seed(seed)
    net = segment.build_net(recipe["arch_args"])
    _prior_bias(net)
    history = fit(_normalised(net, *scale), x, y, recipe, seed, max_steps, log, loss)
    return net.eval(), history


def _member_state(*args) -> tuple[dict, list[dict]]:
    """:func:`train_member` in a worker process, returning what pickles small: the weights."""
    net, history = train_member(*args)
    return net.state_dict(), history


def _train_members_in_parallel(x, y, recipe: dict, jobs: list[tuple[int, str]], scale, max_steps, workers: int,
                               log) -> list[tuple[Any, list[dict]]]:
    """The members trained side by side, each in its own process with an equal share of the threads.

    Why: this U-Net at 128 px is too small to keep two threads busy (150 steps took 10.5 s with 2
    threads, and 9.8 s each for two 1-thread processes running together, on 2026-12-05); the shipped
    pair trained in 789.5 s side by side against 1019.5 s in turn on the same machine. Expect 1.1-1.3x,
    not 2x: this machine's two vCPUs do not always give two cores' work
    (``benchmarks/segment_members.py`` on 2026-12-07: two plain Python loops took 1.36x one alone;
    300 steps of two members 49.0 s side by side, 54.4 s in turn). Each member is seeded alone
    (:func:`train_member`), so its weights equal those trained in turn with the same threads.
    ``spawn``, not ``fork``: this process has already run OpenMP, which a forked child may not.
    Histories are logged when the members finish (``log`` need not be picklable).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    workers = min(workers, len(jobs))
    threads = max(1, torch.get_num_threads() // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_member_state, x, y, recipe, seed, loss, scale, max_steps, None, threads)
                   for seed, loss in jobs]
        results = [f.result() for f in futures]
    trained = []
    for k, (state, history) in enumerate(results):
        net = segment.build_net(recipe["arch_args"])
        net.load_state_dict(state)
        trained.append((net.eval(), history))
        for line in history if log else []:
            log(json.dumps({"member": k, **line}))
    return trained


# ============================================================================ cross-validation
def cross_validate(data: dict, recipe: dict, max_steps: int | None = None,
                   log: Callable[[str], None] | None = None, workers: int = 1) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Out-of-fold logits (input grid, ``[N, S, S]``) of every slice: fold k's patients predicted by
    a model of ``recipe`` trained on the other folds' patients, once per :data:`VIEWS` (alone, and
    averaged with the mirror image). Returns ``({view: logits}, per-fold facts)``."""
    size = int(recipe["input"])
    patients = np.array(data["patients"])
    logits = {view: np.zeros((len(patients), size, size), np.float32) for view in VIEWS}
    facts = []
    for k, held in enumerate(data["folds"]):
        t0 = time.perf_counter()
        test = np.flatnonzero(np.isin(patients, held))
        train = np.flatnonzero(~np.isin(patients, held))
        model, spec, _ = train_model([data["slices"][i] for i in train], [data["masks"][i] for i in train],
                                     recipe, seed_offset=k, max_steps=max_steps, workers=workers)
        x = segment._prepare(spec, [data["slices"][i] for i in test])
        for view in VIEWS:
            logits[view][test] = segment._logits(model, x, flip=view == "flip")
        facts.append({"fold": k, "patients": list(held), "train_patients": len(set(patients[train])),
                      "seconds": round(time.perf_counter() - t0, 1)})
        if log:
            log(json.dumps(facts[-1]))
    return logits, facts


def upsampled(logits: np.ndarray, masks: list[np.ndarray]) -> list[np.ndarray]:
    """Out-of-fold probabilities at each slice's own size (done once per view: grid and figures share them)."""
    return [segment._upsampled_probability(lg.astype(np.float32), m.shape) for lg, m in zip(logits, masks)]


def _units(probs: list[np.ndarray], runs: list[list[int]], cut: str) -> list[tuple[list[int], np.ndarray]]:
    """What one cut of the grid sees: each slice alone, or each run of consecutive slices stacked
    as a volume (as :func:`secondread.segment.cut_series` does at inference)."""
    if cut == "slice":
        return [([i], probs[i]) for i in range(len(probs))]
    return [(run, np.stack([probs[i] for i in run])) for run in runs]


def cut_out_of_fold(probs: list[np.ndarray], runs: list[list[int]], settings: dict, input_shape) -> list[np.ndarray]:
    """Every slice's mask as inference cuts it (:func:`secondread.segment.cut_series`, one call per
    run of consecutive slices) under ``settings``, the cut keys of a bundle config (``cut``,
    ``threshold``, ``low_threshold``, ``min_region_px``, ``slice_cut``)."""
    bundle = segment.SegBundle(Path("."), {**settings, "input_shape": list(input_shape)}, None, "")
    masks: list[np.ndarray] = [None] * len(probs)  # type: ignore[list-item]
    for run in runs:
        for i, mask in zip(run, segment.cut_series(bundle, [probs[i] for i in run])):
            masks[i] = mask
    return masks


def _grid_row(cut: str, threshold: float, low: float | None, probs: list[np.ndarray], runs: list[list[int]],
              masks: list[np.ndarray], input_shape) -> list[tuple[int, float, float]]:
    """``(min_region, Dice on tumour slices, FP rate on empty slices)`` for every candidate smallest
    region of ``cut`` at one threshold pair: the hysteresis cut and its labelling are done once and
    the regions filtered by size, as :func:`secondread.segment.remove_specks` would."""
    from skimage import measure

    mins = CUTS[cut]
    scaled = [segment._scaled_px(m, masks[0].shape, input_shape) for m in mins]
    dice: list[list[float]] = [[] for _ in mins]
    fp: list[list[bool]] = [[] for _ in mins]
    for idx, stack in _units(probs, runs, cut):
        labels = measure.label(segment.postprocess(stack, threshold, low), connectivity=stack.ndim)
        sizes = np.bincount(labels.ravel())
        for j, px in enumerate(scaled):
            keep = sizes >= px if px > 1 else sizes > 0
            keep[0] = False
            kept = keep[labels] if stack.ndim == 3 else keep[labels][None]
            for k, i in enumerate(idx):
                p, t = kept[k], masks[i]
                if t.any():
                    dice[j].append(2.0 * (p & t).sum() / (p.sum() + t.sum()))
                else:
                    fp[j].append(bool(p.any()))
    return [(m, float(np.mean(d)) if d else 0.0, float(np.mean(f)) if f else 0.0) for m, d, f in zip(mins, dice, fp)]


def choose_postprocessing(probs: dict[str, list[np.ndarray]], runs: list[list[int]], masks: list[np.ndarray],
                          input_shape: tuple[int, int]) -> dict[str, Any]:
    """Test-time flip, cut (slice or volume), threshold, hysteresis low threshold and smallest
    region (input grid) maximising :func:`segment.selection_score` on out-of-fold probabilities
    (``probs``: one list per view, at the slices' own size). Ties go to the plainer choice."""
    grid = []
    for view, view_probs in probs.items():
        for cut in CUTS:
            for t in THRESHOLDS:
                for low in LOW_THRESHOLDS:
                    if low is not None and low >= t:
                        continue
                    for m, d, f in _grid_row(cut, t, low, view_probs, runs, masks, input_shape):
                        grid.append({"test_time_flip": view == "flip", "cut": cut, "threshold": t,
                                     "low_threshold": low, "min_region_px": m, "dice_tumour": round(d, 4),
                                     "fp_rate_empty": round(f, 4), "score": round(segment.selection_score(d, f), 5)})
    return best_setting(grid) | {"grid": grid}


def best_setting(grid: list[dict]) -> dict[str, Any]:
    """The grid's best entry by selection score, ties to the plainer choice (no flip, slice cut,
    threshold nearest 0.5, smallest speck size); a volume cut also gets ``slice_cut``, the best
    slice-by-slice setting of the same view, for slices without neighbours."""
    def key(g):
        return g["score"], -g["test_time_flip"], g["cut"] == "slice", -abs(g["threshold"] - 0.5), -g["min_region_px"]

    best = max(grid, key=key)
    out = {k: best[k] for k in ("test_time_flip", "cut", "threshold", "low_threshold", "min_region_px")}
    if best["cut"] == "volume":
        lone = max((g for g in grid if g["cut"] == "slice" and g["test_time_flip"] == best["test_time_flip"]), key=key)
        out["slice_cut"] = {k: lone[k] for k in ("threshold", "low_threshold", "min_region_px", "dice_tumour",
                                                 "fp_rate_empty")}
    return out


def out_of_fold_metrics(probs: list[np.ndarray], data: dict, post: dict, input_shape: tuple[int, int]) -> dict[str, Any]:
    """The out-of-fold masks under the chosen post-processing, scored like any prediction."""
    per_image, keep = [], {}
    masks = cut_out_of_fold(probs, data["runs"], post, input_shape)
    for mask, truth, pid, iid in zip(masks, data["masks"], data["patients"], data["ids"]):
        keep[iid] = (mask, truth)
        per_image.append({"id": iid, "patient": pid, "tumour": bool(truth.any()), **segment.score_pair(mask, truth)})
    per_patient = segment.patient_dice(per_image, keep)
    return {**segment.summarise(per_image, per_patient), "per_patient_dice": per_patient}


def save_out_of_fold(path, logits: dict[str, np.ndarray], data: dict) -> Path:
    """Out-of-fold logits (input grid, float16; ``logits`` alone, ``logits_flip`` averaged with the
    mirror image) with each slice's id and patient, as ``.npz``.

    Why: cross-validation is the 50 minutes of a rebuild, and post-processing ideas (3D hysteresis
    across slices, other cuts) need only these maps; written whole or not at all
    (:func:`secondread.atomic.write_bytes`), so a reader never sees half of one."""
    import io

    from .atomic import write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, logits=logits["plain"].astype(np.float16), logits_flip=logits["flip"].astype(np.float16),
                        ids=np.array(data["ids"]),
                        patients=np.array(data["patients"]))
    write_bytes(path, buf.getvalue())
    return path


# ============================================================================ the bundle
def train_seg(out, data_dir=None, *, recipe: dict | None = None, patients: int | None = None,
              cv: bool = True, max_steps: int | None = None, threads: int = THREADS, parallel_members: bool = True,
              log: Callable[[str], None] | None = None, oof_out=None) -> dict[str, Any]:
    """Cross-validate ``recipe`` (default :data:`RECIPE`), choose the post-processing out of fold,
    train the shipped model on every patient and write the bundle to ``out``. Returns its config.

    ``cv=False`` skips steps 1-3 (threshold 0.5, no hysteresis, no speck removal, no metrics);
    ``patients``/``max_steps`` make the tiny versions the tests train; ``oof_out`` (a ``.npz``
    path) keeps the out-of-fold logits (:func:`save_out_of_fold`). An ensemble's members train side by
    side, ``threads`` shared between them, unless ``parallel_members`` is false.
    """
    from .models.nets import torch_threads

    recipe = copy.deepcopy(recipe or RECIPE)
    workers = min(len(recipe["seeds"]), threads) if parallel_members else 1
    t_start = time.perf_counter()
    with torch_threads(threads):
        data = load_patients(data_dir, patients)
        shape = (int(recipe["input"]),) * 2
        config = _base_config(recipe, data, shape)
        if cv:
            logits, facts = cross_validate(data, recipe, max_steps, log, workers)
            if oof_out is not None:
                save_out_of_fold(oof_out, logits, data)
            probs = {view: upsampled(lg, data["masks"]) for view, lg in logits.items()}
            post = choose_postprocessing(probs, data["runs"], data["masks"], shape)
            config.update({k: post[k] for k in ("test_time_flip", "cut", "threshold", "low_threshold", "min_region_px",
                                                "slice_cut") if k in post})
            chosen = probs["flip" if post["test_time_flip"] else "plain"]
            config["metrics"] = {"split": f"{len(data['folds'])}-fold cross-validation, out of fold",
                                 **out_of_fold_metrics(chosen, data, post, shape)}
            config["selection"] = {"objective": "0.5 * mean Dice on tumour slices + 0.5 * (1 - FP rate on empty "
                                                "slices), out of fold", "grid": post["grid"], "folds": facts}
            del probs, chosen  # two views of 1261 maps at 256 px: ~0.7 GB not needed by the final training
        t_fit, c_fit = time.perf_counter(), _cpu_seconds()
        model, spec, history = train_model(data["slices"], data["masks"], recipe, max_steps=max_steps, log=log,
                                           workers=workers)
        config["preprocessing"] = spec
        config["training"].update(train_seconds=round(time.perf_counter() - t_fit, 1),
                                  train_cpu_seconds=round(_cpu_seconds() - c_fit, 1), member_processes=workers,
                                  total_seconds=round(time.perf_counter() - t_start, 1), history=history)
        save_seg_bundle(out, model, config)
    return config


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the members trained side by side)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _base_config(recipe: dict, data: dict, shape: tuple[int, int]) -> dict[str, Any]:
    import torch

    return {"name": segment.NAME, "task": segment.TASK, "version": time.strftime("%Y.%m.%d"),
            "created": time.strftime("%Y-%m-%d"), "finding": "FLAIR abnormality (lower-grade glioma)",
            "modalities": ["MR", "OT"], "architecture": segment.ARCHITECTURE, "arch_args": recipe["arch_args"],
            "members": len(recipe["seeds"]), "input_shape": list(shape), "preprocessing": [],
            "threshold": 0.5, "low_threshold": None, "min_region_px": 0, "cut": "slice", "test_time_flip": False,
            "recipe": recipe,
            "training": {"dataset": "lgg", "split_used": "all", "patients": len(set(data["patients"])),
                         "patient_ids": sorted(set(data["patients"])),
                         "n_train": len(data["slices"]), "n_train_tumour": int(sum(m.any() for m in data["masks"])),
                         "epochs": recipe["epochs"], "seeds": list(recipe["seeds"]), "threads": torch.get_num_threads(),
                         "loss": " | ".join(LOSS_NAMES[n] for n in member_losses(recipe)), "optimizer": "AdamW + OneCycle",
                         "weights": "last epoch (fixed epochs, nothing chosen by epoch)",
                         "sampling": "per epoch: every tumour slice + as many random empty slices",
                         "augmentation": "RandAffine (rotate +-15 deg, scale +-10 %, shift 8 px, p 0.8), left-right "
                                         f"flip, gamma {recipe['gamma'][0]}-{recipe['gamma'][1]}, intensity scale "
                                         "+-15 %, shift +-0.1",
                         "torch": torch.__version__,
                         # same seed, same weights only with the same CPU kernels: re-run on an AVX2 host
                         # (2026-12-07), the CV gave Dice 0.757 where this bundle's build gave 0.769
                         "cpu_capability": torch.backends.cpu.get_cpu_capability()},
            "card": _card_facts()}


def save_seg_bundle(folder, model, config: dict[str, Any]) -> Path:
    """Write config, weights and model card into ``folder``, replacing it whole (temp dir, rename)."""
    from .models.bundle import install_bundle_folder

    return install_bundle_folder(folder, config, model, model_card(config))


def _card_facts() -> dict[str, Any]:
    return {"intended_use": "Decision support for research: outline FLAIR abnormality on axial brain MRI "
                            "slices of adults with lower-grade glioma; not a diagnosis.",
            "data": "LGG segmentation dataset (Buda et al., TCGA-LGG via TCIA; 36-patient FLAIR subset in "
                    "mri/lgg). Figures: 5-fold cross-validation by patient (lgg.json folds); shipped weights: "
                    "all 36 patients; the withheld test patients were never read.",
            "licence": "CC BY-NC-SA 4.0 (dataset, per its Kaggle page); TCIA data usage policy",
            "citation": "M. Buda, A. Saha, M. A. Mazurowski, Computers in Biology and Medicine 109 (2019) 218-225.",
            "limits": ["Trained on 36 patients from 5 TCGA institutions; FLAIR only, 256 px axial slices.",
                       "Runs at 128 px: outlines are smoothed, and the smallest lesions (first and last tumour "
                       "slices) and faint low-contrast lesions are often missed entirely.",
                       "The out-of-fold figures vary widely between groups of patients (per-fold Dice "
                       "0.6-0.75): expect a new patient's Dice anywhere in that range or beyond.",
                       "Raster slices carry no spacing: areas and diameters are in pixels unless the input is "
                       "DICOM/NIfTI with spacing."]}


def _lone_slice_sentence(lone: dict, input_shape) -> str:
    low = lone.get("low_threshold")
    return (f" A slice without neighbours is cut by itself at {lone['threshold']}"
            + (f" with hysteresis down to {low}" if low is not None else "")
            + f", regions under {segment._scaled_px(lone['min_region_px'], (256, 256), input_shape)} px at 256 px dropped "
            f"(out of fold, slice by slice: Dice on tumour slices {lone['dice_tumour']}, FP rate {lone['fp_rate_empty']}).")


def model_card(config: dict[str, Any]) -> str:
    """Markdown card written from the config itself, so the two cannot disagree."""
    card, m, t = config.get("card", {}), config.get("metrics", {}), config.get("training", {})
    slice_px = segment._scaled_px(config["min_region_px"], (256, 256), config["input_shape"])
    low = config.get("low_threshold")
    volume, members = config.get("cut") == "volume", int(config.get("members", 1))
    unit = "voxels" if volume else "px"
    lines = [f"# Model card: {config['name']} {config.get('version', '')}".rstrip(), "",
             f"Created {config.get('created', '?')}. Task: **segmentation** of {config.get('finding', '?')}. "
             f"Architecture MONAI `UNet` {json.dumps(config['arch_args'])}, input {config['input_shape']} px"
             + (f", {members} of them (one per loss below) averaged as probabilities" if members > 1 else "")
             + "; the probability map"
             + (" (the mean of the slice's and of its mirror image's logits)" if config.get("test_time_flip") else "")
             + f" is resized to the slice's size, cut at {config['threshold']}"
             + (f" with hysteresis down to {low}" if low is not None else "")
             + (", each series of consecutive slices as one volume" if volume else ", slice by slice")
             + f", and regions smaller than {config['min_region_px']} {unit} of the input grid ({slice_px} {unit} "
             "at 256 px) are dropped (all chosen out of fold)."
             + (_lone_slice_sentence(config["slice_cut"], config["input_shape"]) if volume else ""), "",
             "## Intended use", "", card.get("intended_use", "Research decision support; not a diagnosis."), "",
             "## Data", "", card.get("data", "?"), "",
             f"Training: {t.get('n_train', '?')} slices ({t.get('n_train_tumour', '?')} with tumour) of "
             f"{t.get('patients', '?')} patients, {t.get('epochs', '?')} epochs on CPU ({t.get('threads', '?')} threads"
             + (f" shared by {t['member_processes']} processes training the members side by side"
                if t.get("member_processes", 1) > 1 else "")
             + f") in {t.get('train_seconds', '?')} s; loss {t.get('loss', '?')}; augmentation "
             f"{t.get('augmentation', '?')}.", "",
             "## Licence and citation", "", f"Data licence: {card.get('licence', '?')}.", "",
             card.get("citation", ""), "", f"## Figures ({m.get('split', 'none')})", ""]
    if m:
        fmt = segment._fmt_ci
        lines += [f"- Dice on slices with tumour: {fmt(m, 'dice_tumour')} over {m.get('tumour_images')} slices "
                  f"(median {m.get('dice_tumour_median')}); {m.get('missed_tumour_images')} missed entirely",
                  f"- HD95 on slices with tumour (both masks non-empty), pixels: {fmt(m, 'hd95_tumour', 2)}",
                  f"- False-positive rate on slices without tumour: {fmt(m, 'fp_rate_empty')} over "
                  f"{m.get('empty_images')} slices",
                  f"- Per-patient 3D Dice: {fmt(m, 'dice_patient_3d')} over {m.get('patients')} patients",
                  f"- Issue 5 target (Dice >= 0.80 on slices with tumour): "
                  f"{'met' if (m.get('dice_tumour') or 0) >= 0.80 else 'not met'} out of fold",
                  "", "Each slice is predicted by a model that never saw its patient; confidence intervals are "
                  "percentile bootstraps over patients; Dice counts an empty prediction on a tumour slice as 0. "
                  "The test-time flip, cut, threshold, hysteresis and speck size were chosen on these same predictions, so the "
                  "figures are slightly optimistic. The shipped weights saw every patient here: their own "
                  "figures on these slices would be in-sample and are not reported."]
    lines += ["", "## Limits", ""] + [f"- {item}" for item in card.get("limits", [])]
    return "\n".join(lines) + "\n"


# ============================================================================ command line
def main(argv: list[str] | None = None) -> int:
    """``python -m secondread.segment_train [--out DIR] [--epochs N] [--seeds 1,2] [--loss L] [--no-cv] [--oof-out F]``:
    rebuild the shipped bundle (5 folds of about 10 min, then the final pair in 13 min: 70 min on 2026-12-06)."""
    p = argparse.ArgumentParser(prog="python -m secondread.segment_train")
    p.add_argument("--out", default=str(segment.ZOO / segment.NAME))
    p.add_argument("--data", default=None, help="data root (default $SECONDREAD_DATA)")
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    p.add_argument("--input", type=int, default=RECIPE["input"], help="input side in pixels (multiple of 16)")
    p.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=RECIPE["seeds"],
                   help="comma-separated seeds, one U-Net each, averaged (default %(default)s)")
    p.add_argument("--loss", type=lambda v: v.split(",") if "," in v else v, default=RECIPE.get("loss", "batch_dice"),
                   help=f"one of {', '.join(LOSS_NAMES)}, or comma-separated, one per seed (default %(default)s)")
    p.add_argument("--no-cv", action="store_true", help="skip the cross-validation (no figures, default cut)")
    p.add_argument("--oof-out", default=None, metavar="FILE.npz",
                   help="also save the out-of-fold logits (input grid) with slice ids and patients")
    args = p.parse_args(argv)
    recipe = dict(copy.deepcopy(RECIPE), epochs=args.epochs, input=args.input, seeds=args.seeds,
                  loss=args.loss)
    try:
        member_losses(recipe)
    except ValueError as exc:
        p.error(str(exc))
    try:
        config = train_seg(args.out, args.data, recipe=recipe, cv=not args.no_cv,
                           log=lambda line: print(line, flush=True), oof_out=args.oof_out)
    except SecondreadError as exc:
        print(f"secondread: error: {exc.message}", file=sys.stderr)
        return 1
    m = config.get("metrics", {})
    print(f"wrote {args.out}: out-of-fold Dice on tumour slices {segment._fmt_ci(m, 'dice_tumour')}, FP rate on "
          f"empty slices {segment._fmt_ci(m, 'fp_rate_empty')}; final model trained in "
          f"{config['training']['train_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

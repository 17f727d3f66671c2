"""Brain FLAIR abnormality segmentation on the LGG patients: the U-Net out of fold against Otsu.

Run:  .venv/bin/python benchmarks/segmentation.py [--data PATH] [--cv]

The shipped ``brain-mri-seg`` was trained on every LGG patient here, so no patient here is unseen by
it; its honest figures are out of fold: each slice predicted by a model of the same recipe trained
without its patient (5 saved folds, ``secondread.segment_train``). By default the U-Net row reads
those figures from the bundle (``metrics``, written by the training run itself, never by hand);
``--cv`` measures them again here (5 trainings, about 50 min on 2 quiet cores).

Rows (``seg_rows(data)`` returns them in the row format of ``benchmarks/localisation.py``):

- **brain-mri-seg**: the MONAI U-Nets' out-of-fold masks with the bundle's post-processing (chosen on
  the same out-of-fold predictions), over all 36 patients; seconds per slice of the shipped model.
- **Otsu in the brain**: the obvious classical alternative with no training, on the same 36
  patients: brain = the image above Otsu's level (largest component, holes filled, eroded 5 px to
  drop the skull's rim), lesion = the brightest of three classes of
  :func:`skimage.filters.threshold_multiotsu` inside the brain, and only on slices whose brightest
  class starts above 1.2 x the brain's median (otherwise every slice would get a mask); regions
  under 256 px dropped (64 px of the U-Net's 128 px grid, the slice-by-slice speck size it was
  first shipped with).

Columns: Dice on slices with tumour (an empty prediction scores 0), per-patient 3D Dice, HD95 (px,
both masks non-empty), false-positive rate on slices without tumour, seconds per slice (segment +
post-process, one slice at a time, decoded pixels in; CPU). 95 % CIs: percentile bootstrap over
patients. The test patients are withheld.

Per-image masks anyone can re-score (of the shipped model, in-sample on these patients; on the
withheld patients they are the test):

    secondread segment --model brain-mri-seg --data $SECONDREAD_DATA/mri/lgg --split all \\
        --masks-out /tmp/lgg-masks --predictions /tmp/lgg.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, measure, morphology

from secondread import segment
from secondread.datasets import data_root, lgg

OTSU_CONTRAST = 1.2
"""Slices where the brightest Otsu class's threshold is below this multiple of the brain's median
FLAIR level get no lesion. Chosen on train slices (every 6th; Youden's J of tumour vs empty slices
over 1.2..1.8: 0.21 at 1.2, 0.20 at 1.3, 0.12 at 1.4), never on val: the ratio separates tumour
from empty slices poorly, which is part of why a trained model is needed."""
OTSU_MIN_PX = 256
"""Otsu's smallest region at 256 px, per slice."""


def otsu_mask(pixels: np.ndarray, min_px: int) -> np.ndarray:
    """Classical baseline: bright FLAIR class inside the brain (see the module docstring)."""
    px = pixels.astype(np.float32)
    if px.max() <= px.min():
        return np.zeros(px.shape, bool)
    head = px > filters.threshold_otsu(px)
    labels = measure.label(head)
    if labels.max() == 0:
        return np.zeros(px.shape, bool)
    brain = ndi.binary_fill_holes(labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    brain = ndi.binary_erosion(brain, structure=morphology.disk(5))
    if brain.sum() < 100:
        return np.zeros(px.shape, bool)
    inside = px[brain]
    top = filters.threshold_multiotsu(inside, classes=3)[-1]
    if top < OTSU_CONTRAST * np.median(inside):
        return np.zeros(px.shape, bool)
    return segment.remove_specks((px > top) & brain, min_px)


def evaluate(method, samples) -> dict:
    """Score ``method(pixels) -> mask`` on LGG samples with the module's own scoring."""
    per_image, keep, seconds = [], {}, 0.0
    for s in samples:
        pixels = s.image.pixels
        start = time.perf_counter()
        mask = method(pixels)
        seconds += time.perf_counter() - start  # the method only, not the scoring
        truth = s.lesions[0].mask if s.lesions else np.zeros(pixels.shape, bool)
        keep[s.id] = (mask, truth)
        per_image.append({"id": s.id, "patient": s.patient, "tumour": bool(truth.any()),
                          **segment.score_pair(mask, truth)})
    summary = segment.summarise(per_image, segment.patient_dice(per_image, keep))
    return {"summary": summary, "seconds_per_slice": seconds / max(1, len(samples))}


def _fmt(value, ci=None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _unet_figures(bundle, data: Path, cv: bool) -> dict:
    """The out-of-fold summary: recorded in the bundle by its training run, or measured again."""
    from secondread import segment_train

    if not cv:
        if "metrics" not in bundle.config:
            raise SystemExit(f"{bundle.name} records no out-of-fold figures: run with --cv")
        return bundle.config["metrics"]
    from secondread.models.nets import torch_threads

    folds = segment_train.load_patients(data)
    # as the trainer does: up to one process per member (train_model caps workers at the member count)
    with torch_threads(segment_train.THREADS):
        logits, _ = segment_train.cross_validate(folds, bundle.config["recipe"], workers=segment_train.THREADS)
    probs = segment_train.upsampled(logits["flip" if bundle.test_time_flip else "plain"], folds["masks"])
    return segment_train.out_of_fold_metrics(probs, folds, bundle.config, bundle.input_shape)


def _unets(bundle) -> str:
    """What the bundle holds, as the README names it: one MONAI U-Net or an ensemble of them."""
    members = int(bundle.config.get("members", 1))
    return "MONAI U-Net" if members == 1 else f"{members} MONAI U-Nets, mean probability"


def _seconds_per_slice(bundle, samples, every: int = 10) -> float:
    """Shipped model, one slice at a time, decoded pixels in (every ``every``-th slice)."""
    chosen = samples[::every]
    start = time.perf_counter()
    for s in chosen:
        segment.segment_image(segment.Image(s.image.pixels), bundle)
    return (time.perf_counter() - start) / max(1, len(chosen))


def _row(s: dict, method: str, seconds: float, command: str) -> dict:
    return {"task": f"LGG FLAIR abnormality, {s['patients']} patients ({s['tumour_images']} tumour / "
                    f"{s['empty_images']} empty slices)",
            "method": method,
            "metric": "Dice tumour slices; per-patient 3D Dice; HD95 px; FP rate empty slices [95% CI]",
            "value": f"{_fmt(s['dice_tumour'], s['dice_tumour_ci95'])}; "
                     f"{_fmt(s['dice_patient_3d'], s['dice_patient_3d_ci95'])}; "
                     f"{_fmt(s['hd95_tumour'], s['hd95_tumour_ci95'], 1)}; "
                     f"{_fmt(s['fp_rate_empty'], s['fp_rate_empty_ci95'])}",
            "seconds": round(seconds, 4), "summary": s, "command": command}


def seg_rows(data: Path, model: str = segment.NAME, cv: bool = False) -> list[dict]:
    """One row per method, in ``benchmarks/localisation.py``'s row format."""
    bundle = segment.load_seg_bundle(model)
    samples = lgg.samples(data)
    for s in samples:  # read once, so both methods are timed on decoded pixels plus their own work
        s.image, s.lesions  # noqa: B018
    unet = _unet_figures(bundle, data, cv)
    otsu = evaluate(lambda px: otsu_mask(px, OTSU_MIN_PX), samples)
    return [_row(unet, f"{bundle.name} ({_unets(bundle)}), out of fold", _seconds_per_slice(bundle, samples),
                 ".venv/bin/python -m secondread.segment_train   # CV, then the shipped model"),
            _row(otsu["summary"], "Otsu (3 classes) inside the brain", otsu["seconds_per_slice"],
                 ".venv/bin/python benchmarks/segmentation.py")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data root (default $SECONDREAD_DATA or ../shared/data)")
    parser.add_argument("--model", default=segment.NAME)
    parser.add_argument("--cv", action="store_true", help="measure the U-Net's out-of-fold figures again")
    args = parser.parse_args(argv)
    rows = seg_rows(data_root(args.data), args.model, args.cv)
    print("| task | method | Dice, tumour slices | per-patient 3D Dice | HD95 (px) | FP rate, empty slices "
          "| missed tumour slices | s/slice |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["summary"]
        print(f"| {r['task']} | {r['method']} | {_fmt(s['dice_tumour'], s['dice_tumour_ci95'])} "
              f"| {_fmt(s['dice_patient_3d'], s['dice_patient_3d_ci95'])} "
              f"| {_fmt(s['hd95_tumour'], s['hd95_tumour_ci95'], 1)} "
              f"| {_fmt(s['fp_rate_empty'], s['fp_rate_empty_ci95'])} | {s['missed_tumour_images']} "
              f"| {r['seconds']:.4f} |")
    target = rows[0]["summary"]["dice_tumour"]
    print(f"\nIssue 5 target: LGG Dice >= 0.80 on slices with tumour; U-Net {target:.3f} out of fold "
          f"({'met' if target is not None and target >= 0.80 else 'not met'}; CI above).")
    print("\nCommands:")
    for r in rows:
        print(f"  {r['command']}")
    print(f"  .venv/bin/python benchmarks/segmentation.py --cv{' --data ' + args.data if args.data else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Brain FLAIR abnormality segmentation on the LGG validation patients: the U-Net against Otsu.

Run:  .venv/bin/python benchmarks/segmentation.py [--data PATH] [--split val] [--model brain-mri-seg]

Same figures from the command line (per-image CSV and masks anyone can re-score):

    secondread segment --model brain-mri-seg --data $SECONDREAD_DATA/mri/lgg --split val \\
        --masks-out /tmp/lgg-masks --predictions /tmp/lgg-val.csv

Rows (``seg_rows(data)`` returns them in the row format of ``benchmarks/localisation.py``):

- **brain-mri-seg**: the shipped MONAI U-Net (128 px input; threshold and speck size chosen on val).
- **Otsu in the brain**: the obvious classical alternative with no training: brain = the image
  above Otsu's level (largest component, holes filled, eroded 5 px to drop the skull's rim), lesion
  = the brightest of three classes of :func:`skimage.filters.threshold_multiotsu` inside the brain,
  and only on slices whose brightest class starts above 1.2 x the brain's median (otherwise every
  slice would get a mask); specks dropped with the bundle's own size.

Columns: Dice on slices with tumour (an empty prediction scores 0), per-patient 3D Dice, HD95 (px,
both masks non-empty), false-positive rate on slices without tumour, seconds per slice (segment +
post-process, one slice at a time, decoded pixels in; CPU). 95 % CIs: percentile bootstrap over
patients. The validation patients chose the U-Net's epoch, threshold and speck size, so its
figures are optimistic; the test patients are withheld.
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
    brain = morphology.binary_erosion(brain, morphology.disk(5))
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


def seg_rows(data: Path, split: str = "val", model: str = segment.NAME) -> list[dict]:
    """One row per method, in ``benchmarks/localisation.py``'s row format."""
    bundle = segment.load_seg_bundle(model)
    samples = lgg.samples(data, split=split)
    for s in samples:  # read once, so both methods are timed on decoded pixels plus their own work
        s.image, s.lesions  # noqa: B018
    unet = lambda px: segment.segment_image(segment.Image(px), bundle)[0]
    min_px = bundle.min_region_px((256, 256))
    rows = []
    for name, method in ((f"{bundle.name} (MONAI U-Net)", unet),
                         ("Otsu (3 classes) inside the brain", lambda px: otsu_mask(px, min_px))):
        r = evaluate(method, samples)
        s = r["summary"]
        rows.append({
            "task": f"LGG FLAIR abnormality, {split} ({s['patients']} patients, {s['tumour_images']} tumour / "
                    f"{s['empty_images']} empty slices)",
            "method": name,
            "metric": "Dice tumour slices; per-patient 3D Dice; HD95 px; FP rate empty slices [95% CI]",
            "value": f"{_fmt(s['dice_tumour'], s['dice_tumour_ci95'])}; "
                     f"{_fmt(s['dice_patient_3d'], s['dice_patient_3d_ci95'])}; "
                     f"{_fmt(s['hd95_tumour'], s['hd95_tumour_ci95'], 1)}; "
                     f"{_fmt(s['fp_rate_empty'], s['fp_rate_empty_ci95'])}",
            "seconds": round(r["seconds_per_slice"], 4), "summary": s,
            "command": f"secondread segment --model {model} --data DATA/mri/lgg --split {split} "
                       f"--masks-out MASKS --predictions OUT.csv"})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data root (default $SECONDREAD_DATA or ../shared/data)")
    parser.add_argument("--split", default="val", help="val (default) or train; the test patients are withheld")
    parser.add_argument("--model", default=segment.NAME)
    args = parser.parse_args(argv)
    rows = seg_rows(data_root(args.data), args.split, args.model)
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
    print(f"\nIssue 5 target: LGG Dice >= 0.80 on slices with tumour; U-Net {target:.3f} on {args.split} "
          f"({'met' if target is not None and target >= 0.80 else 'not met'}; CI above).")
    print("\nCommands:")
    print(f"  {rows[0]['command']}")
    print(f"  .venv/bin/python benchmarks/segmentation.py{' --data ' + args.data if args.data else ''}"
          f"{' --split ' + args.split if args.split != 'val' else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One overlay per modality, from real validation data, for the README: what `analyze` shows.

Run:  .venv/bin/python benchmarks/overlays.py [--data PATH] [--out docs]

For each area, the validation image with the highest probability among the positives (so the map
is the one a reader would be shown) is analysed with :func:`secondread.analyze.compose`, exactly as
``secondread analyze`` does, and its picture is saved as ``docs/overlay-<area>.png``: the Grad-CAM
map and its box, the segmentation outlines (brain MRI, yellow) and, for the CT, the nodule
candidates' outlines on the slice of the top candidate. The expert's outline is drawn in cyan where
the data set has one, so each picture can be checked by eye. It prints, per picture, whether the
map's peak (or the top candidate's centre) lies inside the expert's lesion.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from secondread.analyze import compose, load_study
from secondread.datasets import data_root, lgg, minimias
from secondread.explain import display_uint8, save_png
from secondread.image import Image
from secondread.io.medmnist import load_split
from secondread.models.bundle import load_bundle

YELLOW, CYAN = (255, 220, 0), (0, 255, 255)


def _outline(rgb: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return cv2.drawContours(rgb, contours, -1, colour, max(1, round(max(mask.shape) / 300)))


def _upscaled(rgb: np.ndarray, side: int = 256) -> np.ndarray:
    """Small (28 px) pictures enlarged with nearest neighbours, so the README shows pixels, not blur."""
    k = max(1, side // max(rgb.shape[:2]))
    return np.kron(rgb, np.ones((k, k, 1), dtype=rgb.dtype)) if k > 1 else rgb


def _picture(result, expert: np.ndarray | None = None) -> tuple[np.ndarray, bool | None]:
    """The report's overlay (or image) with the outlines; and whether the map's peak hits the expert."""
    pictures = result.pictures
    rgb = pictures.get("overlay.png")
    if rgb is None:
        rgb = cv2.cvtColor(pictures["image.png"], cv2.COLOR_GRAY2RGB)
    rgb = rgb.copy()
    if result.masks is not None and result.masks.ndim == 2:
        rgb = _outline(rgb, result.masks, YELLOW)
    hit = None
    if expert is not None:
        rgb = _outline(rgb, expert, CYAN)
        region = result.finding.region if result.finding else None
        if region:
            hit = bool(expert[region["peak"]["y"], region["peak"]["x"]])
    return rgb, hit


def _best(bundle, images: list[np.ndarray]) -> int:
    return int(np.argmax(bundle.predict_proba(images)))


def medmnist(data: Path, name: str, model: str) -> tuple[np.ndarray, bool | None]:
    x, y = load_split(data / "medmnist" / f"{name}.npz", "val")
    bundle = load_bundle(model)
    positives = [i for i in range(len(y)) if int(np.ravel(y[i])[0]) == bundle.positive_class]
    i = positives[_best(bundle, [x[j] for j in positives])]
    rgb, hit = _picture(compose(Image(x[i].astype(np.float32)), bundle))
    return _upscaled(rgb), hit


def brain(data: Path) -> tuple[np.ndarray, bool | None]:
    bundle = load_bundle("brain-mri-tumour")
    tumours = [s for s in lgg.samples(data, split="val") if s.label == 1]
    s = tumours[_best(bundle, [t.image.pixels for t in tumours])]
    expert = np.any([les.full_mask(s.image.shape) for les in s.lesions], axis=0)
    return _picture(compose(s.image, bundle), expert)


def mammo(data: Path) -> tuple[np.ndarray, bool | None]:
    bundle = load_bundle("mammo-abnormal")
    abnormal = [s for s in minimias.samples(data, split="val") if s.label == 1 and s.lesions]
    s = abnormal[_best(bundle, [a.image.pixels for a in abnormal])]
    expert = np.any([les.full_mask(s.image.shape) for les in s.lesions], axis=0)
    return _picture(compose(s.image, bundle), expert)


def ct(data: Path) -> tuple[np.ndarray, bool | None]:
    study = load_study(data / "ct" / "LIDC-IDRI-0001" / "series")
    result = compose(study)
    top = result.report["findings"][0]
    z = top["axial_slice"]
    rgb = cv2.cvtColor(display_uint8(np.clip(study.image.pixels[z], -1000, 400)), cv2.COLOR_GRAY2RGB)
    rgb = _outline(rgb, result.masks[z], YELLOW)
    return rgb, None


AREAS = {"chest-xray": lambda d: medmnist(d, "pneumoniamnist", "pneumonia"),
         "breast-us": lambda d: medmnist(d, "breastmnist", "breast-us-28"),
         "brain-mri": brain, "mammography": mammo, "ct-nodules": ct}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(argv)
    data, out = data_root(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("| picture | map peak inside the expert's lesion |\n|---|---|")
    for name, make in AREAS.items():
        rgb, hit = make(data)
        path = save_png(out / f"overlay-{name}.png", rgb)
        print(f"| {path} | {'-' if hit is None else ('yes' if hit else 'no')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

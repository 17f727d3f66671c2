"""BUSI breast ultrasound (``ultrasound/busi``): benign / malignant / normal images with masks.

Not available in the shared data (see its README); this loader reads the data set's published
layout so a user with a copy can use it, and says plainly when the folder is absent:

``Dataset_BUSI_with_GT/{benign,malignant,normal}/<class> (<n>).png`` with
``<class> (<n>)_mask.png`` and, for images with more than one lesion, ``_mask_1.png``, ``_mask_2.png``.
The ``Dataset_BUSI_with_GT`` level may be omitted. BUSI publishes no patient ids, so ``patient`` is
the image id (a limitation to keep in mind: one woman may have several images).
"""

from __future__ import annotations

import os
import re
from functools import partial
from pathlib import Path

import numpy as np

from ..image import Image
from ..io.raster import read_raster
from .lesions import Lesion, Sample, count_labels, dataset_dir, filter_split

NAME = "busi"
FOLDER = "ultrasound/busi"
CLASSES = ("normal", "benign", "malignant")
"""label = index: 0 normal, 1 benign, 2 malignant."""
_MASK = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<n>\d+))?$")


def _root(data_dir) -> Path:
    folder = dataset_dir(FOLDER, data_dir, what="BUSI breast ultrasound")
    inner = folder / "Dataset_BUSI_with_GT"
    return inner if inner.is_dir() else folder


def _masks(folder: Path) -> dict[str, list[Path]]:
    """Mask files per image stem, in order (``_mask``, ``_mask_1``, ...)."""
    found: dict[str, list[tuple[int, Path]]] = {}
    for path in folder.glob("*.png"):
        match = _MASK.match(path.stem)
        if match:
            found.setdefault(match["stem"], []).append((int(match["n"] or 0), path))
    return {stem: [p for _, p in sorted(paths)] for stem, paths in found.items()}


def _load_image(path: Path) -> Image:
    return read_raster(path, modality="US")


def _load_lesions(paths: list[Path], label: str) -> list[Lesion]:
    """One ``mask`` lesion per non-empty mask file (normal images come with empty masks)."""
    out = []
    for path in paths:
        mask = read_raster(path).pixels > 127
        if mask.any():
            rows, cols = np.nonzero(mask)
            out.append(Lesion(kind="mask", label=label, mask=mask, center=(float(cols.mean()), float(rows.mean())),
                              attributes={"pixels": int(mask.sum()), "file": path.name}))
    return out


def samples(data_dir: str | os.PathLike | None = None, split: str | None = None) -> list[Sample]:
    """Every BUSI image, by class then number; raises if the data set is not available."""
    root = _root(data_dir)
    items = []
    for label, name in enumerate(CLASSES):
        folder = root / name
        if not folder.is_dir():
            continue
        masks = _masks(folder)
        images = [p for p in folder.glob("*.png") if not _MASK.match(p.stem)]
        for path in sorted(images, key=lambda p: (len(p.stem), p.stem)):
            items.append(Sample(dataset=NAME, id=path.stem, patient=path.stem, label=label, label_name=name,
                                source=str(path), attributes={"masks": [m.name for m in masks.get(path.stem, [])]},
                                load_image=partial(_load_image, path),
                                load_lesions=partial(_load_lesions, masks.get(path.stem, []), name)))
    return filter_split(items, NAME, split)


def describe(data_dir: str | os.PathLike | None = None) -> dict:
    items = samples(data_dir)
    return {"dataset": NAME, "images": len(items), "labels": count_labels(items),
            "with_several_masks": sum(len(s.attributes["masks"]) > 1 for s in items)}

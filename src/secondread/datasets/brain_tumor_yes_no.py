"""Brain tumour yes/no MRI (``mri/brain-tumor-yes-no``): image-level labels from two folders.

Not available in the shared data (its images come without a stated licence, see the data README);
this loader reads the published layout, ``yes/`` (tumour) and ``no/`` (no tumour), optionally under
``brain_tumor_dataset/``, so a user with a copy can use it; without the folder it raises one clear
line. There are no masks and no patient ids, so ``patient`` is the file name.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from ..image import Image
from ..io.raster import SUFFIXES, read_raster
from .lesions import Sample, count_labels, dataset_dir

NAME = "brain-tumor-yes-no"
FOLDER = "mri/brain-tumor-yes-no"
LABELS = {0: "no", 1: "yes"}


def _root(data_dir) -> Path:
    folder = dataset_dir(FOLDER, data_dir, what="brain tumour yes/no")
    inner = folder / "brain_tumor_dataset"
    return inner if inner.is_dir() else folder


def _load(path: Path) -> Image:
    return read_raster(path, modality="MR")


def samples(data_dir: str | os.PathLike | None = None) -> list[Sample]:
    """Every image of ``no/`` (label 0) then ``yes/`` (label 1), sorted by file name."""
    root = _root(data_dir)
    items = []
    for label, name in LABELS.items():
        folder = root / name
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES) if folder.is_dir() else []
        items += [Sample(dataset=NAME, id=f"{name}/{p.name}", patient=f"{name}/{p.name}", label=label,
                         label_name=name, source=str(p), load_image=partial(_load, p)) for p in files]
    return items


def describe(data_dir: str | os.PathLike | None = None) -> dict:
    items = samples(data_dir)
    return {"dataset": NAME, "images": len(items), "labels": count_labels(items)}

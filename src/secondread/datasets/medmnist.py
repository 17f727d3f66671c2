"""MedMNIST sets (PneumoniaMNIST, BreastMNIST, AdrenalMNIST3D) as samples of the official splits.

Why: MedMNIST defines its own splits (train / val / test); the shared copies hold train and val
only, the test split being withheld for independent evaluation, so asking for ``test`` is an error
that says so. MedMNIST publishes no patient ids, so ``patient`` is the sample id (the official
splits are the only grouping we can honour). Arrays are read once per call; each ``Image`` is built
on demand from them.
"""

from __future__ import annotations

import os
from functools import partial

import numpy as np

from ..errors import SecondreadError
from ..image import Image
from ..io.medmnist import INFO, load_split, locate
from .lesions import Sample, count_labels

NAMES = tuple(INFO)
SPLITS = ("train", "val")


def _image(images: np.ndarray, name: str, split: str, index: int, source: str) -> Image:
    info = INFO[name]
    return Image(pixels=images[index], modality=info["modality"], spacing=info["spacing"],
                 source=f"{source}#{split}[{index}]",
                 metadata={"dataset": name, "split": split, "index": index})


def samples(name: str, split: str = "train", data_dir: str | os.PathLike | None = None) -> list[Sample]:
    """The samples of one official split (``train`` or ``val``) of MedMNIST set ``name``."""
    if name not in INFO:
        raise SecondreadError(None, f"unknown MedMNIST data set {name!r} (known: {', '.join(NAMES)})")
    path = locate(name, data_dir)
    if split == "test":
        raise SecondreadError(path, "the MedMNIST test split is withheld for independent evaluation; "
                                    "use train and val")
    if split not in SPLITS:
        raise SecondreadError(path, f"unknown split {split!r} (available: {', '.join(SPLITS)})")
    images, labels = load_split(path, split)
    names = INFO[name]["labels"]
    return [Sample(dataset=name, id=f"{split}/{i}", patient=f"{split}/{i}", label=int(label),
                   label_name=names[int(label)], source=f"{path}#{split}[{i}]",
                   attributes={"split": split, "index": i},
                   load_image=partial(_image, images, name, split, i, str(path)))
            for i, label in enumerate(labels)]


def describe(name: str, data_dir: str | os.PathLike | None = None) -> dict:
    """Counts per official split and label."""
    out = {"dataset": name, "test": "withheld"}
    for split in SPLITS:
        items = samples(name, split, data_dir)
        out[split] = {"samples": len(items), "labels": count_labels(items),
                      "shape": list(items[0].image.shape) if items else []}
    return out

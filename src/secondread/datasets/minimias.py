"""mini-MIAS mammograms (``mammography/mini-mias``): normal vs abnormal, lesion circles.

Why these choices:

- **Coordinates.** MIAS gives each lesion centre with the origin at the **bottom-left** corner
  (``x``, ``y`` columns of ``info.csv``, MIAS note 3). Image arrays have their origin top-left, so
  the loader converts the raw MIAS values itself, ``x_img = x``, ``y_img = 1024 - y``
  (:func:`mias_to_image`), and the tests check the result against the ``x_img``/``y_img`` columns
  and against the pixels (the centres fall on breast tissue, not on the black background).
- **Women.** mini-MIAS numbers each woman's two breasts as a consecutive odd/even pair
  (mdb001/mdb002 = woman 1), and the withheld test images were withheld by pair, so splits are made
  by woman (:func:`woman_of`), never by image.
- **Labels.** ``label`` 1 = abnormal (any lesion row), 0 = normal. Each lesion keeps its class
  (CALC, CIRC, SPIC, MISC, ARCH, ASYM) and severity (B benign / M malignant); mdb144 has one of each.
  Lesions without a centre (mdb059, and the diffuse calcifications of mdb216/233/245) are kept as
  ``unlocated``, so counting them stays honest.

Only rows whose PNG is in the folder are used (``file_included`` = yes and the file exists);
``Info.txt`` is never read because it still lists the withheld images.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from functools import partial
from pathlib import Path

from ..errors import SecondreadError
from ..image import Image
from ..io.raster import read_raster
from .lesions import Lesion, Sample, count_labels, dataset_dir, filter_split

NAME = "mini-mias"
FOLDER = "mammography/mini-mias"
MARKER = "info.csv"
"""The file that makes a folder this data set (its lesion table), whatever the folder is called."""
SIZE = 1024
LABELS = {0: "normal", 1: "abnormal"}
CLASSES = {"CALC": "calcification", "CIRC": "well-defined/circumscribed mass",
           "SPIC": "spiculated mass", "MISC": "other, ill-defined mass",
           "ARCH": "architectural distortion", "ASYM": "asymmetry", "NORM": "normal"}
SEVERITY = {"B": "benign", "M": "malignant"}
TISSUE = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}


def mias_to_image(x: float, y: float) -> tuple[float, float]:
    """MIAS centre (origin bottom-left) -> ``(x=column, y=row)`` with the origin top-left.

    >>> mias_to_image(535, 425)
    (535.0, 599.0)
    """
    return float(x), float(SIZE - float(y))


def woman_of(refnum: str) -> str:
    """The woman an image belongs to: ``mdb001`` and ``mdb002`` -> ``"woman001"``.

    >>> woman_of("mdb002"), woman_of("mdb003")
    ('woman001', 'woman002')
    """
    number = int(refnum[3:])
    return f"woman{(number + 1) // 2:03d}"


def _rows(folder: Path) -> dict[str, list[dict[str, str]]]:
    """``info.csv`` rows grouped by refnum, only for images present in the folder."""
    path = folder / "info.csv"
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise SecondreadError(path, f"cannot read the ground-truth table ({exc.strerror or type(exc).__name__})") from None
    required = {"refnum", "tissue", "class", "severity", "x", "y", "radius", "file_included"}
    if not rows or not required <= set(rows[0]):
        raise SecondreadError(path, f"not a mini-MIAS info.csv (needs columns {', '.join(sorted(required))})")
    grouped: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        if row["file_included"] == "yes" and (folder / f"{row['refnum']}.png").is_file():
            grouped[row["refnum"]].append(row)
    return dict(grouped)


def _lesion(row: dict[str, str]) -> Lesion:
    attributes = {"class": row["class"], "class_name": CLASSES.get(row["class"], row["class"]),
                  "severity": row["severity"], "severity_name": SEVERITY.get(row["severity"], "")}
    if not (row["x"] and row["y"] and row["radius"]):
        return Lesion(kind="unlocated", label=row["class"], attributes=attributes)
    return Lesion(kind="circle", label=row["class"], center=mias_to_image(row["x"], row["y"]),
                  radius=float(row["radius"]), attributes=attributes)


def _lesions(rows: list[dict[str, str]]) -> list[Lesion]:
    return [_lesion(r) for r in rows if r["class"] != "NORM"]


def _load(path: Path) -> Image:
    image = read_raster(path, modality="MG")
    image.spacing = (0.2, 0.2)  # mini-MIAS: 200 micron pixel edge (the distribution's README)
    return image


def _sample(folder: Path, refnum: str, rows: list[dict[str, str]]) -> Sample:
    abnormal = any(r["class"] != "NORM" for r in rows)
    severities = sorted({r["severity"] for r in rows if r["severity"]})
    path = folder / f"{refnum}.png"
    return Sample(dataset=NAME, id=refnum, patient=woman_of(refnum), label=int(abnormal),
                  label_name=LABELS[int(abnormal)], source=str(path),
                  attributes={"tissue": rows[0]["tissue"], "severity": "".join(severities),
                              "classes": sorted({r["class"] for r in rows})},
                  load_image=partial(_load, path), load_lesions=partial(_lesions, rows))


def samples(data_dir: str | os.PathLike | None = None, split: str | None = None) -> list[Sample]:
    """Every mini-MIAS image in the data folder (or in ``split``: ``train``/``val``/``fold<k>``),
    in refnum order. Pixels are read only when ``sample.image`` is used."""
    folder = dataset_dir(FOLDER, data_dir, what="mini-MIAS", marker=MARKER)
    grouped = _rows(folder)
    found = sorted(grouped)
    return filter_split([_sample(folder, ref, grouped[ref]) for ref in found], NAME, split)


def describe(data_dir: str | os.PathLike | None = None) -> dict:
    """Counts: images, women, normal/abnormal, benign/malignant images, lesions by kind and class."""
    items = samples(data_dir)
    lesions = [les for s in items for les in s.lesions]
    return {"dataset": NAME, "images": len(items), "women": len({s.patient for s in items}),
            "labels": count_labels(items),
            "severity": {k: sum(s.attributes["severity"] == k for s in items) for k in ("B", "M", "BM")},
            "lesions": len(lesions),
            "lesion_kinds": {k: sum(les.kind == k for les in lesions) for k in ("circle", "unlocated")},
            "lesion_classes": {c: sum(les.label == c for les in lesions) for c in CLASSES if c != "NORM"}}

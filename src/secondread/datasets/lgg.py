"""LGG brain MRI (``mri/lgg``): FLAIR slices of lower-grade glioma patients with expert masks.

Why these choices:

- One sample per slice; ``label`` 1 when the slice's mask is non-empty (``tumour_pixels > 0`` in
  ``index.csv``, which the tests recount from the masks themselves), so listing the 1261 slices reads
  one CSV and no PNG.
- ``patient`` is the TCGA case (``TCGA_CS_4941``, the key of ``data.csv``); every slice of a patient
  lands in the same split. The folder name (with the scan date) is kept in ``attributes``.
- The lesion is the mask itself (``kind="mask"``, 256 x 256 boolean), read only when asked for.
- Every patient here has tumour on some slice, so patient-level splits are stratified by the
  contributing institution (the ``CS``/``DU``/... part of the case id), not by label.
"""

from __future__ import annotations

import csv
import os
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import SecondreadError
from ..image import Image
from ..io.raster import read_raster
from .lesions import Lesion, Sample, count_labels, dataset_dir, filter_split

NAME = "lgg"
FOLDER = "mri/lgg"
MARKER = "index.csv"
"""The file that makes a folder this data set (its slice table), whatever the folder is called."""
LABELS = {0: "no tumour", 1: "tumour"}


def patient_of(folder_name: str) -> str:
    """``TCGA_CS_4941_19960909`` -> ``TCGA_CS_4941`` (the case id used by ``data.csv``)."""
    return "_".join(folder_name.split("_")[:3])


def institution_of(patient: str) -> str:
    """``TCGA_CS_4941`` -> ``CS`` (the contributing site)."""
    return patient.split("_")[1]


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError as exc:
        raise SecondreadError(path, f"cannot read the table ({exc.strerror or type(exc).__name__})") from None


def clinical(data_dir: str | os.PathLike | None = None) -> dict[str, dict[str, str]]:
    """``data.csv`` (genomic clusters, grade, age...) keyed by case id, as strings (empty = unknown)."""
    folder = dataset_dir(FOLDER, data_dir, what="LGG", marker=MARKER)
    return {row["Patient"]: row for row in _read_csv(folder / "data.csv")}


def _load_image(path: Path) -> Image:
    return read_raster(path, modality="MR")


def _load_mask(path: Path) -> list[Lesion]:
    mask = read_raster(path).pixels > 127  # stored as {0, 255}
    if not mask.any():
        return []
    rows, cols = np.nonzero(mask)
    return [Lesion(kind="mask", label="tumour", mask=mask, center=(float(cols.mean()), float(rows.mean())),
                   attributes={"pixels": int(mask.sum())})]


def _sample(folder: Path, row: dict[str, str], facts: dict[str, dict[str, str]]) -> Sample:
    try:
        pixels = int(row["tumour_pixels"])
        number = int(row["slice"])
    except (KeyError, ValueError):
        raise SecondreadError(folder / "index.csv", f"bad row for {row.get('patient')!r}: "
                                                    "needs integer slice and tumour_pixels") from None
    patient = patient_of(row["patient"])
    label = int(pixels > 0)
    return Sample(dataset=NAME, id=f"{row['patient']}_{number}", patient=patient, label=label,
                  label_name=LABELS[label], source=str(folder / row["flair"]),
                  attributes={"folder": row["patient"], "slice": number, "tumour_pixels": pixels,
                              "institution": institution_of(patient), "clinical": facts.get(patient, {})},
                  load_image=partial(_load_image, folder / row["flair"]),
                  load_lesions=partial(_load_mask, folder / row["mask"]))


def samples(data_dir: str | os.PathLike | None = None, split: str | None = None) -> list[Sample]:
    """Every slice (or those of the patients in ``split``), ordered by patient folder then slice."""
    folder = dataset_dir(FOLDER, data_dir, what="LGG", marker=MARKER)
    facts = clinical(data_dir)
    rows = _read_csv(folder / "index.csv")
    items = [_sample(folder, row, facts) for row in rows]
    items.sort(key=lambda s: (s.attributes["folder"], s.attributes["slice"]))
    return filter_split(items, NAME, split)


def describe(data_dir: str | os.PathLike | None = None) -> dict:
    """Counts: patients, slices, slices with tumour, patients per institution."""
    items = samples(data_dir)
    patients = sorted({s.patient for s in items})
    return {"dataset": NAME, "patients": len(patients), "slices": len(items),
            "labels": count_labels(items),
            "institutions": {i: sum(institution_of(p) == i for p in patients)
                             for i in sorted({institution_of(p) for p in patients})}}

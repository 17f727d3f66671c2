"""Per-patient splits for the data sets that do not define their own, made once and saved.

Why: slices or images of one patient in both training and validation make validation figures lie,
and a split re-drawn on every run makes figures incomparable. So splits are made per patient
(mini-MIAS: per woman; LGG: per TCGA case; BUSI: per image, having no patient ids), seeded,
stratified, and saved as small JSON files in the package (``datasets/splits/<dataset>.json``) that
every later run reads. The shared data withholds a test part of mini-MIAS and LGG, so what is here
is split into ``train`` / ``val`` only, plus ``k`` stratified folds for cross-validation; there is
no fake ``test``.

Split names accepted by the loaders' ``split=`` argument: ``train``, ``val``, ``fold<k>`` (the
patients held out in cross-validation round ``k``) and ``notfold<k>`` (that round's training part).

Regenerate a saved file (only when the data itself changes) with
``python -m secondread.datasets.splits mini-mias``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from ..errors import SecondreadError

SEED = 2024
FRACTIONS = {"train": 0.8, "val": 0.2}
N_FOLDS = 5
FOLDER = Path(__file__).with_name("splits")
DATASETS = ("mini-mias", "lgg", "busi")


def _worst(severities: set[str]) -> str:
    return "malignant" if "M" in severities else "benign" if "B" in severities else "normal"


def groups(dataset: str, data_dir: str | os.PathLike | None = None) -> tuple[dict[str, str], str]:
    """``({patient: stratum}, what the stratum is)`` for a data set, from its loader.

    mini-MIAS women are stratified by their worst finding (normal / benign / malignant), LGG cases by
    institution (every case has tumour slices), BUSI images by class.
    """
    if dataset == "mini-mias":
        from . import minimias

        severities: dict[str, set[str]] = {}
        for s in minimias.samples(data_dir):
            severities.setdefault(s.patient, set()).update(s.attributes["severity"])
        return {w: _worst(v) for w, v in severities.items()}, "worst finding of the woman"
    if dataset == "lgg":
        from . import lgg

        return {s.patient: s.attributes["institution"] for s in lgg.samples(data_dir)}, "institution"
    if dataset == "busi":
        from . import busi

        return {s.patient: s.label_name for s in busi.samples(data_dir)}, "class"
    raise SecondreadError(None, f"no per-patient split is defined for {dataset!r} (known: {', '.join(DATASETS)})")


def make_split(strata: dict[str, str], seed: int = SEED, val_fraction: float = FRACTIONS["val"],
               n_folds: int = N_FOLDS) -> dict:
    """Stratified train/val split and ``n_folds`` folds of the patients in ``strata``.

    Within each stratum (in sorted order) the patients, sorted, are shuffled by one
    ``numpy.random.default_rng(seed)``; the first ``round(n * val_fraction)`` go to ``val``, and
    the shuffled order is dealt round-robin into folds (continuing across strata so fold sizes
    differ by at most one). The result depends only on the patients, their strata and the seed.
    """
    rng = np.random.default_rng(seed)
    train, val, folds = [], [], [[] for _ in range(n_folds)]
    dealt = 0
    for stratum in sorted(set(strata.values())):
        members = sorted(p for p, s in strata.items() if s == stratum)
        order = [members[i] for i in rng.permutation(len(members))]
        n_val = int(round(len(order) * val_fraction))
        val += order[:n_val]
        train += order[n_val:]
        for patient in order:
            folds[dealt % n_folds].append(patient)
            dealt += 1
    return {"train": sorted(train), "val": sorted(val), "folds": [sorted(f) for f in folds]}


def generate(dataset: str, data_dir: str | os.PathLike | None = None, seed: int = SEED) -> dict:
    """The split file's content for ``dataset`` as the code makes it from the data."""
    strata, stratify_by = groups(dataset, data_dir)
    split = make_split(strata, seed)
    return {"dataset": dataset, "unit": "patient", "seed": seed, "fractions": FRACTIONS,
            "n_folds": N_FOLDS, "stratify_by": stratify_by,
            "strata": {s: sum(v == s for v in strata.values()) for s in sorted(set(strata.values()))},
            "splits": {"train": split["train"], "val": split["val"]}, "folds": split["folds"]}


def path_of(dataset: str) -> Path:
    return FOLDER / f"{dataset}.json"


def save(dataset: str, data_dir: str | os.PathLike | None = None, seed: int = SEED) -> Path:
    """Write ``datasets/splits/<dataset>.json`` (written whole to a temporary file, then moved)."""
    content = generate(dataset, data_dir, seed)
    target = path_of(dataset)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(content, indent=1) + "\n")
    os.replace(tmp, target)
    return target


def load(dataset: str) -> dict:
    """The saved split of ``dataset``; one-line error when there is none."""
    path = path_of(dataset)
    if not path.is_file():
        raise SecondreadError(path, f"no saved split for {dataset!r}; make one with "
                                    f"python -m secondread.datasets.splits {dataset}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SecondreadError(path, f"unreadable split file ({type(exc).__name__})") from None


def patients_in(dataset: str, split: str) -> set[str]:
    """Patients of ``split`` (``train``, ``val``, ``fold<k>``, ``notfold<k>``) in the saved split."""
    saved = load(dataset)
    if split in saved["splits"]:
        return set(saved["splits"][split])
    for prefix, inside in (("notfold", False), ("fold", True)):
        if split.startswith(prefix) and split[len(prefix):].isdigit():
            k = int(split[len(prefix):])
            if k < len(saved["folds"]):
                chosen = [f for i, f in enumerate(saved["folds"]) if (i == k) == inside]
                return {p for fold in chosen for p in fold}
    raise SecondreadError(path_of(dataset), f"unknown split {split!r} (train, val, fold0..fold{len(saved['folds']) - 1}, "
                                            f"notfold0..notfold{len(saved['folds']) - 1})")


if __name__ == "__main__":
    for name in sys.argv[1:] or ["mini-mias", "lgg"]:
        print(save(name))

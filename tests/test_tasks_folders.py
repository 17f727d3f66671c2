"""Folder data sets (LGG brain MRI slices): training from the saved per-patient split, the shipped
`brain-mri-tumour` bundle and `evaluate_bundle` on a data set folder, on the real data.

Figures are recomputed here with scikit-learn; patients and files are checked against the data
folder itself (folder names, files on disk), not against what the code under test reports.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from secondread.datasets import lgg
from secondread.errors import SecondreadError
from secondread.evaluate import evaluate_bundle
from secondread.io.raster import read_raster
from secondread.models import load_bundle, shipped_names
from secondread.train import DATASETS, train_bundle

from bundle_checks import assert_deterministic_and_learnt

SPLITS = Path(lgg.__file__).parent / "splits" / "lgg.json"
TINY = dict(limit=4, epochs=3, batch_size=32, patience=3, arch_args={"width": 8})


def _read(csv_path):
    with open(csv_path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp("lgg")
    return root, [train_bundle("lgg", root / name, data_dir=data_root, progress=False, **TINY) for name in ("a", "b")]


@pytest.fixture(scope="module")
def val_samples(data_root):
    samples = lgg.samples(data_root, "val")
    return samples, np.array([s.label for s in samples]), [s.image.pixels for s in samples]


def test_tiny_training_on_a_few_patients_beats_the_untrained_net_and_is_deterministic(tiny_runs, val_samples):
    root, (a, b) = tiny_runs
    _, y, images = val_samples
    assert_deterministic_and_learnt(root, a, b, y, images)
    assert len(a["data_source"]["train_patients"]) == 4  # limit counts whole patients
    assert a["input_shape"] == [DATASETS["lgg"]["input_size"]] * 2


def test_shipped_bundle_loads_by_name_and_its_validation_auc_is_reproduced(data_root, val_samples):
    assert "brain-mri-tumour" in shipped_names()
    bundle = load_bundle("brain-mri-tumour")
    config = bundle.config
    assert config["training"]["dataset"] == "lgg" and config["training"]["split_used"] == "train"
    assert config["modalities"] == ["MR", "OT"] and config["labels"] == {"0": "no tumour", "1": "tumour"}
    assert set(bundle.operating_points) == {"balanced", "screening"}
    assert bundle.operating_points["screening"]["sensitivity"] >= 0.95
    _, y, images = val_samples
    auc = roc_auc_score(y, bundle.predict_proba(images))
    assert auc == pytest.approx(bundle.metrics["auc"], abs=1e-9)
    assert bundle.metrics["n"] == len(y) and bundle.metrics["auc_ci95"][0] <= auc <= bundle.metrics["auc_ci95"][1]
    assert auc >= 0.95  # the target (on test patients); the shipped recipe reaches 0.977 on validation
    assert sum(f.stat().st_size for f in bundle.path.iterdir()) < 5_000_000


def test_no_patient_is_in_both_splits_the_bundle_used(data_root):
    source = load_bundle("brain-mri-tumour").config["data_source"]
    train, val = set(source["train_patients"]), set(source["val_patients"])
    assert train and val and not train & val
    saved = json.loads(SPLITS.read_text())["splits"]
    assert train == set(saved["train"]) and val == set(saved["val"])
    # every patient folder on disk is in exactly one split (patient = TCGA case, folder minus the date)
    folders = [p.name for p in (data_root / "mri" / "lgg").iterdir() if p.is_dir()]
    assert {"_".join(f.split("_")[:3]) for f in folders} == train | val
    flair = list((data_root / "mri" / "lgg").glob("*/*_flair.png"))
    assert source["train_items"] + source["val_items"] == len(flair)


@pytest.mark.parametrize("where", ["dataset", "root"])
def test_predictions_ids_are_real_flair_files_relative_to_the_data_path(data_root, tmp_path, where):
    path = data_root / "mri" / "lgg" if where == "dataset" else data_root
    preds = tmp_path / "preds.csv"
    result = evaluate_bundle("brain-mri-tumour", path, split="val", predictions=preds)
    rows = _read(preds)
    assert len(rows) == result["n"] and len({r["id"] for r in rows}) == len(rows)
    saved_val = set(json.loads(SPLITS.read_text())["splits"]["val"])
    for r in rows:
        file = path / r["id"]
        assert file.is_file() and file.name.endswith("_flair.png")
        mask = np.asarray(read_raster(file.with_name(file.name.replace("_flair.png", "_mask.png"))).pixels)
        assert int(r["label"]) == int((mask > 127).any())
        assert "_".join(file.parent.name.split("_")[:3]) in saved_val
    labels, probs = [int(r["label"]) for r in rows], [float(r["probability"]) for r in rows]
    assert result["auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-9)
    assert result["auc"] == pytest.approx(load_bundle("brain-mri-tumour").metrics["auc"], abs=1e-9)


def test_evaluate_cli_on_the_folder_split_all(data_root, tmp_path):
    preds = tmp_path / "all.csv"
    proc = subprocess.run([sys.executable, "-m", "secondread", "evaluate", "--model", "brain-mri-tumour", "--data",
                           str(data_root / "mri" / "lgg"), "--split", "all", "--json", "--predictions", str(preds)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    ids = [r["id"] for r in _read(preds)]
    assert json.loads(proc.stdout)["n"] == len(ids) == len(list((data_root / "mri" / "lgg").glob("*/*_flair.png")))


def test_evaluate_reads_a_copy_under_another_name(data_root, renamed_copy, tmp_path):
    """A user's copy of mri/lgg in a folder of another name: the same saved val patients, the same
    AUC, ids relative to the copy."""
    copy = renamed_copy("mri/lgg")
    result = evaluate_bundle("brain-mri-tumour", copy, split="val", predictions=tmp_path / "val.csv")
    rows = _read(tmp_path / "val.csv")
    assert rows and all((copy / r["id"]).is_symlink() for r in rows)
    assert result["auc"] == pytest.approx(load_bundle("brain-mri-tumour").metrics["auc"], abs=1e-9)


def test_folder_evaluation_errors_are_one_line(data_root, tmp_path):
    with pytest.raises(SecondreadError, match="withheld"):
        evaluate_bundle("brain-mri-tumour", data_root / "mri" / "lgg", split="test")
    with pytest.raises(SecondreadError, match="not the lgg data set folder"):
        evaluate_bundle("brain-mri-tumour", tmp_path, split="val")
    with pytest.raises(SecondreadError, match="not trained on a folder data set"):
        evaluate_bundle("pneumonia", data_root / "mri" / "lgg", split="val")


# --- mammo-abnormal (mini-MIAS, split by woman) ------------------------------------------------------

def test_mammo_bundle_reevaluates_to_its_recorded_auc_with_real_file_ids(data_root, tmp_path):
    from secondread.datasets import minimias

    bundle = load_bundle("mammo-abnormal")
    source = bundle.config["data_source"]
    train, val = set(source["train_patients"]), set(source["val_patients"])
    assert train and val and not train & val
    saved = json.loads((SPLITS.parent / "mini-mias.json").read_text())["splits"]
    assert train == set(saved["train"]) and val == set(saved["val"])
    path = data_root / "mammography" / "mini-mias"
    preds = tmp_path / "mammo.csv"
    result = evaluate_bundle("mammo-abnormal", path, split="val", predictions=preds)
    rows = _read(preds)
    abnormal = {r["refnum"] for r in _read(path / "info.csv") if r["class"] != "NORM"}
    for r in rows:
        assert (path / r["id"]).is_file() and r["id"].endswith(".png")
        assert int(r["label"]) == int(Path(r["id"]).stem in abnormal)
        assert minimias.woman_of(Path(r["id"]).stem) in val
    auc = roc_auc_score([int(r["label"]) for r in rows], [float(r["probability"]) for r in rows])
    assert auc == pytest.approx(bundle.metrics["auc"], abs=1e-9) == pytest.approx(result["auc"], abs=1e-9)
    assert bundle.metrics["auc_ci95"][0] <= auc <= bundle.metrics["auc_ci95"][1]

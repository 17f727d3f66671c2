"""The breast-ultrasound and adrenal-CT tasks, the generalised training, calibration figures,
`split="all"` evaluation and ONNX inference, on the real MedMNIST files.

Figures are checked against scikit-learn computed here, independently of the code under test.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from secondread import explain
from secondread.evaluate import evaluate_bundle
from secondread.models import load_bundle, shipped_names
from secondread.models.bundle import batched_logits, prepare_images
from secondread.models.onnx import onnxruntime_available
from secondread.train import DATASETS, train_bundle

from bundle_checks import assert_deterministic_and_learnt

SHIPPED = {"pneumonia": "pneumoniamnist", "breast-us-28": "breastmnist", "adrenal-ct-3d": "adrenalmnist3d"}
needs_ort = pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime is not installed")


def _val(data_root, dataset):
    with np.load(data_root / "medmnist" / f"{dataset}.npz") as f:
        return f["val_images"], f["val_labels"].reshape(-1).astype(int)


# --- tiny training runs on the real data -----------------------------------------------------------

TINY = {"breastmnist": dict(epochs=4, batch_size=32, patience=4, arch_args={"width": 8}),
        "adrenalmnist3d": dict(limit=400, epochs=3, batch_size=32, patience=3, arch_args={"width": 4})}


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny_runs(request, tmp_path_factory, data_root):
    dataset = request.param
    root = tmp_path_factory.mktemp(dataset)
    configs = [train_bundle(dataset, root / name, data_dir=data_root, progress=False, **TINY[dataset])
               for name in ("a", "b")]
    return dataset, root, configs


@pytest.mark.slow
def test_tiny_training_beats_the_untrained_network_and_is_deterministic(tiny_runs, data_root):
    dataset, root, (a, b) = tiny_runs
    info = DATASETS[dataset]
    images, labels = _val(data_root, dataset)
    finding = (labels == info["positive_class"]).astype(int)
    assert a["architecture"] == info["architecture"]
    assert_deterministic_and_learnt(root, a, b, finding, images)
    assert a["finding"] == info["finding"] and a["positive_class"] == info["positive_class"]
    assert (root / "a" / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- shipped bundles -----------------------------------------------------------------------------------

def test_every_task_is_shipped_with_its_calibration_figure_and_onnx_graph():
    assert set(SHIPPED) <= set(shipped_names())
    for name, dataset in SHIPPED.items():
        bundle = load_bundle(name)
        assert bundle.config["training"]["dataset"] == dataset and bundle.config["training"]["split_used"] == "train"
        assert set(bundle.operating_points) == {"balanced", "screening"}
        assert bundle.operating_points["screening"]["sensitivity"] >= 0.95
        for key in ("ece_before_calibration", "ece_after_calibration", "auc_ci95"):
            assert key in bundle.metrics
        for file in ("reliability.png", "model.onnx", "model_card.md"):
            assert (bundle.path / file).is_file(), (name, file)
        size = sum(p.stat().st_size for p in bundle.path.iterdir())
        assert size < 8_000_000, name


@pytest.mark.parametrize("name", ["breast-us-28", "adrenal-ct-3d"])
def test_shipped_bundle_reproduces_its_recorded_validation_auc(name, data_root, tmp_path):
    dataset = SHIPPED[name]
    images, labels = _val(data_root, dataset)
    bundle = load_bundle(name)
    result = evaluate_bundle(name, dataset, data_dir=data_root, predictions=tmp_path / "p.csv")
    with open(tmp_path / "p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    probs = np.array([float(r["probability"]) for r in rows])
    finding = (labels == bundle.positive_class).astype(int)
    assert [int(r["label"]) for r in rows] == finding.tolist()
    auc = roc_auc_score(finding, probs)
    assert auc == pytest.approx(bundle.metrics["auc"], abs=1e-9) == result["auc"]
    assert result["n"] == len(labels) and result["finding"] == bundle.finding


def test_breast_finding_is_malignant_and_its_auc_equals_medmnists(data_root):
    """MedMNIST scores BreastMNIST on the label-1 (normal/benign) score; our finding is label 0."""
    bundle = load_bundle("breast-us-28")
    assert bundle.finding == "malignant" and bundle.positive_class == 0 and bundle.labels["0"] == "malignant"
    images, labels = _val(data_root, "breastmnist")
    p_malignant = bundle.predict_proba(images)
    medmnist_style = roc_auc_score(labels, 1 - p_malignant)  # label 1 scored by P(label 1)
    ours = roc_auc_score(labels == 0, p_malignant)
    assert ours == pytest.approx(medmnist_style, abs=1e-12) == pytest.approx(bundle.metrics["auc"], abs=1e-9)
    assert ours > 0.8


def test_gradcam_on_the_3d_bundle_is_a_map_of_the_volume(data_root):
    bundle = load_bundle("adrenal-ct-3d")
    images, labels = _val(data_root, "adrenalmnist3d")
    volume = images[int(np.argmax(labels))]
    heat = explain.gradcam(bundle.model, bundle.model.gradcam_layer, bundle.prepare(volume)[None], volume.shape)
    assert heat.shape == volume.shape == (28, 28, 28) and heat.dtype == np.float32
    assert 0.0 <= heat.min() and heat.max() <= 1.0


# --- evaluation of every split, plots ----------------------------------------------------------------

def test_evaluate_all_splits_with_unique_ids_and_plots(data_root, tmp_path):
    result = evaluate_bundle("breast-us-28", "breastmnist", split="all", data_dir=data_root,
                             predictions=tmp_path / "all.csv", plots_dir=tmp_path / "plots")
    with open(tmp_path / "all.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 546 + 78 == result["n"]
    assert ids[0] == "train/0" and ids[546] == "val/0" and ids[-1] == "val/77"
    assert result["split_sizes"] == {"train": 546, "val": 78}
    assert result["splits"]["val"]["auc"] == pytest.approx(load_bundle("breast-us-28").metrics["auc"], abs=1e-9)
    val = [r for r in rows if r["id"].startswith("val/")]
    assert result["splits"]["val"]["auc"] == pytest.approx(
        roc_auc_score([int(r["label"]) for r in val], [float(r["probability"]) for r in val]), abs=1e-12)
    for name in ("roc.png", "confusion.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_a_2d_model_refuses_3d_data_with_one_line(data_root):
    from secondread.errors import SecondreadError

    with pytest.raises(SecondreadError, match="reads 2D images"):
        evaluate_bundle("breast-us-28", "adrenalmnist3d", data_dir=data_root)


# --- ONNX --------------------------------------------------------------------------------------------

@needs_ort
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_onnx_runtime_matches_pytorch(name, data_root):
    images, _ = _val(data_root, SHIPPED[name])
    images = images[:64]
    torch_probs = load_bundle(name).predict_proba(images)
    onnx_bundle = load_bundle(name, backend="onnx")
    assert onnx_bundle.backend == "onnx"
    onnx_probs = onnx_bundle.predict_proba(images)
    assert np.abs(onnx_probs - torch_probs).max() < 1e-4
    batch = torch.from_numpy(prepare_images(onnx_bundle.preprocessing, images))
    assert np.abs(onnx_bundle.logits(batch).numpy() - batched_logits(onnx_bundle.model, batch).numpy()).max() < 1e-4

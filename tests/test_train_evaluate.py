"""secondread.train and secondread.evaluate on the real PneumoniaMNIST files.

Metrics are checked against scikit-learn calls and hand counts made here, independently of the
code under test.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score

from secondread.errors import SecondreadError
from secondread.evaluate import (binary_metrics, evaluate_bundle, expected_calibration_error, fit_temperature,
                                 medmnist_accuracy, medmnist_auc, operating_points, resampled_aucs)
from secondread.models import build, load_bundle
from secondread.models.bundle import batched_logits, prepare_images
from secondread.models.nets import torch_threads
from secondread.train import THREADS, seeded_training, train_bundle


@pytest.fixture(scope="module")
def npz(data_root):
    return data_root / "medmnist" / "pneumoniamnist.npz"


@pytest.fixture(scope="module")
def val(npz):
    with np.load(npz) as f:
        return f["val_images"], f["val_labels"].reshape(-1).astype(int)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("run") / "bundle"
    config = train_bundle(out=out, data_dir=data_root, limit=600, epochs=2, batch_size=64, patience=2, progress=False)
    return out, config


# --- metrics against independent references ------------------------------------------------------

def _toy(seed=3, n=300):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    return y, p


def test_binary_metrics_agree_with_sklearn_and_a_hand_confusion_matrix():
    y, p = _toy()
    m = binary_metrics(y, p, threshold=0.6)
    assert m["n"] == 300
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p > 0.5), abs=1e-12)
    tp = sum(1 for a, b in zip(y, p) if a == 1 and b >= 0.6)
    tn = sum(1 for a, b in zip(y, p) if a == 0 and b < 0.6)
    pos, neg = int(y.sum()), int((1 - y).sum())
    assert m["sensitivity"] == pytest.approx(tp / pos)
    assert m["specificity"] == pytest.approx(tn / neg)
    assert m["ppv"] == pytest.approx(tp / (tp + neg - tn))
    assert m["npv"] == pytest.approx(tn / (tn + pos - tp))
    assert m["accuracy_at_threshold"] == pytest.approx((tp + tn) / 300)
    lo, hi = m["auc_ci95"]
    assert lo < m["auc"] < hi and hi - lo < 0.2
    assert binary_metrics(y, p, 0.6)["auc_ci95"] == m["auc_ci95"]  # seeded bootstrap


def test_bootstrap_aucs_equal_sklearn_per_resample_with_ties_and_one_class_draws():
    rng = np.random.default_rng(3)
    y = np.zeros(12, int)
    y[[2, 7]] = 1  # two positives in 12: about one draw in ten holds none
    score = np.round(rng.random(12), 1)  # ties
    idx = rng.integers(0, 12, (300, 12))
    two_classes = [i for i in idx if len(set(y[i])) == 2]
    assert 0 < len(two_classes) < 300
    np.testing.assert_allclose(resampled_aucs(y, score, idx), [roc_auc_score(y[i], score[i]) for i in two_classes],
                               rtol=0, atol=1e-12)


def test_medmnist_definitions():
    y = np.array([[0], [1], [1], [0]])
    score = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.4, 0.6]])  # two-column: last is positive
    assert medmnist_auc(y, score) == pytest.approx(roc_auc_score([0, 1, 1, 0], [0.1, 0.5, 0.8, 0.6]))
    assert medmnist_accuracy(y, score) == 0.5  # 0.5 is not > 0.5: counted negative, as in getACC


def test_expected_calibration_error_on_a_hand_computed_example():
    y = [0, 1, 1, 1, 0]
    p = [0.05, 0.05, 0.92, 0.98, 0.35]
    # bin [0, .1): 2 cases, |0.5 - 0.05| ; bin [.9, 1]: 2 cases, |1 - 0.95| ; bin [.3, .4): 1 case, 0.35
    expected = 2 / 5 * 0.45 + 2 / 5 * 0.05 + 1 / 5 * 0.35
    assert expected_calibration_error(y, p) == pytest.approx(expected)
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0


def test_fit_temperature_recovers_a_known_overconfidence():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-z))).astype(float)
    assert fit_temperature(3.0 * z, y) == pytest.approx(3.0, rel=0.08)


def test_operating_points():
    y, p = _toy()
    ops = operating_points(y, p)
    assert ops["screening"]["sensitivity"] >= 0.95
    assert ops["screening"]["threshold"] <= ops["balanced"]["threshold"]
    youden = max(((p[y == 1] >= t).mean() + (p[y == 0] < t).mean(), t) for t in np.unique(p))
    b = ops["balanced"]
    assert b["sensitivity"] + b["specificity"] == pytest.approx(youden[0])


# --- training ---------------------------------------------------------------------------------

def test_short_training_run_beats_the_untrained_network(short_run, val):
    out, config = short_run
    images, labels = val
    torch.manual_seed(0)
    untrained = build("seed_cnn", **config["arch_args"])
    x = prepare_images(config["preprocessing"], images)
    untrained_auc = roc_auc_score(labels, batched_logits(untrained, x).numpy())
    trained_auc = roc_auc_score(labels, load_bundle(out).predict_proba(images))
    assert config["training"]["n_train"] == 600 and config["metrics"]["n"] == 524
    assert trained_auc == pytest.approx(config["metrics"]["auc"], abs=1e-12)
    assert trained_auc > untrained_auc + 0.05 and trained_auc > 0.8


def test_training_is_deterministic(tmp_path, data_root):
    a = train_bundle(out=tmp_path / "a", data_dir=data_root, limit=200, epochs=1, batch_size=64, progress=False)
    b = train_bundle(out=tmp_path / "b", data_dir=data_root, limit=200, epochs=1, batch_size=64, progress=False)
    wa = torch.load(tmp_path / "a" / "weights.pt", weights_only=True)
    wb = torch.load(tmp_path / "b" / "weights.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["metrics"] == b["metrics"] and a["preprocessing"] == b["preprocessing"]


def test_training_gives_the_caller_back_its_threads_and_determinism_even_when_it_fails():
    """A trainer run from a service or a test must not leave its own settings behind."""
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    with torch_threads(1):
        with pytest.raises(RuntimeError), seeded_training(0):
            assert torch.get_num_threads() == THREADS and torch.are_deterministic_algorithms_enabled()
            raise RuntimeError("stopped mid-training")
        assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (1, before[1])
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before


def test_bundle_records_what_the_issue_asks_for(short_run):
    out, config = short_run
    for key in ("name", "version", "created", "architecture", "arch_args", "input_shape", "preprocessing",
                "labels", "positive_label", "finding", "temperature", "operating_points", "threshold",
                "metrics", "training", "data_source"):
        assert key in config, key
    assert config["input_shape"] == [28, 28] and config["data_source"]["file"] == "pneumoniamnist.npz"
    assert config["threshold"] == config["operating_points"]["balanced"]["threshold"]
    assert config["training"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # which kernels
    for key in ("auc", "auc_ci95", "accuracy", "accuracy_at_threshold", "sensitivity", "specificity",
                "ece_before_calibration", "ece_after_calibration", "n"):
        assert key in config["metrics"], key
    card = (out / "model_card.md").read_text()
    assert "CC BY 4.0" in card and "MedMNIST v2" in card and "not a diagnosis" in card.lower()


def test_saved_bundle_reevaluates_to_the_recorded_figures(short_run, npz, tmp_path):
    out, config = short_run
    result = evaluate_bundle(out, npz, split="val", predictions=tmp_path / "p.csv")
    assert result["auc"] == config["metrics"]["auc"]
    assert result["accuracy_at_threshold"] == config["metrics"]["accuracy_at_threshold"]
    first = load_bundle(out).predict_proba(np.load(npz)["val_images"])
    assert np.array_equal(first, load_bundle(out).predict_proba(np.load(npz)["val_images"]))


# --- evaluation of the shipped bundle -------------------------------------------------------------

def test_shipped_pneumonia_bundle_reaches_its_recorded_auc(npz, val, tmp_path):
    _, labels = val
    result = evaluate_bundle("pneumonia", npz, split="val", predictions=tmp_path / "pred.csv")
    with open(tmp_path / "pred.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "label", "probability"] and len(rows) == 525
    ids = [int(r[0]) for r in rows[1:]]
    assert ids == list(range(524))
    assert [int(r[1]) for r in rows[1:]] == labels.tolist()
    auc = roc_auc_score(labels, [float(r[2]) for r in rows[1:]])
    assert auc >= 0.95
    assert auc == pytest.approx(load_bundle("pneumonia").metrics["auc"], abs=1e-9)
    assert result["auc"] == pytest.approx(auc, abs=1e-12) and result["n"] == 524
    assert result["model"]["name"] == "pneumonia" and len(result["model"]["sha256"]) == 64
    assert result["data"] == "pneumoniamnist.npz" and result["split"] == "val"
    for key in ("accuracy", "accuracy_at_threshold", "sensitivity", "specificity"):
        assert 0.0 <= result[key] <= 1.0


def test_evaluate_by_dataset_name_uses_the_data_folder(data_root):
    assert evaluate_bundle("pneumonia", "pneumoniamnist", data_dir=data_root)["n"] == 524


def test_bad_data_is_reported(tmp_path, npz):
    with pytest.raises(SecondreadError):
        evaluate_bundle("pneumonia", tmp_path / "missing.npz")
    (tmp_path / "notes.npz").write_text("not an npz")
    with pytest.raises(SecondreadError):
        evaluate_bundle("pneumonia", tmp_path / "notes.npz")
    with pytest.raises(SecondreadError, match="test"):
        evaluate_bundle("pneumonia", npz, split="test")

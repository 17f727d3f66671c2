"""Metrics, bootstrap confidence intervals, calibration and operating points for binary findings.

Why: a second reader's figures must be comparable with the literature and honest about their
uncertainty. AUC and accuracy are computed exactly as MedMNIST's evaluator does (so numbers match
the MedMNIST v2 paper's protocol), everything else comes from scikit-learn, and every figure on a
finite validation set carries a bootstrap confidence interval.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from .atomic import write_bytes, write_csv
from .errors import SecondreadError
from .io import medmnist
from .io.medmnist import load_split

BOOTSTRAP_RESAMPLES = 2000


# --- MedMNIST's own definitions --------------------------------------------------------------

def _positive_scores(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    """As MedMNIST's evaluator: squeeze, and take the last column of a 2-column score."""
    y_true, y_score = np.asarray(y_true).squeeze(), np.asarray(y_score, dtype=np.float64).squeeze()
    if y_score.ndim == 2:
        y_score = y_score[:, -1]
    return y_true.reshape(-1), y_score.reshape(-1)


def medmnist_auc(y_true, y_score) -> float:
    """AUC as ``medmnist.evaluator.getAUC`` for a binary task: ``roc_auc_score`` on the positive score."""
    y_true, y_score = _positive_scores(y_true, y_score)
    return float(roc_auc_score(y_true, y_score))


def medmnist_accuracy(y_true, y_score, threshold: float = 0.5) -> float:
    """Accuracy as ``medmnist.evaluator.getACC`` for a binary task: positive when score > threshold."""
    y_true, y_score = _positive_scores(y_true, y_score)
    return float(accuracy_score(y_true, y_score > threshold))


# --- uncertainty and calibration -------------------------------------------------------------

def bootstrap_auc_ci(y_true, y_score, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                     level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of the AUC (cases resampled with replacement, seeded).

    Resamples that happen to contain one class only are skipped, since AUC is undefined on them.
    Each resample's AUC is the Mann-Whitney statistic from SciPy's tie-averaged ranks, which is
    what ``roc_auc_score`` computes; ranking a block of resamples at once takes a second where
    2000 calls of ``roc_auc_score`` (mostly input checks) took twelve.
    """
    y_true, y_score = _positive_scores(y_true, y_score)
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(y_true), len(y_true)) for _ in range(int(resamples))]
    values = np.concatenate([resampled_aucs(y_true, y_score, np.stack(draws[i:i + 200]))
                             for i in range(0, len(draws), 200)])
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return [float(lo), float(hi)]


def resampled_aucs(y_true: np.ndarray, y_score: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """AUC of each row of case indices ``idx`` (resamples x cases); rows with one class are dropped."""
    from scipy.stats import rankdata

    labels = y_true[idx].astype(bool)
    positives = labels.sum(axis=1)
    negatives = labels.shape[1] - positives
    keep = (positives > 0) & (negatives > 0)
    ranks = rankdata(y_score[idx[keep]], axis=1)
    n1 = positives[keep].astype(np.float64)
    u = (ranks * labels[keep]).sum(axis=1) - n1 * (n1 + 1) / 2
    return u / (n1 * negatives[keep])


def bootstrap_accuracy_ci(y_true, y_score, threshold: float = 0.5, resamples: int = BOOTSTRAP_RESAMPLES,
                          seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of MedMNIST's accuracy (``score > threshold``), seeded."""
    y_true, y_score = _positive_scores(y_true, y_score)
    correct = (y_score > threshold).astype(int) == y_true
    rng = np.random.default_rng(seed)
    values = [correct[rng.integers(0, len(correct), len(correct))].mean() for _ in range(int(resamples))]
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return [float(lo), float(hi)]


def expected_calibration_error(y_true, probs, bins: int = 10) -> float:
    """Expected calibration error of the positive-class probability over equal-width bins.

    ``sum_b |B_b|/n * |mean(y in B_b) - mean(p in B_b)|`` with bins ``[0, 0.1), ..., [0.9, 1.0]``
    (the last bin closed). A calibrated 0.8 should be right 80% of the time; ECE measures how far
    off that is, weighted by how many cases fall in each bin (Guo et al., ICML 2017).
    """
    y, p = np.asarray(y_true, dtype=np.float64).reshape(-1), np.asarray(probs, dtype=np.float64).reshape(-1)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(ece)


def fit_temperature(logits, y_true) -> float:
    """Temperature ``T`` minimising the validation NLL of ``sigmoid(logit / T)`` (LBFGS on log T).

    Temperature scaling (Guo et al. 2017) changes no ranking and no decision at 0.5, only how
    confident the probabilities are, so it can be fitted on validation without touching the AUC.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y_true), dtype=torch.float64)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float(log_t.detach().exp())


# --- decisions ---------------------------------------------------------------------------------

def _at_threshold(y_true, probs, threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV and accuracy when ``p >= threshold`` counts as positive."""
    y, pred = np.asarray(y_true).reshape(-1), (np.asarray(probs).reshape(-1) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {"threshold": float(threshold),
            "sensitivity": float(recall_score(y, pred, pos_label=1, zero_division=0)),
            "specificity": float(recall_score(y, pred, pos_label=0, zero_division=0)),
            "ppv": float(precision_score(y, pred, pos_label=1, zero_division=0)),
            "npv": float(precision_score(y, pred, pos_label=0, zero_division=0)),
            "accuracy_at_threshold": float(accuracy_score(y, pred)),
            "confusion": {"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)}}


def operating_points(y_true, probs, screening_sensitivity: float = 0.95) -> dict[str, dict]:
    """Thresholds chosen on validation: ``balanced`` (max Youden J) and ``screening`` (the highest
    threshold whose sensitivity is at least ``screening_sensitivity``, and never stricter than
    ``balanced``: where the balanced point is already that sensitive, screening uses it).

    Why two: a second reader used to triage wants few missed cases (screening); one used to confirm
    wants a balance. Both are stated with the sensitivity and specificity they achieved.
    """
    y, p = np.asarray(y_true).reshape(-1), np.asarray(probs, dtype=np.float64).reshape(-1)
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]  # drop the "nothing positive" point at +inf
    balanced = thresholds[int(np.argmax(tpr - fpr))]
    screening = thresholds[int(np.argmax(tpr >= screening_sensitivity))]
    chosen = {"balanced": balanced, "screening": min(screening, balanced)}
    out = {}
    for name, t in chosen.items():
        m = _at_threshold(y, p, float(t))
        out[name] = {k: m[k] for k in ("threshold", "sensitivity", "specificity")}
    return out


def binary_metrics(y_true, probs, threshold: float) -> dict[str, Any]:
    """The validation figures of a binary finding at ``threshold`` (``p >= threshold`` positive).

    ``accuracy`` is MedMNIST's (``p > 0.5``); ``accuracy_at_threshold``, sensitivity, specificity,
    PPV and NPV use ``threshold``; ``auc_ci95`` is a seeded percentile bootstrap.
    """
    y, p = _positive_scores(y_true, probs)
    out: dict[str, Any] = {"n": int(len(y)), "n_positive": int((y == 1).sum()),
                           "auc": medmnist_auc(y, p), "auc_ci95": bootstrap_auc_ci(y, p),
                           "accuracy": medmnist_accuracy(y, p, 0.5), "accuracy_ci95": bootstrap_accuracy_ci(y, p)}
    out.update(_at_threshold(y, p, threshold))
    out["ece"] = expected_calibration_error(y, p)
    return out


# --- data and bundles --------------------------------------------------------------------------

def locate(data: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Path:
    """An ``.npz`` path as given, or a MedMNIST name (``pneumoniamnist``) found in the data folder."""
    path = Path(data)
    if path.suffix == ".npz" or path.exists() or os.sep in str(data):
        return path
    return medmnist.locate(str(data), data_dir)


def write_predictions(path: str | os.PathLike, labels, probs, ids=None) -> Path:
    """CSV ``id,label,probability``, written atomically so a reader never sees half a file. ``id``
    defaults to the index within the split; ``label`` is 1 where the item has the finding;
    ``probability`` is the calibrated probability of the finding."""
    ids = range(len(labels)) if ids is None else ids
    return write_csv(path, ["id", "label", "probability"],
                     ((i, int(y), repr(float(p))) for i, y, p in zip(ids, labels, probs)), make_parents=True)


def write_plots(plots_dir: str | os.PathLike, y, probs, threshold: float, operating_points: dict, title: str,
                finding: str = "positive") -> dict[str, str]:
    """``roc.png`` (with the operating points) and ``confusion.png`` (at ``threshold``) in ``plots_dir``."""
    from .plots import confusion_figure, roc_figure

    folder = Path(plots_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SecondreadError(folder, f"cannot create the plots folder ({exc.strerror or type(exc).__name__})") from None
    confusion = _at_threshold(y, probs, threshold)["confusion"]
    files = {"roc": folder / "roc.png", "confusion": folder / "confusion.png"}
    write_bytes(files["roc"], roc_figure(y, probs, title, operating_points))
    write_bytes(files["confusion"], confusion_figure(confusion, f"{title}, threshold {threshold:.3f}",
                                                       positive=finding, negative=f"no {finding}"))
    return {k: str(v) for k, v in files.items()}


def _splits_in(path: Path) -> list[str]:
    """The MedMNIST splits present in an ``.npz`` (train, val, test order)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
    except (OSError, ValueError, EOFError) as exc:
        raise SecondreadError(path, f"not a readable MedMNIST .npz file: corrupt or not an npz ({type(exc).__name__})") from None
    except Exception as exc:  # zipfile.BadZipFile and friends
        raise SecondreadError(path, f"not a readable MedMNIST .npz file ({type(exc).__name__})") from None
    return [s for s in medmnist.SPLITS if f"{s}_images" in keys and f"{s}_labels" in keys]


def _split_metrics(bundle, y, probs) -> dict[str, Any]:
    out = binary_metrics(y, probs, bundle.threshold)
    out["operating_points"] = {name: {k: v for k, v in _at_threshold(y, probs, op["threshold"]).items()
                                      if k in ("threshold", "sensitivity", "specificity")}
                               for name, op in bundle.operating_points.items()}
    return out


def _folder_root(bundle, path: Path) -> tuple[str, Path]:
    """The training data set of a folder-trained ``bundle`` and the data root holding it, for
    ``path`` = the data root (``.../data``) or the data set's own folder (``.../mri/lgg``, or a copy
    of it under another name)."""
    from importlib import import_module

    from .datasets.lesions import locate_dataset
    from .train import DATASETS

    dataset = str(bundle.config.get("training", {}).get("dataset", ""))
    if DATASETS.get(dataset, {}).get("kind") != "folder":
        raise SecondreadError(path, f"model {bundle.name!r} was not trained on a folder data set; give an .npz file")
    loader = import_module(f".datasets.{DATASETS[dataset]['loader']}", __package__)
    return dataset, locate_dataset(loader, path)[0]


def _evaluate_folder(bundle, path: Path, split: str):
    """``(ids, labels, probabilities, splits)`` of a folder data set: ``split`` is a saved per-patient
    split (``train``/``val``) or ``all``; ids are image paths relative to ``path``."""
    from .datasets.lesions import relative_id
    from .train import folder_samples

    if split == "test":
        raise SecondreadError(path, "the test patients of folder data sets are withheld (use train, val or all)")
    dataset, root = _folder_root(bundle, path)
    samples = folder_samples(dataset, root, None if split == "all" else split)
    if not samples:
        raise SecondreadError(path, f"no images in the {split!r} split")
    base = Path(os.path.abspath(path))
    ids = [relative_id(s.source, base) for s in samples]
    y = np.array([int(s.label == bundle.positive_class) for s in samples], dtype=np.int64)
    probs = np.concatenate([bundle.predict_proba([s.image.pixels for s in samples[i:i + 256]])
                            for i in range(0, len(samples), 256)])
    return ids, y, probs


def evaluate_bundle(model: str | os.PathLike, data: str | os.PathLike, split: str = "val",
                    predictions: str | os.PathLike | None = None, plots_dir: str | os.PathLike | None = None,
                    data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Evaluate a bundle (path or shipped name) on a MedMNIST ``.npz`` (path or data set name).

    ``split`` is ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (every split present in the file,
    pooled; each split's own figures are under ``"splits"``). Labels are the bundle's *finding*
    indicators (1 = the finding; for ``breast-us-28`` that is MedMNIST label 0, malignant), and the
    scores its calibrated probabilities, so the AUC is MedMNIST's (for BreastMNIST, MedMNIST's AUC
    on the label-1 score is the same number).

    Returns ``binary_metrics`` at the bundle's threshold, the sensitivity/specificity at each of
    its operating points, and which ``model`` (name, version, sha256), ``data`` and ``split`` they
    describe. ``predictions`` writes the CSV ``id,label,probability``: ``id`` is the index within
    the split, or ``<split>/<index>`` (e.g. ``val/12``) for ``split="all"``. ``plots_dir`` writes
    ``roc.png`` and ``confusion.png`` there.

    A *folder* ``data`` (a data set folder laid out as in ``../shared/data``, e.g. ``.../mri/lgg``, or
    the data root holding it) is read through the loader of the data set the bundle was trained on,
    with its saved per-patient ``split`` (``all`` = every image found); prediction ids are then the
    image files' paths relative to ``data`` (for LGG the ``*_flair.png``).
    """
    from .models.bundle import load_bundle

    bundle = load_bundle(model)
    path = locate(data, data_dir)
    if split not in (*medmnist.SPLITS, "all"):
        raise SecondreadError(None, f"unknown split {split!r} (train, val, test, all)")
    if path.is_dir():
        return _finish(bundle, path, split, *_evaluate_folder(bundle, path, split), predictions, plots_dir)
    splits = _splits_in(path) if split == "all" and path.is_file() else [split]
    if not splits:
        raise SecondreadError(path, "no split (train/val/test images and labels) in this file")
    want = len(bundle.config.get("input_shape", [0, 0]))
    ids, ys, ps, per_split = [], [], [], {}
    for name in splits:
        images, labels = load_split(path, name)
        if images.ndim - 1 != want:
            kind = {2: "2D images [N, H, W]", 3: "3D volumes [N, D, H, W]"}.get(want, f"{want}D inputs")
            raise SecondreadError(path, f"model {bundle.name!r} reads {kind}; the {name!r} split has shape {images.shape}")
        y, p = bundle.finding_labels(labels), bundle.predict_proba(images)
        if split == "all" and len(np.unique(y)) == 2:
            per_split[name] = _split_metrics(bundle, y, p)
        ids += [f"{name}/{i}" for i in range(len(y))] if split == "all" else list(range(len(y)))
        ys.append(y)
        ps.append(p)
    out = _finish(bundle, path, split, ids, np.concatenate(ys), np.concatenate(ps), predictions, plots_dir)
    if split == "all":
        out["splits"] = per_split
        out["split_sizes"] = {name: int(len(v)) for name, v in zip(splits, ys)}
    return out


def _finish(bundle, path: Path, split: str, ids, y, probs, predictions, plots_dir) -> dict[str, Any]:
    """Figures, predictions CSV and plots of one pooled set of items (a split, all splits, a folder)."""
    if len(np.unique(y)) != 2:
        raise SecondreadError(path, f"the {split!r} split must contain both classes to compute an AUC")
    out = _split_metrics(bundle, y, probs)
    out.update(model={"name": bundle.name, "version": bundle.version, "sha256": bundle.sha256},
               finding=bundle.finding, positive_class=bundle.positive_class, data=path.name, split=split)
    if predictions is not None:
        write_predictions(predictions, y, probs, ids)
        out["predictions"] = str(predictions)
    if plots_dir is not None:
        out["plots"] = write_plots(plots_dir, y, probs, bundle.threshold, out["operating_points"],
                                   f"{bundle.name} on {path.name} ({split}, n={len(y)})", bundle.finding)
    return out

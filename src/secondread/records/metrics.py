"""Scores for the record evaluations: scikit-learn's metrics plus a seeded bootstrap CI.

Why scikit-learn: the figures must mean exactly what the literature's precision/recall/F1 mean, and a
hand-written count is one more place to be wrong. The bootstrap resamples rows (sentences, reports)
with replacement, the usual percentile interval; seeded so a figure is reproducible.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

BOOTSTRAP_ROUNDS = 1000
BOOTSTRAP_SEED = 20240601
SPLIT_FILE = "splits.json"


def per_value_scores(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict:
    """``{value: {precision, recall, f1, support}}`` for a multi-class attribute (one-vs-rest)."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(
        list(gold), list(pred), labels=list(labels), average=None, zero_division=0
    )
    return {
        value: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, value in enumerate(labels)
    }


def binary_f1(gold: Sequence[str], pred: Sequence[str], positive: str) -> float:
    """F1 of one attribute value against all others (what the literature reports as "negation F1")."""
    from sklearn.metrics import f1_score

    return float(f1_score(list(gold), list(pred), labels=[positive], average="macro", zero_division=0))


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> list[float]:
    """Percentile bootstrap interval of ``statistic(row_indices)`` over ``n`` rows, ``[low, high]``."""
    if n == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(rounds)], dtype=float)
    alpha = (1.0 - level) / 2.0
    return [float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))]


def bootstrap_f1_ci(gold: np.ndarray, pred: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS,
                    seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> list[float]:
    """Bootstrap CI of F1 (micro over columns when 2-D) from boolean gold/pred arrays, vectorised.

    Resamples rows; the point estimate itself always comes from scikit-learn.
    """
    gold = np.asarray(gold, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    n = len(gold)
    if n == 0:
        return [float("nan"), float("nan")]
    tp = (gold & pred).reshape(n, -1).sum(axis=1)
    fp = (~gold & pred).reshape(n, -1).sum(axis=1)
    fn = (gold & ~pred).reshape(n, -1).sum(axis=1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (rounds, n))
    TP, FP, FN = tp[idx].sum(1), fp[idx].sum(1), fn[idx].sum(1)
    denom = 2 * TP + FP + FN
    f1 = np.where(denom > 0, 2 * TP / np.maximum(denom, 1), 0.0)
    alpha = (1.0 - level) / 2.0
    return [float(np.quantile(f1, alpha)), float(np.quantile(f1, 1.0 - alpha))]


# ------------------------------------------------------------------------------------------ splits


def split_path() -> Path:
    """Where the saved development / held-out splits live (``rules/eval/splits.json``)."""
    return Path(str(resources.files("secondread.records") / "rules" / "eval" / SPLIT_FILE))


def load_splits() -> dict:
    """``{"negex": {"dev": [...], "heldout": [...]}, "openi": {...}}`` as saved."""
    return json.loads(split_path().read_text(encoding="utf-8"))


def seeded_split(ids: Sequence[str], seed: str, heldout_fraction: float = 0.4) -> dict[str, list[str]]:
    """Split ids into dev / held-out by a hash of (seed, id): stable whatever the row order."""
    def bucket(i: str) -> float:
        digest = hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()
        return int(digest[:12], 16) / float(16**12)

    heldout = sorted((i for i in ids if bucket(i) < heldout_fraction), key=_natural)
    dev = sorted((i for i in ids if bucket(i) >= heldout_fraction), key=_natural)
    return {"dev": dev, "heldout": heldout}


def _natural(s: str):
    digits = "".join(ch for ch in s if ch.isdigit())
    return (int(digits) if digits else 0, s)

"""Figures that justify a model's numbers: reliability diagram, ROC curve, confusion matrix (PNG).

Why: a calibration error or an AUC is one number; a reader judging a model wants to see where the
probabilities are off and what the operating points trade. Drawn with matplotlib's non-interactive
Agg back end (no display needed); each function returns PNG bytes, so callers can write them
atomically with the rest of a bundle or an evaluation.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def reliability_bins(y_true, probs, bins: int = 10) -> list[dict[str, float]]:
    """Per equal-width bin: count, mean probability and observed frequency (the ECE's own bins)."""
    y, p = np.asarray(y_true, dtype=np.float64).reshape(-1), np.asarray(probs, dtype=np.float64).reshape(-1)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        mask = idx == b
        if mask.any():
            out.append({"low": b / bins, "high": (b + 1) / bins, "n": int(mask.sum()),
                        "mean_probability": float(p[mask].mean()), "frequency": float(y[mask].mean())})
    return out


def reliability_diagram(y_true, curves: dict[str, Any], title: str, bins: int = 10) -> bytes:
    """Observed frequency against mean predicted probability per bin, one line per ``curves`` entry
    (e.g. ``{"before (T=1), ECE 0.08": p0, "after (T=1.7), ECE 0.03": p1}``); the diagonal is perfect
    calibration. Bin counts are in :func:`reliability_bins` (the bundle stores them)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for (label, probs), marker in zip(curves.items(), "os^D"):
        rows = reliability_bins(y_true, probs, bins)
        ax.plot([r["mean_probability"] for r in rows], [r["frequency"] for r in rows], marker=marker,
                label=label, linewidth=1.2, markersize=4)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed frequency",
           title=title)
    ax.legend(loc="upper left", fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def roc_figure(y_true, probs, title: str, operating_points: dict[str, dict] | None = None) -> bytes:
    """ROC curve (scikit-learn's ``roc_curve``) with the AUC and the operating points marked."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fpr, tpr, _ = roc_curve(y_true, probs)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.plot(fpr, tpr, linewidth=1.5, label=f"AUC {roc_auc_score(y_true, probs):.3f}")
    for (name, op), marker in zip((operating_points or {}).items(), "os^D"):
        ax.plot(1 - op["specificity"], op["sensitivity"], marker=marker, linestyle="none",
                label=f"{name} (t={op['threshold']:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def confusion_figure(confusion: dict[str, int], title: str, positive: str = "positive",
                     negative: str = "negative") -> bytes:
    """2 x 2 confusion matrix (rows truth, columns prediction) with counts written in the cells."""
    plt = _pyplot()
    m = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.imshow(m, cmap="Blues")
    names = [negative, positive]
    ax.set_xticks([0, 1], [f"pred. {n}" for n in names], fontsize=8)
    ax.set_yticks([0, 1], [f"true {n}" for n in names], fontsize=8)
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(int(m[i, j])), ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black", fontsize=12)
    ax.set_title(title, fontsize=9)
    return _png(fig)

"""What every tiny training test checks of its two seeded runs (shared by test_tasks*.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sklearn.metrics import roc_auc_score

from secondread.models import build, load_bundle
from secondread.models.bundle import batched_logits, prepare_images


def assert_deterministic_and_learnt(root: Path, a: dict, b: dict, finding, images) -> None:
    """Runs ``root/a`` and ``root/b`` (same seed) have bit-identical weights and figures, run a's
    recorded AUC is the one its bundle gives on ``images``, and it beats the untrained network."""
    wa, wb = (torch.load(root / name / "weights.pt", weights_only=True) for name in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["metrics"] == b["metrics"] and a["temperature"] == b["temperature"]
    torch.manual_seed(0)
    untrained = build(a["architecture"], **a["arch_args"])
    untrained_auc = roc_auc_score(finding, batched_logits(untrained, prepare_images(a["preprocessing"], images)))
    trained_auc = roc_auc_score(finding, load_bundle(root / "a").predict_proba(images))
    assert trained_auc == pytest.approx(a["metrics"]["auc"], abs=1e-12)
    assert trained_auc > max(untrained_auc, 0.5) + 0.05

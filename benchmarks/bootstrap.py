"""The bootstrap AUC interval every evaluation reports: SciPy ranks over blocks of resamples against
the obvious loop of ``sklearn.metrics.roc_auc_score``, on the shipped models' real validation scores.

Both draw the same 2000 resamples (seeded), so the intervals must agree; the table says by how much
(to the last digit, as the tests require per resample) and how long each took.

    .venv/bin/python benchmarks/bootstrap.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from secondread.evaluate import BOOTSTRAP_RESAMPLES, _positive_scores, bootstrap_auc_ci, evaluate_bundle


def sklearn_loop(y_true, y_score, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> list[float]:
    """The interval as it was computed before: one ``roc_auc_score`` call per resample."""
    y_true, y_score = _positive_scores(y_true, y_score)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        idx = rng.integers(0, len(y_true), len(y_true))
        if len(np.unique(y_true[idx])) == 2:
            values.append(roc_auc_score(y_true[idx], y_score[idx]))
    lo, hi = np.quantile(values, [0.025, 0.975])
    return [float(lo), float(hi)]


def _best(fn, repeats: int) -> tuple[float, list[float]]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main(argv: list[str] | None = None) -> int:
    import csv
    import tempfile
    from pathlib import Path

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    print("| scores (split) | n | sklearn loop, s | SciPy ranks, s | speed-up | largest difference of the interval ends |")
    print("|---|---|---|---|---|---|")
    for bundle, dataset, split in (("breast-us-28", "breastmnist", "val"), ("pneumonia", "pneumoniamnist", "val"),
                                   ("pneumonia", "pneumoniamnist", "all")):
        with tempfile.TemporaryDirectory() as tmp:
            evaluate_bundle(bundle, dataset, split=split, predictions=Path(tmp) / "p.csv")
            rows = list(csv.DictReader(open(Path(tmp) / "p.csv")))
        y = np.array([int(r["label"]) for r in rows])
        p = np.array([float(r["probability"]) for r in rows])
        t_loop, ci_loop = _best(lambda: sklearn_loop(y, p), args.repeats)
        t_rank, ci_rank = _best(lambda: bootstrap_auc_ci(y, p), args.repeats)
        diff = max(abs(a - b) for a, b in zip(ci_loop, ci_rank))
        print(f"| {bundle} on {dataset} ({split}) | {len(y)} | {t_loop:.2f} | {t_rank:.2f} | {t_loop / t_rank:.0f}x | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

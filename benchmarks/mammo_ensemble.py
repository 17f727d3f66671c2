"""Does averaging several detectors' maps find more mini-MIAS lesions than one detector?

Why: the same ``mammo-abnormal`` recipe scored 0.44-0.58 top-3 by cross-validation from one seed to
the next (and moved with the thread count alone): with ~150 training mammograms one detector's map
is largely its seed's. An ensemble's map (the mean of its members' logit maps,
``secondread.models.nets.LesionHeatmapEnsemble``) keeps what they agree on.

How: 5-fold cross-validation over all 109 women (train + val; the test women withheld), one run per
seed (``secondread.mammo.out_of_fold_maps``; fold k of seed s trains with seed s + k). Member j of an
ensemble with base seed 0 trains exactly as the single detector of seed 100 j does
(``secondread.mammo.member_seed``), so an ensemble's out-of-fold maps are the logit mean of the
single runs' maps: no ensemble is trained here. Candidates are the shipped rule (the map's peaks,
the best calcification cluster at rank 3); AUC is the mean over folds of the map maximum's.

    PYTHONPATH=src .venv/bin/python benchmarks/mammo_ensemble.py --cache-dir oof/   # ~5-15 min a seed, then cached
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import expit, logit


def _run(seed: int, cache: Path | None) -> dict:
    """One seed's out-of-fold maps, from the cache when it holds them."""
    from secondread import mammo
    from secondread.train import folder_samples

    file = None if cache is None else cache / f"oof_seed{seed}.npz"
    if file is not None and file.is_file():
        saved = np.load(file)
        by_name = {Path(s.source).name: s for s in folder_samples("mini-mias", None, "train")
                   + folder_samples("mini-mias", None, "val")}
        return {"samples": [by_name[n] for n in saved["ids"]], "maps": saved["maps"], "logits": saved["logits"],
                "labels": saved["labels"], "fold": saved["fold"], "seconds": float(saved["seconds"])}
    run = mammo.out_of_fold_maps(seed=seed, women="all", arch_args={"members": 1})
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(file, ids=np.array([Path(s.source).name for s in run["samples"]]), maps=run["maps"],
                 logits=run["logits"], labels=run["labels"], fold=run["fold"], seconds=run["seconds"])
    return run


def ensemble_maps(runs: list[dict]) -> np.ndarray:
    """The ensemble's per-cell probability: the sigmoid of the members' mean logit (probabilities
    clipped to 1e-7 from 0 and 1, where float32 maps saturate)."""
    logits = [logit(np.clip(r["maps"].astype(np.float64), 1e-7, 1 - 1e-7)) for r in runs]
    return expit(np.mean(logits, axis=0)).astype(np.float32)


def _row(label: str, scored: dict) -> str:
    lo, hi = scored["top3_ci95"]
    return (f"| {label} | {scored['top1']:.3f} | **{scored['top3']:.3f}** ({lo:.2f}-{hi:.2f}) | {scored['top5']:.3f} | "
            f"{scored['auc_mean']:.3f} |")


def main() -> None:
    from secondread import mammo
    from secondread.train import DATASETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 100, 200, 300, 400])
    ap.add_argument("--cache-dir", type=Path, help="keep each seed's out-of-fold maps here")
    args = ap.parse_args()
    start = time.perf_counter()
    runs = {seed: _run(seed, args.cache_dir) for seed in args.seeds}
    first = runs[args.seeds[0]]
    assert all([s.source for s in r["samples"]] == [s.source for s in first["samples"]] for r in runs.values())
    rules = mammo.candidate_rules(DATASETS["mini-mias"])
    single = {seed: mammo.score_out_of_fold(runs[seed], rules=rules) for seed in args.seeds}
    print(f"mini-MIAS, 5-fold CV over all women ({single[args.seeds[0]]['images_with_located_lesion']} images with a "
          f"located lesion), candidates: {mammo.describe_rules(rules)}\n")
    print("| detector | top-1 | top-3 (95 % CI, women) | top-5 | AUC, mean of folds |\n|---|---|---|---|---|")
    for seed in args.seeds:
        print(_row(f"one detector, seed {seed}", single[seed]))
    mean = {k: float(np.mean([single[s][k] for s in args.seeds])) for k in ("top1", "top3", "top5", "auc_mean")}
    print(f"| one detector, mean of {len(args.seeds)} seeds | {mean['top1']:.3f} | **{mean['top3']:.3f}** | "
          f"{mean['top5']:.3f} | {mean['auc_mean']:.3f} |")
    for k in range(2, len(args.seeds) + 1):
        combos = list(itertools.combinations(args.seeds, k))
        scored = [mammo.score_out_of_fold(first, ensemble_maps([runs[s] for s in c]), rules=rules) for c in combos]
        if len(combos) > 1:
            top3 = [s["top3"] for s in scored]
            print(f"| ensembles of {k}, mean of all {len(combos)} | {np.mean([s['top1'] for s in scored]):.3f} | "
                  f"**{np.mean(top3):.3f}** (range {min(top3):.2f}-{max(top3):.2f}) | "
                  f"{np.mean([s['top5'] for s in scored]):.3f} | {np.mean([s['auc_mean'] for s in scored]):.3f} |")
        print(_row(f"ensemble of seeds {', '.join(map(str, args.seeds[:k]))}",
                   scored[combos.index(tuple(args.seeds[:k]))]))
    print(f"\n{time.perf_counter() - start:.0f} s (training: {sum(r['seconds'] for r in runs.values()):.0f} s, "
          "cached runs count their first run's time)", file=sys.stderr)


if __name__ == "__main__":
    main()

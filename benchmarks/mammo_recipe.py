"""Choose the mini-MIAS detector's recipe by 5-fold cross-validation over the *training* women.

Why: validation holds 17 images with a located lesion, too few to choose a recipe on; the saved
folds (datasets/splits/mini-mias.json) restricted to the training women give ~76 held-out lesion
images. Each recipe trains one detector per fold on the other folds' training women and scores the
held-out images' candidates (top-k hit: a candidate centre within an expert circle's radius) and
the image AUC of the map's maximum. Validation and test women are never read.

    PYTHONPATH=src python benchmarks/mammo_recipe.py                      # the shipped recipe
    PYTHONPATH=src python benchmarks/mammo_recipe.py '{"sigma_factor": 0.35}' '{"epochs": 60}'

Each argument is a JSON object of overrides of the ``optim`` row (or ``arch_args`` under the key
``"arch"``); prints one JSON line per recipe (no per-image rows) and a table at the end.
``--all-women`` folds the training and validation women together (93 held-out lesion images; for
measuring a recipe already chosen, as in the README's "What did not reach 0.60"):

    PYTHONPATH=src python benchmarks/mammo_recipe.py --all-women '{}' '{"input_size": 512}'

The candidates are the shipped rule's: since 2026-12-07 the best calcification cluster joins the
map's peaks at rank 3 (``secondread.calcifications``). ``--peaks-only`` scores the map's peaks
alone, as every figure measured before that date was.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    from secondread.mammo import cross_validate_detector

    women = "train"
    if "--all-women" in argv:  # measure over train + val women (nothing is chosen then)
        argv, women = [a for a in argv if a != "--all-women"], "all"
    rules = None  # the row's rules
    if "--peaks-only" in argv:
        argv, rules = [a for a in argv if a != "--peaks-only"], {}
    recipes = [json.loads(a) for a in argv] or [{}]
    rows = []
    for overrides in recipes:
        arch = {"members": 1, **(overrides.pop("arch", None) or {})}  # one detector, as the README's figures
        result = cross_validate_detector(arch_args=arch, women=women, rules=rules, **overrides)
        result.pop("per_image")
        result["overrides"] = dict(overrides, **({"arch": arch} if arch else {}))
        print(json.dumps(result), flush=True)
        rows.append(result)
    print("\n| overrides | held-out lesion images | top-1 | top-3 (95% CI, women) | top-5 | AUC (mean of folds) | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{json.dumps(r['overrides'])}` | {r['images_with_located_lesion']} | {r['top1']:.2f} | "
              f"{r['top3']:.2f} ({r['top3_ci95'][0]:.2f}-{r['top3_ci95'][1]:.2f}) | {r['top5']:.2f} | "
              f"{r['auc_mean']:.3f} | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Benign or malignant, where mini-MIAS has a lesion: how well can it be told from the pixels?

Why a measurement before a bundle: mini-MIAS holds ~90 lesion images (about 60 training), so any
model will be weak and its figure noisy; issue 4 asks for the AUC with a 95 % CI, and a second
reader must not ship a "malignancy" score that is no better than a coin. This module measures it
honestly and says what it is.

Method (:func:`lesion_features`): a crop around the lesion (side 3 x its radius, at least 64 px,
resized to 64 x 64; the expert's circle when training, the detector's top candidate at inference),
and 17 texture and shape features that radiologists' descriptors map to: the lesion's brightness
and contrast against a surrounding ring (density), grey-level co-occurrence contrast, homogeneity,
energy and correlation at two distances (texture), the gradient magnitude and the coherence of the
gradient direction in the ring (spiculated and ill-defined margins have many radial edges), the
brightness profile's slope from centre to ring (a sharp or gradual margin), and the radius (size).
A standardised L2 logistic regression (scikit-learn) reads them. The expert's class (CIRC, SPIC...)
is never a feature: the reader would not have it.

Evaluation (:func:`cross_validate_severity`): the saved 5 folds over women of train + validation
(``datasets/splits/mini-mias.json``; test women are withheld), each fold predicted by a model
fitted on the other four; pooled AUC with a percentile bootstrap CI over women; and, separately, the
model fitted on ``train`` scored on ``val`` (17-19 lesion images). "End to end" scores the crop at
the detector's top candidate instead of the expert's circle (what a reader would get).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from skimage import feature, filters, transform

CROP = 64
FACTOR = 3.0
MIN_SIDE = 64
C = 0.03
"""Inverse L2 strength of the logistic regression, chosen on the folds among 0.03, 0.3 and 3 (CV AUC
0.619, 0.582, 0.597): the strongest regularisation, as expected with 93 images and 17 features."""
FEATURES = ("inner_mean", "ring_mean", "contrast", "inner_std", "ring_std", "glcm_contrast_1",
            "glcm_homogeneity_1", "glcm_energy_1", "glcm_correlation_1", "glcm_contrast_4",
            "glcm_homogeneity_4", "glcm_energy_4", "glcm_correlation_4", "ring_gradient",
            "radial_coherence", "margin_slope", "log_radius")


def crop(pixels: np.ndarray, x: float, y: float, radius: float) -> tuple[np.ndarray, float]:
    """A ``CROP x CROP`` float crop centred on ``(x, y)`` of side ``max(FACTOR x radius, MIN_SIDE)``
    (edge-padded where it leaves the image), in [0, 1] of the image's range, and the lesion's
    radius in crop pixels."""
    side = max(FACTOR * radius, MIN_SIDE)
    half = int(round(side / 2))
    padded = np.pad(pixels.astype(np.float32), half, mode="edge")
    r, c = int(round(y)) + half, int(round(x)) + half
    patch = padded[r - half:r + half, c - half:c + half]
    lo, hi = float(pixels.min()), float(pixels.max())
    patch = (patch - lo) / max(hi - lo, 1e-6)
    small = transform.resize(patch, (CROP, CROP), anti_aliasing=True, preserve_range=True).astype(np.float32)
    return small, radius * CROP / (2 * half)


def lesion_features(pixels: np.ndarray, x: float, y: float, radius: float) -> np.ndarray:
    """The 17 features (:data:`FEATURES`) of the lesion at ``(x, y)`` with ``radius`` (pixels)."""
    patch, r_crop = crop(pixels, x, y, radius)
    yy, xx = np.mgrid[:CROP, :CROP] - (CROP - 1) / 2
    dist = np.hypot(yy, xx) / max(r_crop, 1.0)  # in lesion radii: 1 = the lesion's edge
    inner, ring = dist <= 1.0, (dist > 1.0) & (dist <= 1.5)
    quant = np.clip(np.round(patch * 31), 0, 31).astype(np.uint8)
    glcm = feature.graycomatrix(quant, distances=[1, 4], angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
                                levels=32, symmetric=True, normed=True)
    props = {p: feature.graycoprops(glcm, p).mean(axis=1) for p in ("contrast", "homogeneity", "energy", "correlation")}
    gy, gx = np.gradient(filters.gaussian(patch, 1.0))
    magnitude = np.hypot(gx, gy)
    radial = np.abs(gx * xx + gy * yy) / (np.hypot(xx, yy) * magnitude + 1e-6)
    profile = [float(patch[(dist > a) & (dist <= a + 0.25)].mean()) for a in (0.0, 0.5, 1.0, 1.25)]
    values = [patch[inner].mean(), patch[ring].mean(), patch[inner].mean() - patch[ring].mean(),
              patch[inner].std(), patch[ring].std(),
              props["contrast"][0], props["homogeneity"][0], props["energy"][0], props["correlation"][0],
              props["contrast"][1], props["homogeneity"][1], props["energy"][1], props["correlation"][1],
              magnitude[ring].mean(), float(np.average(radial[ring], weights=magnitude[ring] + 1e-9)),
              profile[0] - profile[-1], np.log(max(radius, 1.0))]
    return np.nan_to_num(np.asarray(values, dtype=np.float64))


def _model(c: float = C):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def lesion_table(data_dir=None, splits=("train", "val")) -> list[dict[str, Any]]:
    """One row per located lesion image of ``splits``: woman, split, malignant (1 if any of its
    lesions is), the expert circle's features, and the image (loaded lazily by the caller)."""
    from .datasets import minimias

    rows = []
    for split in splits:
        for s in minimias.samples(data_dir, split):
            circles = [les for les in s.lesions if les.kind == "circle"]
            if not circles:
                continue
            biggest = max(circles, key=lambda les: les.radius)
            malignant = any(les.attributes.get("severity") == "M" for les in s.lesions)
            rows.append({"id": s.id, "woman": s.patient, "split": split, "malignant": int(malignant),
                         "sample": s, "circle": (*biggest.center, biggest.radius)})
    return rows


def women_auc_ci(y, p, women, resamples: int = 2000, seed: int = 0) -> list[float] | None:
    """Percentile 95 % CI of the AUC, resampling women (a woman's images are not independent)."""
    from sklearn.metrics import roc_auc_score

    y, p, women = np.asarray(y), np.asarray(p), np.asarray(women)
    ids = sorted(set(women.tolist()))
    index = {w: np.flatnonzero(women == w) for w in ids}
    rng, values = np.random.default_rng(seed), []
    for _ in range(resamples):
        take = np.concatenate([index[w] for w in rng.choice(ids, len(ids), replace=True)])
        if len(set(y[take].tolist())) == 2:
            values.append(roc_auc_score(y[take], p[take]))
    if not values:
        return None
    return [round(float(np.percentile(values, 2.5)), 3), round(float(np.percentile(values, 97.5)), 3)]


def cross_validate_severity(data_dir=None, detector: str | os.PathLike | None = None, c: float = C) -> dict:
    """Benign vs malignant AUC: 5-fold CV over train+val women, and train -> val (see the module).

    ``detector`` (a bundle name or folder, e.g. ``mammo-abnormal``) adds the end-to-end figures,
    where each held-out image is cropped at the detector's top candidate instead of the expert's
    circle (training crops always use the expert's circle)."""
    from sklearn.metrics import roc_auc_score

    from .datasets.splits import load

    rows = lesion_table(data_dir)
    for r in rows:
        r["pixels"] = np.asarray(r["sample"].image.pixels)
        r["x"] = lesion_features(r["pixels"], *r["circle"])
    if detector is not None:
        from .explain import gradcam
        from .mammo import map_candidates
        from .models.bundle import load_bundle

        bundle = load_bundle(detector)
        for r in rows:
            heat = gradcam(bundle.model, bundle.explain_layer, bundle.prepare(r["pixels"])[None], r["pixels"].shape,
                           method=bundle.explain_method)
            top = map_candidates(heat, 1)
            cx, cy, rad = (top[0].x, top[0].y, top[0].radius) if top else r["circle"]
            r["x_detected"] = lesion_features(r["pixels"], cx, cy, rad)
    folds = load("mini-mias")["folds"]
    y = np.array([r["malignant"] for r in rows])
    women = [r["woman"] for r in rows]
    out: dict[str, Any] = {"lesion_images": len(rows), "malignant": int(y.sum()), "women": len(set(women)),
                           "features": list(FEATURES), "C": c}
    for key, label in (("x", "expert_circle"), ("x_detected", "detector_top_candidate")):
        if key not in rows[0]:
            continue
        p = np.full(len(rows), np.nan)
        for fold in folds:
            held = np.array([w in set(fold) for w in women])
            if held.any():
                model = _model(c).fit(np.stack([r["x"] for r, h in zip(rows, held) if not h]), y[~held])
                p[held] = model.predict_proba(np.stack([r[key] for r, h in zip(rows, held) if h]))[:, 1]
        tr = np.array([r["split"] == "train" for r in rows])
        model = _model(c).fit(np.stack([r["x"] for r, t in zip(rows, tr) if t]), y[tr])
        pv = model.predict_proba(np.stack([r[key] for r, t in zip(rows, tr) if not t]))[:, 1]
        wv = [w for w, t in zip(women, tr) if not t]
        out[label] = {"cv_auc": round(float(roc_auc_score(y, p)), 3), "cv_auc_ci95": women_auc_ci(y, p, women),
                      "val_n": int((~tr).sum()), "val_malignant": int(y[~tr].sum()),
                      "val_auc": round(float(roc_auc_score(y[~tr], pv)), 3),
                      "val_auc_ci95": women_auc_ci(y[~tr], pv, wv)}
    radius = np.array([np.log(r["circle"][2]) for r in rows])
    out["radius_only_auc"] = round(float(roc_auc_score(y, radius)), 3)
    return out

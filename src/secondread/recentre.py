"""Move each peak of the mammography detector's map to the centre of the mass beside it.

Why: the ``mammo-abnormal`` detector's map has one cell per 8 input pixels (6.4 mm on mini-MIAS,
read at 256 px), upsampled bilinearly. Its peaks land near a mass but often off its centre, and a
candidate counts only when its centre lies within the expert's circle (median radius 41 px, 8 mm).
By cross-validation, the detector's top 3 candidates had a centre within the radius on 37 % of
the lesion images and within 1.5 radii on 47 %: a tenth of the images were near misses.

Method (:func:`recentre`), on a :data:`GRID_MM` grid (the detector's own resolution):

1. **Field**: ``"blob"`` is the scale-normalised Laplacian of Gaussian, ``-sigma² ∇²G_sigma * I``,
   the largest over the rule's ``sigmas_mm`` (a bright disc of radius ``sigma √2`` peaks at its
   centre); ``"brightness"`` is the image smoothed by a Gaussian of the first sigma.
2. **Move**: each candidate goes to the field's strongest point within ``radius_mm`` of it, inside
   the breast (pectoral muscle out, as :func:`secondread.localise.breast_region` draws it); with no
   breast pixel in reach it stays where it was. Its score and radius stay the map's, so the ranks
   are the detector's own.
3. **Merge**: a moved candidate within :data:`MIN_GAP_MM` of a better one is dropped: both found
   the same mass.

**Measured, not shipped** (2026-12-07, ``benchmarks/mammo_recentre.py``: out-of-fold candidates of
five detector seeds, 5-fold CV over all 109 women here). The best setting on the *training* women
(:data:`MEASURED`) lifted their top-3 hit rate from 0.51 to 0.57 (mean of seeds; top-1 and top-5
alike), but the validation women's fell from 0.46 to 0.42, and the whole procedure judged by nested
CV (each fold's setting chosen on the other folds) gained only 0.50 -> 0.52 over all 93 images: two
images in a hundred, within the noise. ``mammo-abnormal`` therefore carries no ``recentre`` rule;
a bundle that does (``"recentre": {...}`` in bundle.json) gets it from
:func:`secondread.mammo.candidates`.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
from scipy import ndimage as ndi

from .calcifications import working_scale
from .image import Image
from .localise import Region, _grey, breast_region

GRID_MM = 0.8
"""Working pixel size: the detector reads mini-MIAS' 1024 px at 256 px, 0.8 mm a pixel."""
MIN_GAP_MM = 3.2
"""Two moved candidates closer than this found the same mass."""
FIELDS = ("blob", "brightness")
MEASURED = {"field": "brightness", "sigmas_mm": [2.4], "radius_mm": 9.6}
"""The setting the benchmark chose on the training women (see the module docstring)."""


def field(grey: np.ndarray, kind: str, sigmas_px: list[float]) -> np.ndarray:
    """The strength a mass centre maximises, on the working grid (see the module docstring)."""
    if kind == "blob":
        return np.max([-(s ** 2) * ndi.gaussian_laplace(grey, s) for s in sigmas_px], axis=0)
    if kind == "brightness":
        return ndi.gaussian_filter(grey, sigmas_px[0])
    raise ValueError(f"field must be one of {FIELDS}, not {kind!r}")


def recentre(regions: list[Region], image: Image, rule: dict) -> list[Region]:
    """``regions`` (ranked, pixels of ``image``) moved to the mass centres beside them and renumbered.

    ``rule``: ``{"field": "blob" | "brightness", "sigmas_mm": [...], "radius_mm": r}``."""
    if not regions:
        return []
    strength, zoom = strength_field(image, rule)
    return move(regions, strength, zoom, float(rule["radius_mm"]))


def strength_field(image: Image, rule: dict) -> tuple[np.ndarray, float]:
    """``(field on the working grid, -inf outside the breast; zoom factor)`` of one image."""
    zoom = working_scale(image, GRID_MM)
    h, w = (max(1, int(round(n * zoom))) for n in image.pixels.shape[:2])
    grey = cv2.resize(_grey(image).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    allowed = cv2.resize(breast_region(image).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return np.where(allowed, field(grey, rule["field"], [s / GRID_MM for s in rule["sigmas_mm"]]), -np.inf), zoom


def move(regions: list[Region], strength: np.ndarray, zoom: float, radius_mm: float) -> list[Region]:
    """Steps 2 and 3 of the module docstring on a precomputed :func:`strength_field`."""
    reach = radius_mm / GRID_MM
    moved: list[Region] = []
    for region in regions:
        # pixel index i covers [i, i + 1) of the image, so its centre is (i + 0.5) x zoom on the grid
        x, y = _strongest_within(strength, (region.x + 0.5) * zoom, (region.y + 0.5) * zoom, reach)
        candidate = replace(region, x=x / zoom - 0.5, y=y / zoom - 0.5) if x is not None else region
        if all(np.hypot(candidate.x - m.x, candidate.y - m.y) * zoom >= MIN_GAP_MM / GRID_MM for m in moved):
            moved.append(candidate)
    return [replace(r, rank=k) for k, r in enumerate(moved, start=1)]


def _strongest_within(strength: np.ndarray, x: float, y: float, reach: float) -> tuple[float | None, float | None]:
    """The grid point ``(x, y)`` (cell centres: index + 0.5) of the strongest finite value within
    ``reach`` cells of ``(x, y)``; ``(None, None)`` when there is none."""
    h, w = strength.shape
    rows = np.arange(max(0, int(y - reach)), min(h, int(y + reach) + 1))
    cols = np.arange(max(0, int(x - reach)), min(w, int(x + reach) + 1))
    if rows.size == 0 or cols.size == 0:
        return None, None
    window = strength[np.ix_(rows, cols)].copy()
    window[np.hypot(cols[None, :] + 0.5 - x, rows[:, None] + 0.5 - y) > reach] = -np.inf
    if not np.isfinite(window).any():
        return None, None
    r, c = np.unravel_index(int(np.argmax(window)), window.shape)
    return float(cols[c]) + 0.5, float(rows[r]) + 0.5

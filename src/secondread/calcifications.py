"""Microcalcification clusters on a mammogram: the candidates the mass detector cannot see.

Why a second, classical source: a fifth of mini-MIAS' located lesions are calcification clusters,
specks of 1-5 pixels at its 200 µm. The ``mammo-abnormal`` detector reads the image at 256 px
(800 µm), where those specks average away: by cross-validation it put one of its top 3 candidates on
only 10 % of them. A cluster of small bright specks is what a radiologist looks for, and plain image
processing finds it at full resolution.

Method (:func:`calcification_clusters`):

1. **Grid**: the image resampled to :data:`GRID_MM` (mini-MIAS' 200 µm) when its pixel spacing is
   known; without a spacing, the image is taken as mini-MIAS-like (longer side 20 cm -> 1024 px).
   Grey levels scaled to 0-255 by the image's range.
2. **Specks**: the Hessian's eigenvalues at :data:`SIGMA_MM`. A speck is brighter than its
   surroundings in *every* direction, so even the weaker of its two curvatures is strongly negative;
   a vessel or a fibrous strand curves along one direction only. Speck strength =
   ``max(0, -larger eigenvalue) x sigma²``; specks are its local maxima of at least
   :data:`THRESHOLD` inside the breast (pectoral muscle and a rim of :data:`RIM_MM` at the skin line
   taken out: scanner edges and the skin fold give bright lines there).
3. **Clusters**: every speck counts the specks within :data:`RADIUS_MM`; the speck with the most
   neighbours founds a cluster at its neighbours' mean position, its specks are used up, and so on.
   A cluster of fewer than :data:`MIN_SPECKS` specks is dropped (the chosen 1 lets a lone strong
   speck be a candidate; more specks rank first). Score = number of specks.

The parameters were chosen on the *training* women's images only, by the top-3 hit rate of the
detector's out-of-fold candidates with the best cluster placed at rank :data:`RANK`
(``benchmarks/mammo_calcifications.py``); the validation women's hits were not looked at for it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage import feature, transform

from .image import Image
from .localise import Region, _grey, breast_region, circle_fields

GRID_MM = 0.2
"""Working pixel size: mini-MIAS' own (its images were digitised at 50 µm and reduced to 200 µm)."""
UNKNOWN_SIDE_MM = 204.8
"""Longer side assumed for an image without a spacing: mini-MIAS' 1024 px at 200 µm."""
SIGMA_MM = 0.2
"""Hessian scale: one working pixel, the size of the specks themselves."""
THRESHOLD = 2.0
"""Least speck strength, in grey levels of the 0-255 image (per pixel², times sigma²)."""
RADIUS_MM = 3.0
"""Neighbourhood of a cluster: specks within 3 mm of each other (a cluster is at most about 1 cm)."""
MIN_SPECKS = 1
"""Fewest specks a cluster candidate may hold."""
RIM_MM = 2.4
"""Breast border left out (skin line, scanner edges)."""
RANK = 3
"""Rank at which :func:`merge` places the best cluster among the detector's candidates."""


def working_scale(image: Image, grid_mm: float = GRID_MM) -> float:
    """Zoom factor from the image's pixels to a grid of ``grid_mm`` (:data:`UNKNOWN_SIDE_MM` across
    when the image has no spacing)."""
    if image.spacing is not None:
        return float(np.mean(image.spacing[:2])) / grid_mm
    return (UNKNOWN_SIDE_MM / grid_mm) / max(image.pixels.shape[:2])


def speck_strength(grey255: np.ndarray, sigma_px: float) -> np.ndarray:
    """``max(0, -larger Hessian eigenvalue) x sigma²``: high only where the image is bright in every
    direction (see the module docstring)."""
    hessian = feature.hessian_matrix(grey255, sigma=sigma_px, order="rc", use_gaussian_derivatives=False)
    weaker = feature.hessian_matrix_eigvals(hessian)[0]  # eigenvalues come in decreasing order
    return np.clip(-weaker, 0, None) * sigma_px ** 2


def specks(image: Image, sigma_mm: float = SIGMA_MM, threshold: float = THRESHOLD) -> tuple[np.ndarray, float]:
    """``([N, 3] rows (row, col, strength) on the working grid, zoom factor)`` of the image's specks."""
    zoom = working_scale(image)
    grey = _grey(image) * 255.0
    allowed = breast_region(image)
    if abs(zoom - 1.0) > 1e-3:
        grey = transform.rescale(grey, zoom, order=1, anti_aliasing=zoom < 1, preserve_range=True)
        allowed = transform.resize(allowed, grey.shape, order=0, anti_aliasing=False, preserve_range=True) > 0.5
    allowed = ndi.binary_erosion(allowed, iterations=max(1, int(round(RIM_MM / GRID_MM))))
    strength = speck_strength(grey, sigma_mm / GRID_MM)
    peaks = feature.peak_local_max(strength, min_distance=2, threshold_abs=threshold, exclude_border=8)
    peaks = peaks[allowed[peaks[:, 0], peaks[:, 1]]]
    return np.column_stack([peaks, strength[peaks[:, 0], peaks[:, 1]]]), zoom


def cluster_specks(points: np.ndarray, radius_px: float, min_specks: int = MIN_SPECKS, top: int = 3) -> list[tuple]:
    """Greedy clusters ``(row, col, n_specks, extent_px)`` of speck positions, most specks first
    (ties: the order of ``points``, strongest first as :func:`specks` gives them)."""
    if len(points) == 0:
        return []
    xy = points[:, :2].astype(float)
    neighbours = cKDTree(xy).query_ball_point(xy, radius_px)
    counts = np.array([len(n) for n in neighbours])
    used = np.zeros(len(xy), dtype=bool)
    out = []
    for i in np.argsort(-counts, kind="stable"):
        members = [j for j in neighbours[i] if not used[j]]
        if used[i] or len(members) < min_specks:
            continue
        centre = xy[members].mean(axis=0)
        if any(np.hypot(*(centre - (r, c))) < 2 * radius_px for r, c, _, _ in out):
            continue
        used[members] = True
        extent = max(radius_px, float(np.hypot(*(xy[members] - centre).T).max()))
        out.append((float(centre[0]), float(centre[1]), len(members), extent))
        if len(out) == top:
            break
    return out


def calcification_clusters(image: Image, top: int = 3, sigma_mm: float = SIGMA_MM, threshold: float = THRESHOLD,
                           radius_mm: float = RADIUS_MM, min_specks: int = MIN_SPECKS) -> list[Region]:
    """Ranked calcification-cluster candidates in pixels of the original image (``x`` column, ``y``
    row; ``score`` = number of specks, ``radius`` = the cluster's extent)."""
    points, zoom = specks(image, sigma_mm, threshold)
    return cluster_regions(points, zoom, top, radius_mm, min_specks)


def rule_clusters(image: Image, rule: dict, top: int = 1) -> list[Region]:
    """:func:`calcification_clusters` with a bundle's rule (its keyword arguments plus the ``rank``
    at which :func:`merge` places the best cluster, which the search itself does not use)."""
    return calcification_clusters(image, top=top, **{k: v for k, v in rule.items() if k != "rank"})


def cluster_regions(points: np.ndarray, zoom: float, top: int = 3, radius_mm: float = RADIUS_MM,
                    min_specks: int = MIN_SPECKS, threshold: float | None = None) -> list[Region]:
    """:func:`cluster_specks` of :func:`specks`' output as regions of the original image; specks
    weaker than ``threshold`` (if given) left out first, so one speck search serves many thresholds."""
    if threshold is not None:
        points = points[points[:, 2] >= threshold]
    found = cluster_specks(points, radius_mm / GRID_MM, min_specks, top)
    return [Region(rank=k, score=float(n), x=c / zoom, y=r / zoom, radius=extent / zoom, kind="calcification cluster")
            for k, (r, c, n, extent) in enumerate(found, start=1)]


def merge(detected: list[Region], clusters: list[Region], rank: int = RANK) -> list[Region]:
    """The detector's candidates with the best cluster inserted at ``rank`` (ranks renumbered).

    Why a fixed rank and not a shared score: the detector's map probability and a speck count are not
    on one scale; a fixed slot is what the cross-validation measured. So that sorting by score gives
    the same order as the ranks (an independent scorer may do either), the inserted cluster's score
    is the midpoint of its neighbours' (1 above the first, 0 below the last): it marks its place and
    is not a probability. Its speck count is what ``analyze`` reports.
    """
    merged = list(detected)
    if clusters:
        at = min(rank, len(merged) + 1) - 1
        above = merged[at - 1].score if at > 0 else 1.0
        below = merged[at].score if at < len(merged) else 0.0
        merged.insert(at, replace(clusters[0], score=round((above + below) / 2, 5)))
    return [replace(r, rank=k) for k, r in enumerate(merged, start=1)]


FINDING = "calcification cluster candidate"
"""The report's label (and ``kind``) of a cluster: a candidate for a reader to look at, not a finding."""


def as_finding(region: Region, image: Image) -> dict:
    """One cluster as a report finding: centre, extent (in mm when the spacing is known), box, specks."""
    return {"kind": FINDING, "label": FINDING, "model": "secondread.calcifications", **circle_fields(region, image),
            "specks": int(region.score), "score_meaning": "number of bright specks in the cluster (a count, not a probability)"}

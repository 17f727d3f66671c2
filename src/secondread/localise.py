"""Where the lesion is on a mammogram: ranked candidate regions, scored against mini-MIAS' circles.

Why a classical baseline first: before any network's map is trusted to point at a lesion, the number
to beat is what plain image processing achieves. A mass is a bright, roughly round region denser
than the tissue around it, so the baseline ranks bright blobs by local contrast inside the breast,
with the pectoral muscle (the brightest region of an MLO view, and never a lesion) taken out.

Method (:func:`localise_image`), on the image reduced 4x (1024 -> 256: lesions of radius 3..200 px
become 1..50 px, and the blob search drops from seconds to tens of milliseconds):

1. **Breast** (:func:`breast_mask`): Gaussian smoothing, threshold at half Otsu's level (Otsu alone
   separates dense from fatty tissue and would cut off the fatty skin-side of the breast), the
   largest component, holes filled.
2. **Orientation and pectoral muscle** (:func:`chest_wall_side`, :func:`pectoral_mask`): the chest
   wall is the side where the breast's outline is a straight vertical edge (its per-row extreme
   column varies least); left and right breasts are mirror images, so this is read from the pixels,
   not from the file name. In an MLO view the pectoral muscle is the bright triangle in the top
   corner on that side: the bright region (above Otsu's level of the breast pixels) touching the
   chest wall in the top rows, replaced by its convex hull. Candidates inside it are dropped.
3. **Blobs**: CLAHE (:func:`skimage.exposure.equalize_adapthist`) to even out dense and fatty
   tissue, then :func:`skimage.feature.blob_log` over sigmas :data:`SIGMAS` (bright blobs).
4. **Score**: the difference of Gaussians at the blob's own scale, ``G(sigma) - G(3 sigma)`` of the
   CLAHE image at the centre: how much brighter the blob is than its surroundings. Ranked by score.

Parameters (CLAHE clip 0.03, sigmas 2..20, surround 3 sigma) were chosen on the ``train`` split
among 30 combinations (clip 0.01/0.03, three sigma ranges, five scores: DoG 2 and 3 sigma,
brightness, sqrt(sigma)-weighted DoG, blob size); train top-3 hit rate 0.32 for the chosen one,
0.16..0.32 over the grid. This is far below the 0.60 target: local brightness does not separate
masses from dense glandular tissue; a trained detector or classifier map is needed.

Evaluation (:func:`localise_dataset`): over abnormal images with a located lesion (a circle), the
**pointing game** (is the top candidate's centre inside an expert circle?) and **top-k hit rate**
(k = 1, 3, 5; a hit is any of the top k candidate centres within an expert's radius of its centre,
the issue's rule). Confidence intervals are percentile bootstraps over women (a woman's two images
are not independent), seeded. Parameters may only be tuned on ``train``; ``val`` is reported apart.
Any other candidate source (e.g. a classifier's Grad-CAM peaks) plugs in through ``source=``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage as ndi
from scipy import stats
from skimage import exposure, feature, filters, measure, morphology, transform

from .atomic import write_csv
from .errors import SecondreadError
from .image import Image

SCALE = 4
"""Reduction factor of the working image."""
SIGMAS = (2.0, 20.0)
"""blob_log sigma range at the working scale: radius ~ sigma * sqrt(2) = 3..28 px, i.e. 11..113 px
(2..23 mm) in the original, the middle of mini-MIAS' lesion radii."""
NUM_SIGMA = 10
BLOB_THRESHOLD = 0.02
CLAHE_CLIP = 0.03
SURROUND = 3.0
"""The surround of the local-contrast score is a Gaussian this many times the blob's sigma."""
TOP_K = (1, 3, 5)
DEFAULT_TOP = 10
BOOTSTRAP_RESAMPLES = 2000
SEED = 0
CSV_HEADER = ("id", "rank", "score", "x", "y", "radius")
DISCLAIMER = "Decision support only, not a diagnosis: candidate regions must be reviewed by a radiologist."


@dataclass
class Region:
    """One candidate, in pixels of the original image: ``x`` = column, ``y`` = row, top-left origin."""

    rank: int
    score: float
    x: float
    y: float
    radius: float
    kind: str = "candidate"
    """What found it, for a reader: ``candidate`` (a map peak or blob), ``calcification cluster``."""


# ----------------------------------------------------------------------------- masks
def _grey(image: Image) -> np.ndarray:
    """The image in [0, 1], 2D; a one-line error for anything else."""
    if image.pixels.ndim != 2:
        raise SecondreadError(image.source or None, "mass localisation needs a 2D mammogram")
    px = image.pixels
    lo, hi = float(px.min()), float(px.max())
    if not np.isfinite([lo, hi]).all() or hi <= lo:
        raise SecondreadError(image.source or None, "the image is constant or not finite")
    if min(px.shape) < 8 * SCALE:
        raise SecondreadError(image.source or None, "the image is too small for mass localisation")
    return (px - lo) / (hi - lo)


def breast_mask(small: np.ndarray) -> np.ndarray:
    """Largest bright component of the smoothed image at half Otsu's level, holes filled."""
    smooth = filters.gaussian(small, 1)
    mask = smooth > 0.5 * filters.threshold_otsu(smooth)
    labels = measure.label(mask)
    if labels.max() == 0:
        return mask
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return ndi.binary_fill_holes(labels == largest)


def chest_wall_side(mask: np.ndarray) -> str:
    """``"left"`` or ``"right"``: the side whose per-row extreme column of the breast varies least
    (the straight chest-wall edge; the skin side is curved)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) < 2:
        return "left"
    left = np.array([np.flatnonzero(mask[r])[0] for r in rows])
    right = np.array([np.flatnonzero(mask[r])[-1] for r in rows])
    return "left" if left.std() < right.std() else "right"


def pectoral_mask(small: np.ndarray, breast: np.ndarray, side: str) -> np.ndarray:
    """The bright region touching the chest wall in the top tenth of the breast's rows (the pectoral
    muscle of an MLO view), as its convex hull; empty when there is none (CC views)."""
    out = np.zeros_like(breast)
    rows = np.flatnonzero(breast.any(axis=1))
    if len(rows) < 10 or breast.sum() < 100:
        return out
    smooth = filters.gaussian(small, 2)
    bright = (smooth > filters.threshold_otsu(smooth[breast])) & breast
    labels = measure.label(bright)
    top = rows[0] + max(1, len(rows) // 10)
    wall_cols = [np.flatnonzero(breast[r])[0 if side == "left" else -1] for r in range(rows[0], top)]
    seeds = {labels[r, c] for r, c in zip(range(rows[0], top), wall_cols)} - {0}
    for k in seeds:
        region = labels == k
        if region[: (rows[0] + rows[-1]) // 2].sum() > 0.5 * region.sum():  # lies in the upper half
            out |= morphology.convex_hull_image(region)
    return out & breast


# ----------------------------------------------------------------------------- candidates
def _blobs(clahe: np.ndarray) -> np.ndarray:
    return feature.blob_log(clahe, min_sigma=SIGMAS[0], max_sigma=SIGMAS[1], num_sigma=NUM_SIGMA,
                            threshold=BLOB_THRESHOLD, overlap=0.5)


def _dog_scores(clahe: np.ndarray, blobs: np.ndarray) -> np.ndarray:
    """Difference of Gaussians ``G(sigma) - G(SURROUND sigma)`` at each blob's centre and own sigma."""
    cache: dict[float, np.ndarray] = {}

    def g(sigma: float) -> np.ndarray:
        if sigma not in cache:
            cache[sigma] = filters.gaussian(clahe, sigma)
        return cache[sigma]

    return np.array([g(s)[int(r), int(c)] - g(SURROUND * s)[int(r), int(c)] for r, c, s in blobs])


def localise_image(image: Image, top: int = DEFAULT_TOP) -> list[Region]:
    """Ranked candidate mass regions of one mammogram (see the module docstring).

    Returns up to ``top`` :class:`Region` in pixels of the original image (``x`` column, ``y`` row,
    top-left origin; ``radius`` = blob sigma x sqrt(2)), best first.
    """
    grey = _grey(image)
    small = transform.downscale_local_mean(grey, (SCALE, SCALE))
    breast = breast_mask(small)
    allowed = breast & ~pectoral_mask(small, breast, chest_wall_side(breast))
    clahe = exposure.equalize_adapthist(small, clip_limit=CLAHE_CLIP) * breast
    blobs = _blobs(clahe)
    if len(blobs) == 0:
        return []
    keep = allowed[blobs[:, 0].astype(int), blobs[:, 1].astype(int)]
    blobs = blobs[keep]
    scores = _dog_scores(clahe, blobs)
    order = np.argsort(-scores, kind="stable")[:top]
    return [Region(rank=i + 1, score=round(float(scores[j]), 5), x=float(blobs[j, 1] * SCALE + (SCALE - 1) / 2),
                   y=float(blobs[j, 0] * SCALE + (SCALE - 1) / 2), radius=float(blobs[j, 2] * np.sqrt(2) * SCALE))
            for i, j in enumerate(order)]


def breast_region(image: Image) -> np.ndarray:
    """The breast mask (pectoral muscle excluded) at the original image's size, as candidates see it."""
    small = transform.downscale_local_mean(_grey(image), (SCALE, SCALE))
    breast = breast_mask(small)
    allowed = breast & ~pectoral_mask(small, breast, chest_wall_side(breast))
    big = np.repeat(np.repeat(allowed, SCALE, axis=0), SCALE, axis=1)
    out = np.zeros(image.shape, dtype=bool)
    out[:big.shape[0], :big.shape[1]] = big[:image.shape[0], :image.shape[1]]
    return out


def circle_fields(region: Region, image: Image) -> dict:
    """A candidate circle as a report shows it: centre, radius, diameter in mm (when the spacing is
    known) and the box it spans, clipped to the image."""
    h, w = image.shape[:2]
    box = {"x0": max(0, int(np.floor(region.x - region.radius))), "y0": max(0, int(np.floor(region.y - region.radius))),
           "x1": min(w, int(np.ceil(region.x + region.radius)) + 1), "y1": min(h, int(np.ceil(region.y + region.radius)) + 1)}
    mm = float(np.mean(image.spacing[:2])) if image.spacing is not None else None
    return {"rank": region.rank, "score": region.score, "centroid": {"x": round(region.x, 1), "y": round(region.y, 1)},
            "radius_px": round(region.radius, 1), "diameter_mm": None if mm is None else round(2 * region.radius * mm, 1),
            "bbox": box}


# ----------------------------------------------------------------------------- scoring
def hits(regions: list[Region], circles: list[tuple[float, float, float]]) -> list[bool]:
    """For each region, is its centre within the radius of an expert circle ``(x, y, radius)``?"""
    return [any((r.x - cx) ** 2 + (r.y - cy) ** 2 <= rad ** 2 for cx, cy, rad in circles) for r in regions]


def image_result(regions: list[Region], circles) -> dict:
    """Pointing game and top-k hits of one image."""
    h = hits(regions, circles)
    return {"pointing": bool(h[:1] and h[0]), **{f"top{k}": any(h[:k]) for k in TOP_K}}


def _bootstrap_ci(values: np.ndarray, groups: list[str]) -> list[float] | None:
    """Percentile 95 % interval of a hit rate, resampling women (clusters) with replacement."""
    women = sorted(set(groups))
    if len(women) < 2:
        return None
    hit = np.array([values[[g == w for g in groups]].sum() for w in women], dtype=float)
    count = np.array([sum(g == w for g in groups) for w in women], dtype=float)
    res = stats.bootstrap((hit, count), lambda h, n: h.sum() / n.sum(), paired=True, vectorized=False,
                          n_resamples=BOOTSTRAP_RESAMPLES, method="percentile", confidence_level=0.95,
                          random_state=np.random.default_rng(SEED))
    return [round(float(res.confidence_interval.low), 3), round(float(res.confidence_interval.high), 3)]


def summarise(per_image: list[dict]) -> dict:
    """Rates with women-bootstrap 95 % CIs over the images that have a located lesion."""
    scored = [r for r in per_image if r["circles"]]
    out: dict = {"images": len(per_image), "scored_images": len(scored),
                 "women": len({r["woman"] for r in scored})}
    for key in ("pointing", *(f"top{k}" for k in TOP_K)):
        values = np.array([r[key] for r in scored], dtype=float)
        out[key] = round(float(values.mean()), 3) if len(values) else None
        out[f"{key}_ci95"] = _bootstrap_ci(values, [r["woman"] for r in scored]) if len(values) else None
    return out


# ----------------------------------------------------------------------------- data set
def write_predictions(path: str | os.PathLike, rows: list[tuple[str, Region]]) -> Path:
    """CSV ``id,rank,score,x,y,radius``, written atomically (:func:`secondread.atomic.write_csv`)."""
    return write_csv(path, CSV_HEADER, ([image_id, r.rank, f"{r.score:.5f}", f"{r.x:.1f}", f"{r.y:.1f}",
                                         f"{r.radius:.1f}"] for image_id, r in rows))


def localise_dataset(data_dir: str | os.PathLike | None = None, split: str = "all",
                     predictions: str | os.PathLike | None = None, top_k: int = DEFAULT_TOP,
                     source: Callable[[Image], list[Region]] | None = None, abnormal_only: bool = False) -> dict:
    """Localise every mini-MIAS image of ``split`` (``all``, ``train``, ``val``, ``fold<k>``) and score.

    Parameters
    ----------
    data_dir : path, optional
        The data root (``$SECONDREAD_DATA`` by default), holding ``mammography/mini-mias``.
    predictions : path, optional
        Where to write the CSV ``id,rank,score,x,y,radius`` (``id`` = the PNG's name relative to
        the data set folder, e.g. ``mdb001.png``).
    top_k : int
        Candidates kept per image (at least 5 for the top-5 rate).
    source : callable, optional
        ``Image -> list[Region]`` ranked best first; default :func:`localise_image`. A classifier's
        Grad-CAM peaks plug in here.
    abnormal_only : bool
        Skip normal images (they carry no location to score; their candidates are still useful
        as false-positive evidence, so the default keeps them in the CSV).

    Returns
    -------
    dict
        ``summary`` (pointing game, top-1/3/5 hit rates with 95 % CIs over women, on abnormal images
        with a located lesion), ``per_image`` results, counts and ``seconds``.
    """
    from .datasets import minimias  # lazy: the evaluation only

    if top_k < 1:
        raise SecondreadError(None, "the number of candidates per image must be at least 1")
    find = source or (lambda image: localise_image(image, top=top_k))
    items = minimias.samples(data_dir, split=None if split == "all" else split)
    start = time.perf_counter()
    rows, per_image = [], []
    for sample in items:
        circles = sample.circles
        if abnormal_only and not sample.label:
            continue
        regions = list(find(sample.image))[:top_k]
        image_id = Path(sample.source).name
        rows += [(image_id, r) for r in regions]
        per_image.append({"id": image_id, "woman": sample.patient, "label": sample.label,
                          "circles": circles, **image_result(regions, circles)})
    if predictions is not None:
        write_predictions(predictions, rows)
    seconds = time.perf_counter() - start
    return {"dataset": "mini-mias", "split": split, "summary": summarise(per_image), "per_image": per_image,
            "hit_rule": "a candidate centre within an expert circle's radius; pointing game = the top candidate",
            "predictions": None if predictions is None else str(predictions),
            "seconds": round(seconds, 2), "seconds_per_image": round(seconds / max(1, len(per_image)), 3),
            "disclaimer": DISCLAIMER}

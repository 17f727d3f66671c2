"""Where the classifiers look, scored against the experts: pointing game and top-k hit rate of
Grad-CAM regions (issue 5, items 1 and 5).

Why: a classifier that says "tumour, 0.9" while its map glows on the skull is right for the wrong
reason, and a reader shown that map is misled. The check is the one the literature uses (Zhang et
al., "Top-down neural attention by excitation backprop", the *pointing game*): is the map's global
maximum inside the expert's lesion? And, since a reader looks at a few hot spots rather than one
pixel, the *top-k hit rate*: does any of the k strongest regions of the map have its centre inside
the lesion?

Method (:func:`explain_sample`, :func:`map_regions`):

- Every image with an expert lesion is explained, **whatever the model decided**: the pointing game
  is about where the model looks, not about whether it fired (the model's probability is kept per
  image, and the summary also gives the pointing game among the images the model called positive).
- Grad-CAM of the finding's logit (:func:`secondread.explain.gradcam`, with the bundle's own
  preprocessing and its ``explain_layer``/``explain_method``), upsampled to the original image.
- Regions: connected components of the map at or above :data:`LEVEL` x its peak, ranked by their
  peak value; centre = the component's map-weighted centroid (x = column, y = row, pixels of the
  original image, top-left origin), radius = the equivalent-circle radius ``sqrt(area / pi)``.
- Hits: LGG lesions are masks (the point's pixel is in the mask), mini-MIAS lesions circles (within
  the expert's radius of its centre, :func:`secondread.localise.hits`, the rule of
  ``localise --model mammo-blobs``).
- Baselines in the same result, to say what a map must beat: the image centre, and the centroid of
  the body part (the brain's foreground; the breast without its pectoral muscle,
  :func:`secondread.localise.breast_region`) used as the "pointing" guess.
- 95 % CIs: percentile bootstrap over patients (LGG) / women (mini-MIAS), seeded
  (:func:`secondread.localise._bootstrap_ci`): a patient's slices are not independent.

Which layer. The first brain classifier (an image-label compact ResNet at 64 px) had an 8 x 8
last stage whose upsampled peak can only fall on cell centres 32 px apart on a 256 px slice; on LGG
val it pointed at 0.08 [0.02, 0.16], and its best map chosen on train (middle stage, Grad-CAM++) at
0.71 [0.63, 0.79]. The shipped ``brain-mri-tumour`` is now mask-supervised
(:class:`secondread.models.nets.LesionMapNet`): Grad-CAM at its U-Net's output ``features`` is its
own 128 px lesion map above the head's bias, declared in its bundle.json (``"explain"``), so
``analyze`` shows it and the default here scores it: val 0.943 [0.87, 0.99], top-3 0.954 (measured
2026-11-24; baselines 0.14 image centre, 0.01 brain centroid). mammo-abnormal (val AUC 0.63)
points at no lesion on val (0 / 17; its peak lies in the breast on 8 of 17 images), under the
image-centre baseline (1 / 17). ``layer=``/``method=`` score alternatives.

Which data set scores which bundle is read from the bundle (``training.dataset``): LGG for
``brain-mri-tumour``, mini-MIAS for ``mammo-abnormal``. The breast *ultrasound* classifier
(``breast-us-28``) would need BUSI's masks, which are not available here; pneumonia and adrenal CT
have no expert outlines at all.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, measure

from .errors import SecondreadError
from .image import Image
from .localise import (
    DISCLAIMER,
    TOP_K,
    Region,
    _bootstrap_ci,
    breast_region,
    hits,
    write_predictions,
)

LEVEL = 0.5
"""A region is a connected part of the map at or above this fraction of the map's peak."""
SCORED = {"lgg": "lgg", "mini-mias": "minimias"}
"""Training data set of a bundle -> the loader (in :mod:`secondread.datasets`) holding its experts' lesions."""
UNSCORABLE = {"breastmnist": "its lesions are outlined only in BUSI, which is not available here",
              "pneumoniamnist": "PneumoniaMNIST has no expert outlines of the pneumonia",
              "adrenalmnist3d": "AdrenalMNIST3D has no expert outlines of the hyperplasia"}


# ----------------------------------------------------------------------------- maps and regions
def map_regions(heat: np.ndarray, top: int, level: float = LEVEL) -> list[Region]:
    """Ranked regions of a 2D map: components at ``>= level x peak``, strongest peak first."""
    peak = float(heat.max()) if heat.size else 0.0
    if peak <= 0:
        return []
    labels = measure.label(heat >= level * peak, connectivity=2)
    props = measure.regionprops(labels, intensity_image=heat)
    props.sort(key=lambda p: -float(p.intensity_max))
    return [Region(rank=i + 1, score=round(float(p.intensity_max), 5), x=float(p.centroid_weighted[1]),
                   y=float(p.centroid_weighted[0]), radius=float(np.sqrt(p.area / np.pi)))
            for i, p in enumerate(props[:top])]


def peak_point(heat: np.ndarray) -> tuple[float, float] | None:
    """``(x, y)`` of the map's global maximum (the first one in row-major order), None if empty."""
    if heat.size == 0 or float(heat.max()) <= 0:
        return None
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return float(col), float(row)


def foreground_mask(pixels: np.ndarray) -> np.ndarray:
    """The body part (the brain on a FLAIR slice): largest component above half Otsu's level of the
    smoothed image, holes filled; the whole image when the image is constant."""
    unit = pixels.astype(np.float32)
    span = float(unit.max() - unit.min())
    if span <= 0:
        return np.ones(pixels.shape, bool)
    smooth = filters.gaussian((unit - unit.min()) / span, 2)
    labels = measure.label(smooth > 0.5 * filters.threshold_otsu(smooth))
    if labels.max() == 0:
        return np.ones(pixels.shape, bool)
    return ndi.binary_fill_holes(labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1)


def centroid(mask: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` of a mask's centroid (the image centre for an empty mask): the baseline guess."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return (mask.shape[1] - 1) / 2, (mask.shape[0] - 1) / 2
    return float(cols.mean()), float(rows.mean())


def explain_sample(bundle, pixels: np.ndarray, layer: str | None = None,
                   method: str | None = None) -> tuple[np.ndarray, float]:
    """Grad-CAM of the finding on ``pixels`` at their own size, and the model's probability.

    ``layer`` and ``method`` default to the bundle's (``explain_layer``/``explain_method``: the map
    ``analyze`` shows a reader)."""
    from .explain import gradcam
    from .models.bundle import calibrated

    batch = bundle.prepare(pixels)[None]
    prob = float(calibrated(bundle.logits(batch), bundle.temperature)[0])
    layer, method = layer or bundle.explain_layer, method or bundle.explain_method
    if layer not in dict(bundle.model.named_modules()):
        raise SecondreadError(None, f"model {bundle.name!r} has no layer {layer!r}")
    return gradcam(bundle.model, layer, batch, pixels.shape, method=method), prob


# ----------------------------------------------------------------------------- hits
def _masks(sample) -> list[np.ndarray]:
    return [les.full_mask(sample.image.shape) if hasattr(les, "full_mask") else les.mask
            for les in sample.lesions if les.kind == "mask"]


def _inside(points: list[tuple[float, float]], truth: dict) -> list[bool]:
    """For each ``(x, y)``: inside an expert circle (``localise.hits``) or on an expert mask's pixel."""
    if truth["circles"]:
        return hits([Region(0, 0.0, x, y, 0.0) for x, y in points], truth["circles"])
    out = []
    for x, y in points:
        r, c = round(y), round(x)
        out.append(any(0 <= r < m.shape[0] and 0 <= c < m.shape[1] and bool(m[r, c]) for m in truth["masks"]))
    return out


def _truth(sample) -> dict:
    """The located expert lesions of a sample (circles or masks); empty lists when there is none."""
    return {"circles": sample.circles, "masks": _masks(sample)}


def image_result(heat: np.ndarray, regions: list[Region], truth: dict, baselines: dict) -> dict:
    """Pointing game (global maximum), top-k hits of the regions, and the baselines' pointing."""
    peak = peak_point(heat)
    hit = _inside([(r.x, r.y) for r in regions], truth)
    out = {"pointing": bool(peak is not None and _inside([peak], truth)[0]),
           **{f"top{k}": any(hit[:k]) for k in TOP_K}}
    for name, point in baselines.items():
        out[f"baseline_{name}"] = _inside([point], truth)[0]
    return out


# ----------------------------------------------------------------------------- summary
BASELINES = ("image_centre", "body_centroid")
KEYS = ("pointing", *(f"top{k}" for k in TOP_K), *(f"baseline_{b}" for b in BASELINES))


def summarise(per_image: list[dict]) -> dict:
    """Rates with 95 % CIs over patients (women for mini-MIAS) of the explained images."""
    groups = [r["patient"] for r in per_image]
    out: dict = {"images": len(per_image), "patients": len(set(groups))}
    for key in KEYS:
        values = np.array([r[key] for r in per_image], dtype=float)
        out[key] = round(float(values.mean()), 3) if len(values) else None
        out[f"{key}_ci95"] = _bootstrap_ci(values, groups) if len(values) else None
    out["peak_in_body"] = round(float(np.mean([r["peak_in_body"] for r in per_image])), 3) if per_image else None
    positive = [r for r in per_image if r["positive"]]
    out["called_positive"] = len(positive)
    out["pointing_when_called_positive"] = (round(float(np.mean([r["pointing"] for r in positive])), 3)
                                            if positive else None)
    return out


# ----------------------------------------------------------------------------- data set
def _dataset_of(bundle) -> str:
    """The lesion data set that scores ``bundle``'s maps, or a one-line error saying why there is none."""
    trained_on = str(bundle.config.get("training", {}).get("dataset", ""))
    if trained_on in SCORED:
        return trained_on
    why = UNSCORABLE.get(trained_on, f"no data set with expert lesion outlines for {trained_on or 'its data'}")
    raise SecondreadError(None, f"cannot score the maps of model {bundle.name!r}: {why}")


def _split_of(split: str) -> str | None:
    if split == "test":
        raise SecondreadError(None, "the test patients of folder data sets are withheld (use train, val or all)")
    return None if split == "all" else split


def localise_with_map(model: str, data: str | os.PathLike, split: str = "all",
                      predictions: str | os.PathLike | None = None, top_k: int = 10,
                      limit: int | None = None, layer: str | None = None, method: str | None = None) -> dict:
    """Explain every image of ``split`` with an expert lesion by ``model``'s Grad-CAM and score the map.

    Parameters
    ----------
    model : str
        A classifier bundle (shipped name or folder) trained on LGG or mini-MIAS.
    data : path
        The data root or the data set's own folder (``.../mri/lgg``, ``.../mammography/mini-mias``).
    split : str
        ``all``, ``train``, ``val`` or ``fold<k>`` (the saved per-patient split); ``test`` is withheld.
    predictions : path, optional
        CSV ``id,rank,score,x,y,radius`` (``id`` = the image's path relative to the data set folder,
        as ``evaluate`` writes it; regions in pixels of the original image), written atomically.
    top_k : int
        Regions kept per image.
    limit : int, optional
        Explain only the first ``limit`` lesion images (tests; the figures use the whole split).
    layer, method : str, optional
        The layer explained and ``gradcam``/``gradcam++`` (default: the bundle's ``explain_layer`` and
        ``explain_method``, the map ``analyze`` shows).

    Returns
    -------
    dict
        ``summary`` (pointing game, top-1/3/5 hit rates, baselines, with 95 % CIs over patients),
        per-split summaries when ``split="all"``, ``per_image`` results, ``seconds``.
    """
    from importlib import import_module

    from .datasets.lesions import locate_dataset, relative_id
    from .models.bundle import load_bundle

    if top_k < 1:
        raise SecondreadError(None, "the number of regions per image must be at least 1")
    bundle = load_bundle(model)
    dataset = _dataset_of(bundle)
    loader = import_module(f".datasets.{SCORED[dataset]}", __package__)
    root, folder = locate_dataset(loader, data)
    items = [s for s in loader.samples(root, split=_split_of(split)) if s.label]
    start = time.perf_counter()
    rows, per_image = [], []
    for sample in items:
        truth = _truth(sample)
        if not (truth["circles"] or truth["masks"]):
            continue  # a lesion without a location (mini-MIAS mdb059...) cannot be pointed at
        if limit is not None and len(per_image) >= limit:
            break
        pixels = sample.image.pixels
        heat, prob = explain_sample(bundle, pixels, layer, method)
        regions = _regions(heat, top_k, method or bundle.explain_method, bundle.config, sample.image)
        body = breast_region(sample.image) if dataset == "mini-mias" else foreground_mask(pixels)
        baselines = {"image_centre": ((pixels.shape[1] - 1) / 2, (pixels.shape[0] - 1) / 2),
                     "body_centroid": centroid(body)}
        peak = peak_point(heat)
        image_id = relative_id(sample.source, folder)
        rows += [(image_id, r) for r in regions]
        per_image.append({"id": image_id, "patient": sample.patient, "probability": round(prob, 4),
                          "positive": prob >= bundle.threshold, "peak": peak,
                          "peak_in_body": bool(peak is not None and body[int(peak[1]), int(peak[0])]),
                          **image_result(heat, regions, truth, baselines)})
    if not per_image:
        raise SecondreadError(folder, f"no images with a located expert lesion in the {split!r} split")
    if predictions is not None:
        write_predictions(predictions, rows)
    seconds = time.perf_counter() - start
    return {"model": bundle.name, "dataset": dataset, "split": split, "summary": summarise(per_image),
            **({"splits": _per_split(dataset, per_image)} if split == "all" else {}),
            "per_image": per_image, "map": _map_name(bundle, layer, method),
            "hit_rule": ("pointing game = the map's global maximum inside the expert lesion; top-k = any of the "
                         "k strongest regions' centres inside it (" + ("within a circle's radius" if dataset ==
                                                                      "mini-mias" else "on the mask") + ")"),
            "baselines": {"image_centre": "the image's centre", "body_centroid":
                          "the breast's centroid (pectoral muscle excluded)" if dataset == "mini-mias"
                          else "the brain's (foreground) centroid"},
            "predictions": None if predictions is None else str(predictions),
            "seconds": round(seconds, 2), "seconds_per_image": round(seconds / len(per_image), 4),
            "disclaimer": DISCLAIMER}


def _map_name(bundle, layer: str | None, method: str | None) -> str:
    method = method or bundle.explain_method
    if method == "heatmap":
        from .mammo import candidate_rules, describe_rules

        return f"the detector's own lesion map, candidates = {describe_rules(candidate_rules(bundle.config))}"
    return f"{method} of {layer or bundle.explain_layer}, regions at >= {LEVEL} x peak"


def _regions(heat: np.ndarray, top_k: int, method: str, config: dict | None = None,
             image: Image | None = None) -> list[Region]:
    """A detector's own map (``heatmap``) gives its peaks after non-maximum suppression with the
    candidate rules of its bundle ``config`` (:func:`secondread.mammo.candidates`); a CAM gives its
    regions (:func:`map_regions`)."""
    from .explain import OWN_MAP

    if method == OWN_MAP:
        from .mammo import candidate_rules, candidates

        return candidates(heat, image, top_k, rules=candidate_rules(config or {}))
    return map_regions(heat, top_k)


def _per_split(dataset: str, per_image: list[dict]) -> dict:
    """Summaries of the saved ``train`` and ``val`` patients (a map scored on ``train`` patients
    was trained on them: ``val`` is the honest figure)."""
    from .datasets.splits import patients_in

    out = {}
    for name in ("train", "val"):
        keep = patients_in(dataset, name)
        part = [r for r in per_image if r["patient"] in keep]
        if part:
            out[name] = summarise(part)
    return out

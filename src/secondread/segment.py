"""Segmentation bundles: lesion masks, their regions, and Dice/HD95 against the experts' outlines.

Why a separate module: a classifier says *whether*; a segmentation says *where and how big*, which
is what a radiologist checks a second reader against. Its output is a mask at the image's own size
plus the mask's connected components measured in pixels and, where the spacing is known, in mm.

The shipped bundle ``brain-mri-seg`` is a compact MONAI U-Net for FLAIR abnormality on LGG brain
MRI slices (``mri/lgg``), trained on CPU by :mod:`secondread.segment_train`
(``python -m secondread.segment_train``): measured by 5-fold cross-validation over the patients,
its test-time flip, cut (slice by slice, or each patient's consecutive slices as one volume),
threshold, hysteresis and smallest region chosen out of fold, then trained on every patient;
the withheld ``test`` patients are never read.

Bundle layout (same spirit as :mod:`secondread.models.bundle`, which holds classifiers and whose
loader builds only the classifier architectures, hence the small loader here)::

    <dir>/bundle.json    "task": "segmentation", architecture, preprocessing, input_shape,
                         threshold, low_threshold (hysteresis, optional), min_region_px (at the
                         input grid), cut ("slice" or "volume", optional; a volume cut
                         carries slice_cut, the setting for a slice without neighbours),
                         test_time_flip (optional), metrics with CIs, the recipe, provenance
    <dir>/weights.pt     the U-Net state_dict (loaded with ``weights_only=True``)
    <dir>/model_card.md  written from bundle.json

Scoring conventions (:func:`score_pair`, :func:`summarise`):

- **Dice** per image with MONAI's :func:`monai.metrics.compute_dice` (``ignore_empty=False``):
  1 when expert and prediction are both empty, 0 when exactly one is empty. The headline figure is
  the mean Dice over **tumour slices** (expert mask not empty; an empty prediction there scores 0);
  slices without tumour are reported apart as the **false-positive rate** (share of them with any
  predicted pixel), so a model cannot look good by predicting nothing on empty slices.
- **HD95** with MONAI's :func:`monai.metrics.compute_hausdorff_distance` (95th percentile,
  symmetric, in mm when the spacing is known, else pixels), only where both masks are non-empty
  (undefined otherwise: blank in the CSV; tumour slices with an empty prediction are counted as
  ``missed``).
- **Per-patient 3D Dice**: all slices of a patient stacked, one Dice per patient.
- 95 % confidence intervals are percentile bootstraps over **patients** (slices of one patient
  are not independent), seeded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SecondreadError
from .image import Image

NAME = "brain-mri-seg"
TASK = "segmentation"
ARCHITECTURE = "monai_unet"
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "bundle.json", "weights.pt", "model_card.md"
ZOO = Path(__file__).parent / "models" / "zoo"
INFER_BATCH = 32
BOOTSTRAP_RESAMPLES = 2000
FLAIR_CHANNEL = 1
"""The Kaggle LGG ``.tif`` slices are RGB (pre-contrast, FLAIR, post-contrast): FLAIR is channel 1."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".pgm", ".dcm", ".nii", ".nii.gz")
CSV_HEADER = ("id", "dice", "hd95", "patient", "tumour", "truth_pixels", "pred_pixels", "regions")
DISCLAIMER = "Decision support only, not a diagnosis: outlines must be reviewed by a radiologist."


# ============================================================================ the bundle
def build_net(arch_args: dict, members: int = 1):
    """The MONAI U-Net described by ``arch_args`` (a bundle stores them as data, never pickled code),
    or ``members`` of them averaged by :func:`mean_of_members` (a seed ensemble)."""
    from monai.networks.nets import UNet

    try:
        nets = [UNet(**arch_args) for _ in range(max(1, int(members)))]
    except (TypeError, ValueError, AssertionError) as exc:
        raise SecondreadError(None, f"bad U-Net arguments ({type(exc).__name__}: {exc})") from None
    return nets[0] if len(nets) == 1 else mean_of_members(nets)


def mean_of_members(nets: list):
    """One module whose logit is that of the members' mean probability.

    Why inside ``forward``: an ensemble then stays ONE bundle (one state dict, ``members.<k>.*``)
    that ``segment``, ``analyze``, the service and the benchmark load and run unchanged, and that
    ONNX can still trace (sigmoid, mean, log only). Averaging probabilities rather than logits keeps
    one confident member from overruling the others.
    """
    import torch

    class MeanOfMembers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.members = torch.nn.ModuleList(nets)

        def forward(self, x):
            p = torch.stack([torch.sigmoid(m(x)) for m in self.members]).mean(0).clamp(1e-6, 1 - 1e-6)
            return torch.log(p) - torch.log1p(-p)

    return MeanOfMembers()


@dataclass
class SegBundle:
    """A loaded segmentation bundle: the network in eval mode plus how to feed it and cut its output."""

    path: Path
    config: dict[str, Any]
    model: Any
    sha256: str

    @property
    def name(self) -> str:
        return str(self.config["name"])

    @property
    def preprocessing(self) -> list[dict]:
        return self.config["preprocessing"]

    @property
    def input_shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.config["input_shape"])

    @property
    def threshold(self) -> float:
        return float(self.config["threshold"])

    @property
    def low_threshold(self) -> float | None:
        """Hysteresis low threshold (``None``: a plain cut at :attr:`threshold`)."""
        low = self.config.get("low_threshold")
        return None if low is None else float(low)

    def cut_settings(self, shape: tuple[int, ...]) -> tuple[float, float | None, int]:
        """``(threshold, low threshold, smallest region)`` for cutting a probability map of
        ``shape``: a stack of slices (3D) or one slice (2D), the smallest region in its pixels
        (voxels) scaled from the input grid by the slice's area.

        Why two: a bundle that cuts volumes chose its smallest region in voxels, far too large as a
        smallest area for a slice that has no neighbours (a lone PNG); for that slice it keeps the
        best slice-by-slice setting of the same out-of-fold maps (``slice_cut``)."""
        c = self.config["slice_cut"] if self.cuts_volumes and len(shape) == 2 else self.config
        low = c.get("low_threshold")
        return (float(c["threshold"]), None if low is None else float(low),
                _scaled_px(float(c["min_region_px"]), shape, self.input_shape))

    @property
    def cuts_volumes(self) -> bool:
        """Consecutive slices of one series are cut as one volume (3D hysteresis and regions)."""
        return self.config.get("cut", "slice") == "volume"

    @property
    def test_time_flip(self) -> bool:
        """Average the logits of each slice and of its left-right mirror image."""
        return bool(self.config.get("test_time_flip", False))


def _scaled_px(px_at_input: float, shape: tuple[int, ...], input_shape: tuple[int, int]) -> int:
    """A pixel count on the input grid -> the same area in pixels of an image of ``shape``."""
    return int(round(px_at_input * shape[-2] * shape[-1] / (input_shape[0] * input_shape[1])))


def shipped_names() -> list[str]:
    """Shipped segmentation bundles (zoo folders whose bundle.json says ``"task": "segmentation"``)."""
    from .models.bundle import shipped_names as shipped

    return shipped(TASK)


def load_seg_bundle(name_or_path: str | os.PathLike) -> SegBundle:
    """Load a segmentation bundle by shipped name (``"brain-mri-seg"``) or folder.

    Raises ``SecondreadError`` for an unknown name, a folder that is not a segmentation bundle
    (e.g. a classifier) or weights that do not fit the stored architecture.
    """
    import torch

    from .models.bundle import file_hash, resolve_bundle

    folder = resolve_bundle(name_or_path, TASK)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SecondreadError(folder, f"not a model bundle: {CONFIG_FILE} is missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise SecondreadError(folder / CONFIG_FILE, f"not valid JSON ({type(exc).__name__})") from None
    if not isinstance(config, dict) or config.get("task") != TASK:
        raise SecondreadError(folder, "not a segmentation bundle (bundle.json has no \"task\": \"segmentation\")")
    missing = [k for k in ("name", "architecture", "arch_args", "preprocessing", "input_shape", "threshold",
                           "min_region_px") if k not in config]
    if missing:
        raise SecondreadError(folder / CONFIG_FILE, f"missing key(s): {', '.join(missing)}")
    if config.get("cut", "slice") not in ("slice", "volume"):
        raise SecondreadError(folder / CONFIG_FILE, f"unknown cut {config['cut']!r} (slice or volume)")
    if config.get("cut") == "volume" and not (isinstance(config.get("slice_cut"), dict) and
                                              {"threshold", "min_region_px"} <= set(config["slice_cut"])):
        raise SecondreadError(folder / CONFIG_FILE, "a volume cut needs slice_cut (threshold, min_region_px) for lone slices")
    if config["architecture"] != ARCHITECTURE:
        raise SecondreadError(folder / CONFIG_FILE, f"unknown architecture {config['architecture']!r}")
    model = build_net(config["arch_args"], config.get("members", 1))
    try:
        model.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    except FileNotFoundError:
        raise SecondreadError(folder, f"not a model bundle: {WEIGHTS_FILE} is missing") from None
    except Exception as exc:  # corrupt file or wrong shapes: one line, no traceback
        raise SecondreadError(folder / WEIGHTS_FILE, f"weights do not load ({type(exc).__name__})") from None
    model.eval()
    return SegBundle(path=folder, config=config, model=model, sha256=file_hash(folder))


def _prepare(spec: list[dict], slices: list[np.ndarray]) -> np.ndarray:
    """The stored preprocessing applied to each 2D slice -> float32 ``[N, 1, h, w]``."""
    from .models.bundle import prepare_images

    return prepare_images(spec, slices)


def _logits(model, x: np.ndarray, batch: int = INFER_BATCH, flip: bool = False) -> np.ndarray:
    """Logits ``[N, h, w]`` of the prepared slices ``x`` ``[N, 1, h, w]``; with ``flip`` the mean
    of the logits of each slice and of its mirror image (mirrored back).

    Why the mirror: the brain is roughly left-right symmetric and the model was trained with
    left-right flips, so the two predictions are equally valid and their errors partly cancel."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))
            yb = model(xb)
            if flip:
                yb = 0.5 * (yb + torch.flip(model(torch.flip(xb, dims=[-1])), dims=[-1]))
            out.append(yb.numpy())
    return np.concatenate(out)[:, 0] if out else np.zeros((0, 1, 1), np.float32)


def _upsampled_probability(logit: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Logits resized (bilinear) to the original slice size, then the sigmoid: smoother edges than
    thresholding first and resizing the mask."""
    import cv2

    big = cv2.resize(logit.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return 1.0 / (1.0 + np.exp(-big))


def probability_maps(bundle: SegBundle, slices: list[np.ndarray]) -> list[np.ndarray]:
    """Lesion probability of every pixel of each 2D slice, at that slice's own size."""
    if not slices:
        return []
    logits = _logits(bundle.model, _prepare(bundle.preprocessing, slices), flip=bundle.test_time_flip)
    return [_upsampled_probability(lg, s.shape) for lg, s in zip(logits, slices)]


def remove_specks(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Drop connected components (8-connected) smaller than ``min_px`` pixels."""
    from skimage import measure

    if min_px <= 1 or not mask.any():
        return mask
    labels = measure.label(mask, connectivity=mask.ndim)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def postprocess(prob: np.ndarray, threshold: float, low: float | None = None, min_px: int = 0) -> np.ndarray:
    """Probability map -> boolean mask: pixels at or above ``threshold`` and, with hysteresis
    (``low`` below ``threshold``), the pixels above ``low`` connected to them; then regions smaller
    than ``min_px`` pixels dropped.

    Why hysteresis: a lesion's faint rim is lesion when its core is certain, while a faint blob on
    its own is not; out of fold on LGG (2026-12-04) it raised the Dice on tumour slices by 0.011
    at the same false-positive rate on empty slices.
    """
    from skimage.filters import apply_hysteresis_threshold

    if low is None or low >= threshold:
        mask = prob >= threshold
    else:  # scikit-image compares strictly; the seeds keep the >= of the plain cut
        mask = apply_hysteresis_threshold(prob, low, threshold) | (prob >= threshold)
    return remove_specks(mask, min_px)


def cut(bundle: SegBundle, prob: np.ndarray) -> np.ndarray:
    """Probability map -> boolean mask with the bundle's post-processing (:func:`postprocess`)."""
    return postprocess(prob, *bundle.cut_settings(prob.shape))


def cut_series(bundle: SegBundle, probs: list[np.ndarray]) -> list[np.ndarray]:
    """Masks of consecutive slices of one series: cut as one volume when the bundle says so
    (:attr:`SegBundle.cuts_volumes`; slices of one size), else slice by slice.

    Why a volume: a lesion is a 3D object. Its faint first and last slices are lesion when they
    touch a certain core on the next slice, and a speck with no support above or below is not;
    out of fold on LGG (2026-12-05) 3D hysteresis with a smallest volume raised the Dice on
    tumour slices and lowered the false positives on empty slices together."""
    if bundle.cuts_volumes and len(probs) > 1 and len({p.shape for p in probs}) == 1:
        return list(cut(bundle, np.stack(probs)))
    return [cut(bundle, p) for p in probs]


def regions_of(mask: np.ndarray, spacing: tuple[float, ...] | None = None,
               prob: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Connected components of ``mask`` (2D or 3D) with their measurements, largest first.

    Each region: ``area_px`` (voxels for 3D: ``volume_px``), ``area_mm2`` (``volume_mm3``) when
    ``spacing`` is known, ``longest_diameter_px``/``_mm`` (scikit-image's maximum Feret diameter, on
    the component's convex hull outline, in mm with the spacing), ``centroid`` (``x`` = column,
    ``y`` = row, ``z`` = slice; pixels, top-left origin), ``bbox`` (``x0, y0[, z0]`` inclusive,
    ``x1, y1[, z1]`` exclusive) and ``mean_probability`` when ``prob`` is given.
    """
    from skimage import measure

    labels = measure.label(mask, connectivity=mask.ndim)
    if labels.max() == 0:
        return []
    plain = measure.regionprops(labels)
    scaled = measure.regionprops(labels, spacing=spacing) if spacing is not None else plain
    spacing = None if spacing is None else tuple(float(v) for v in spacing)
    three = mask.ndim == 3
    unit = "volume" if three else "area"
    out = []
    for p, q in zip(plain, scaled):
        c = p.centroid
        centroid = ({"x": c[2], "y": c[1], "z": c[0]} if three else {"x": c[1], "y": c[0]})
        b = p.bbox
        bbox = ({"x0": b[2], "y0": b[1], "z0": b[0], "x1": b[5], "y1": b[4], "z1": b[3]} if three
                else {"x0": b[1], "y0": b[0], "x1": b[3], "y1": b[2]})
        region = {f"{unit}_px": int(p.num_pixels),
                  f"{unit}_{'mm3' if three else 'mm2'}": None if spacing is None else round(float(q.area), 3),
                  "longest_diameter_px": round(_longest_diameter(p, None), 3),
                  "longest_diameter_mm": None if spacing is None else round(_longest_diameter(p, spacing), 3),
                  "centroid": {k: round(float(v), 2) for k, v in centroid.items()},
                  "bbox": {k: int(v) for k, v in bbox.items()}}
        if prob is not None:
            region["mean_probability"] = round(float(prob[labels == p.label].mean()), 4)
        out.append(region)
    out.sort(key=lambda r: -r[f"{unit}_px"])
    for i, r in enumerate(out, 1):
        r["rank"] = i
    return out


def _longest_diameter(region, spacing: tuple[float, ...] | None) -> float:
    """Maximum Feret diameter. 2D: scikit-image's (outline of the convex hull, scaled by the
    spacing). 3D: between voxel centres on the convex hull (scipy's Qhull), since marching cubes
    over a large region gives too many points for all pairwise distances."""
    from scipy.spatial import ConvexHull
    from scipy.spatial.distance import pdist
    from skimage import measure

    if region.image.ndim == 2:
        if spacing is None:
            return float(region.feret_diameter_max)
        return float(measure.regionprops(region.image.astype(np.uint8), spacing=spacing)[0].feret_diameter_max)
    pts = region.coords * np.asarray(spacing or (1.0,) * region.coords.shape[1], dtype=float)
    if len(pts) > 4:
        pts = pts[ConvexHull(pts, qhull_options="QJ").vertices]
    return float(pdist(pts).max()) if len(pts) > 1 else 0.0


def _check_pixels(image: Image) -> None:
    if image.pixels.size == 0:
        raise SecondreadError(image.source or None, "the image is empty")
    if not np.isfinite(image.pixels).all():
        raise SecondreadError(image.source or None, "the image contains non-finite pixel values")
    if min(image.shape[-2:]) < 8:
        raise SecondreadError(image.source or None, f"the image is too small to segment ({image.shape})")


def segment_image(image: Image, bundle: SegBundle) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Segment one image: ``(mask, regions)``.

    Parameters
    ----------
    image : Image
        2D ``[rows, cols]`` or a 3D volume ``[slices, rows, cols]`` (its slices segmented as one
        series, :func:`segment_series`; the regions are then 3D components with volumes).
    bundle : SegBundle
        From :func:`load_seg_bundle`.

    Returns
    -------
    mask : numpy.ndarray of bool
        At the image's original shape.
    regions : list of dict
        :func:`regions_of` the mask, with the image's spacing (mm fields ``None`` when unknown).
    """
    return segment_series([image], bundle)[0]


def segment_series(images: list[Image], bundle: SegBundle) -> list[tuple[np.ndarray, list[dict[str, Any]]]]:
    """Segment consecutive 2D slices of one series together: ``(mask, regions)`` per slice.

    With a bundle that cuts volumes (:func:`cut_series`) the slices' probability maps are cut as
    one stack, so a slice's mask depends on its neighbours; regions stay per slice. A 3D image
    is a series on its own (one mask, 3D regions).
    """
    for image in images:
        _check_pixels(image)
    if len(images) > 1 and any(im.pixels.ndim == 3 for im in images):
        return [segment_series([im], bundle)[0] for im in images]
    slices = [s for im in images for s in (im.pixels if im.pixels.ndim == 3 else [im.pixels])]
    probs = probability_maps(bundle, slices)
    masks = cut_series(bundle, probs)
    if images[0].pixels.ndim == 3:  # one volume: its regions are 3D components
        mask = np.stack(masks)
        return [(mask, regions_of(mask, images[0].spacing, np.stack(probs)))]
    return [(m, regions_of(m, im.spacing, p)) for m, im, p in zip(masks, images, probs)]


# ============================================================================ scoring
def score_pair(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...] | None = None) -> dict[str, Any]:
    """Dice (MONAI, both empty = 1) and HD95 (MONAI; ``None`` unless both masks are non-empty)."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))[None, None]
    t = torch.from_numpy(np.ascontiguousarray(truth, dtype=np.float32))[None, None]
    dice = float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0])
    hd95 = None
    if pred.any() and truth.any():
        with warnings.catch_warnings():  # MONAI 1.5 warns about an argument it passes to itself
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
            hd95 = float(compute_hausdorff_distance(p, t, include_background=True, percentile=95,
                                                    spacing=list(spacing) if spacing else None)[0, 0])
    return {"dice": dice, "hd95": hd95, "truth_pixels": int(truth.sum()), "pred_pixels": int(pred.sum())}


def _cluster_ci(values: np.ndarray, groups: list[str], seed: int = 0) -> list[float] | None:
    """Percentile 95 % CI of a mean of ``values``, resampling the ``groups`` (patients) whole."""
    from scipy import stats

    keys = sorted(set(groups))
    if len(keys) < 2 or len(values) == 0:
        return None
    g = np.asarray(groups)
    sums = np.array([values[g == k].sum() for k in keys], dtype=float)
    counts = np.array([(g == k).sum() for k in keys], dtype=float)
    res = stats.bootstrap((sums, counts), lambda s, n: s.sum() / n.sum(), paired=True, vectorized=False,
                          n_resamples=BOOTSTRAP_RESAMPLES, method="percentile", confidence_level=0.95,
                          random_state=np.random.default_rng(seed))
    return [round(float(res.confidence_interval.low), 4), round(float(res.confidence_interval.high), 4)]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 4) if values else None


def patient_dice(per_image: list[dict], masks: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """3D Dice per patient: every slice of the patient stacked (MONAI, both empty = 1)."""
    out = {}
    for patient in sorted({r["patient"] for r in per_image if r["patient"]}):
        ids = [r["id"] for r in per_image if r["patient"] == patient and r["id"] in masks]
        if not ids or len({masks[i][0].shape for i in ids}) != 1:
            continue
        pred = np.stack([masks[i][0] for i in ids])
        truth = np.stack([masks[i][1] for i in ids])
        out[patient] = round(score_pair(pred, truth)["dice"], 4)
    return out


def summarise(per_image: list[dict], per_patient: dict[str, float] | None = None) -> dict[str, Any]:
    """Headline figures with patient-bootstrap 95 % CIs (see the module docstring for conventions)."""
    scored = [r for r in per_image if r.get("dice") is not None]
    tumour = [r for r in scored if r["tumour"]]
    empty = [r for r in scored if not r["tumour"]]
    groups = lambda rows: [r["patient"] or r["id"] for r in rows]
    dice_t = np.array([r["dice"] for r in tumour], dtype=float)
    fp = np.array([r["pred_pixels"] > 0 for r in empty], dtype=float)
    with_hd = [r for r in tumour if r["hd95"] is not None]
    hd = np.array([r["hd95"] for r in with_hd], dtype=float)
    out: dict[str, Any] = {
        "images": len(per_image), "scored_images": len(scored), "tumour_images": len(tumour),
        "empty_images": len(empty), "patients": len({r["patient"] for r in scored if r["patient"]}),
        "dice_tumour": _mean(dice_t), "dice_tumour_ci95": _cluster_ci(dice_t, groups(tumour)),
        "dice_tumour_median": round(float(np.median(dice_t)), 4) if len(dice_t) else None,
        "hd95_tumour": _mean(hd), "hd95_tumour_ci95": _cluster_ci(hd, groups(with_hd)),
        "hd95_tumour_median": round(float(np.median(hd)), 3) if len(hd) else None,
        "missed_tumour_images": int(sum(r["pred_pixels"] == 0 for r in tumour)),
        "fp_rate_empty": _mean(fp), "fp_rate_empty_ci95": _cluster_ci(fp, groups(empty)),
        "dice_all_images": _mean([r["dice"] for r in scored]),
    }
    if per_patient:
        vals = np.array(list(per_patient.values()), dtype=float)
        out["dice_patient_3d"] = _mean(vals)
        out["dice_patient_3d_ci95"] = _cluster_ci(vals, list(per_patient))
    return out


def selection_score(dice_tumour: float | None, fp_rate: float | None) -> float:
    """What validation maximises: half the mean Dice on tumour slices, half the share of empty
    slices left empty (so neither over- nor under-segmenting wins)."""
    return 0.5 * (dice_tumour or 0.0) + 0.5 * (1.0 - (fp_rate or 0.0))


# ============================================================================ data sets on disk
_PATIENT = re.compile(r"^(TCGA_[A-Z0-9]+_[A-Z0-9]+)")


def _is_image(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(IMAGE_SUFFIXES) and not re.search(r"_mask(\.|$)", name) \
        and not name.startswith(".")


def find_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` except expert masks (``*_mask.*``), sorted naturally."""
    key = lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.relative_to(folder).as_posix())]
    return sorted((p for p in folder.rglob("*") if _is_image(p)), key=key)


def expert_mask_path(image_path: Path) -> Path | None:
    """The expert mask beside an image: ``X_flair.png`` -> ``X_mask.png``; ``X.tif`` -> ``X_mask.tif``."""
    name = image_path.name
    stem, _, ext = name.partition(".")
    candidates = [stem[:-len("_flair")] + "_mask" if stem.endswith("_flair") else stem + "_mask"]
    for c in candidates:
        for suffix in (f".{ext}", ".png", ".tif"):
            p = image_path.with_name(c + suffix)
            if p.is_file():
                return p
    return None


def patient_of(rel: Path) -> str | None:
    """The TCGA case of a slice (``TCGA_CS_4941``) from its folder or file name, else ``None``."""
    for part in rel.parts:
        m = _PATIENT.match(part)
        if m:
            return m.group(1)
    return None


def read_slice(path: Path) -> Image:
    """Read an input image; an RGB Kaggle LGG ``.tif`` gives its FLAIR channel, not its luminance."""
    from .io import load_image

    image = load_image(path)
    if path.suffix.lower() in (".tif", ".tiff") and str(image.metadata.get("colour", "")).startswith("luminance of RGB"):
        from PIL import Image as PILImage

        with PILImage.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        image = Image(pixels=rgb[..., FLAIR_CHANNEL], modality="MR", source=str(path),
                      metadata=dict(image.metadata, colour=f"channel {FLAIR_CHANNEL} (FLAIR) of RGB"))
    return image


def read_expert_mask(path: Path) -> np.ndarray:
    from .io.raster import read_raster

    return read_raster(path).pixels > 127


def _split_filter(split: str, folder: Path) -> Callable[[str | None], bool]:
    """Which patients a split keeps. ``test`` = patients in neither saved ``train`` nor ``val`` (the
    withheld LGG patients, once an evaluator adds them to the folder)."""
    if split == "all":
        return lambda patient: True
    from .datasets.splits import patients_in

    if split == "test":
        seen = patients_in("lgg", "train") | patients_in("lgg", "val")
        return lambda patient: patient is not None and patient not in seen
    keep = patients_in("lgg", split)
    return lambda patient: patient in keep


def patients_seen_in_training(bundle: SegBundle, patients: set[str]) -> list[str]:
    """Which of ``patients`` trained this bundle: scoring them measures memory, not skill, so the
    command says so and points at the bundle's out-of-fold figures. The bundle lists its training
    patients (older bundles only the split: ``all`` = the saved train and val patients)."""
    training = bundle.config.get("training", {})
    if training.get("dataset") != "lgg" or not patients:
        return []
    if "patient_ids" in training:
        return sorted(patients & set(training["patient_ids"]))
    from .datasets.splits import patients_in

    used = training.get("split_used", "train")
    seen = patients_in("lgg", "train") | patients_in("lgg", "val") if used == "all" else patients_in("lgg", used)
    return sorted(patients & seen)


def write_mask_png(path: Path, mask: np.ndarray) -> Path:
    """Write ``mask`` as an 8-bit PNG of 0/255 (temp file then rename: never half a file)."""
    from PIL import Image as PILImage

    from .atomic import replacing

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:
            PILImage.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(tmp, format="PNG")
    except OSError as exc:
        raise SecondreadError(path, f"cannot write the mask ({exc.strerror or type(exc).__name__})") from None
    return path


def mask_name(rel: Path) -> Path:
    """Where a mask goes: the image's relative path, as PNG (``x.png`` keeps its name, ``x.dcm`` ->
    ``x.png``); 3D volumes are written as PNG per slice is not done: see :func:`_write_mask`."""
    name = rel.name
    for suffix in (".nii.gz", ".nii", ".dcm", ".tiff", ".tif", ".jpeg", ".jpg", ".bmp", ".pgm"):
        if name.lower().endswith(suffix):
            return rel.with_name(name[: -len(suffix)] + ".png")
    return rel


def _write_mask(out: Path, mask: np.ndarray) -> list[str]:
    """2D: one PNG. 3D: one PNG per slice, ``<name>_z<k>.png`` (PNG holds one plane)."""
    if mask.ndim == 2:
        return [str(write_mask_png(out, mask))]
    return [str(write_mask_png(out.with_name(f"{out.stem}_z{k:03d}.png"), m)) for k, m in enumerate(mask)]


_SLICE_NUMBER = re.compile(r"_(\d+)(?:_flair)?$")


def slice_number(rel: Path) -> int | None:
    """The slice number in an LGG-style name (``<case>_<n>_flair.png``, Kaggle ``<case>_<n>.tif``)."""
    m = _SLICE_NUMBER.search(rel.name.split(".")[0])
    return int(m.group(1)) if m else None


def series_runs(keys: list[tuple[str | None, int | None]]) -> list[list[int]]:
    """Indices of ``(patient, slice number)`` keys grouped into runs of consecutive slices of one
    patient, each run in slice order and the runs in the order of their first index; a key without
    a patient or a number, or a slice whose neighbour is absent, starts a run of its own.

    Why runs and not patients: a volume cut (:func:`cut_series`) joins a slice to the slices above
    and below it, which is only right when nothing lies between them."""
    by_patient: dict[str, list[int]] = {}
    runs: list[list[int]] = []
    for i, (patient, number) in enumerate(keys):
        if patient is None or number is None:
            runs.append([i])
        else:
            by_patient.setdefault(patient, []).append(i)
    for members in by_patient.values():
        members.sort(key=lambda i: keys[i][1])
        run = [members[0]]
        for i in members[1:]:
            if keys[i][1] == keys[run[-1]][1] + 1:
                run.append(i)
            else:
                runs.append(run)
                run = [i]
        runs.append(run)
    return sorted(runs, key=min)


def _read_checked(path: Path) -> Image:
    image = read_slice(path)
    _check_pixels(image)
    return image


def _segment_run(bundle: SegBundle, run: list[tuple[Path, Path]], masks_out: Path | None,
                 keep: dict, failed: list[str]) -> list[dict[str, Any]]:
    """One series read, segmented together (:func:`segment_series`) and scored slice by slice. An
    unreadable slice is reported in ``failed`` and splits the series there; the rest go on."""
    from itertools import groupby

    read: list[tuple[Path, Path, Image] | None] = []
    for path, rel in run:
        try:
            read.append((path, rel, _read_checked(path)))
        except SecondreadError as exc:
            failed.append(exc.message)
            read.append(None)
    rows = []
    for readable, part in groupby(read, key=lambda r: r is not None):
        part = list(part)
        if not readable:
            continue
        for (path, rel, image), (mask, regions) in zip(part, segment_series([im for *_, im in part], bundle)):
            try:
                rows.append(_row(path, rel, image, mask, regions, masks_out, keep))
            except SecondreadError as exc:
                failed.append(exc.message)
    return rows


def _row(path: Path, rel: Path, image: Image, mask: np.ndarray, regions: list[dict], masks_out: Path | None,
         keep: dict | None) -> dict[str, Any]:
    """One image's row: its mask written, its regions, and its scores against an expert mask beside it."""
    patient = patient_of(rel)
    row: dict[str, Any] = {"id": rel.as_posix(), "patient": patient, "shape": list(mask.shape),
                           "regions": regions, "pred_pixels": int(mask.sum()), "dice": None, "hd95": None,
                           "tumour": None, "truth_pixels": None}
    if masks_out is not None:
        row["mask_files"] = _write_mask(masks_out / mask_name(rel), mask)
    truth_path = expert_mask_path(path)
    if truth_path is not None:
        truth = read_expert_mask(truth_path)
        if truth.shape != mask.shape:
            raise SecondreadError(truth_path, f"expert mask {truth.shape} does not match the image {mask.shape}")
        row.update(score_pair(mask, truth, image.spacing), tumour=bool(truth.any()))
        if keep is not None:
            keep[row["id"]] = (mask, truth)
    return row


def write_predictions(path: str | os.PathLike, per_image: list[dict]) -> Path:
    """CSV ``id,dice,hd95,patient,tumour,truth_pixels,pred_pixels,regions`` (blank = undefined)."""
    from .atomic import write_csv

    fmt = lambda v, d: "" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(int(v)) if isinstance(v, bool) else str(v))
    rows = ([r["id"], fmt(r["dice"], 4), fmt(r["hd95"], 3), r["patient"] or "", fmt(r["tumour"], 0),
             fmt(r["truth_pixels"], 0), r["pred_pixels"], len(r["regions"])] for r in per_image)
    return write_csv(path, CSV_HEADER, rows)


def segment_dataset(model: str | os.PathLike, data: str | os.PathLike, split: str = "all",
                    masks_out: str | os.PathLike | None = None, predictions: str | os.PathLike | None = None,
                    bundle: SegBundle | None = None) -> dict[str, Any]:
    """Segment a folder laid out like ``mri/lgg`` (or one image file) and score against expert masks.

    Parameters
    ----------
    model : name or folder of a segmentation bundle.
    data : a folder (searched recursively for images; ``*_mask.*`` files are the experts' masks
        beside them) or a single image file (PNG/TIF/DICOM/NIfTI).
    split : ``all``, ``train``, ``val`` (the saved LGG per-patient split), ``test`` (patients in
        neither) or ``fold<k>``; anything but ``all`` needs TCGA patient folders.
    masks_out : folder for the predicted masks: PNG 0/255 at each image's size, at the image's path
        relative to ``data`` (non-PNG inputs get a ``.png`` suffix; a single file goes to
        ``masks_out/<name>.png``).
    predictions : CSV of per-image rows (:func:`write_predictions`).

    Returns
    -------
    dict with ``summary`` (:func:`summarise`), ``per_patient_dice``, ``per_image`` rows, ``failed``
    (one line per unreadable image; the others are still done) and timing.
    """
    bundle = bundle or load_seg_bundle(model)
    root = Path(data)
    if not root.exists():
        raise SecondreadError(root, "no such file or folder")
    out = None if masks_out is None else Path(masks_out)
    if out is not None and out.exists() and not out.is_dir():
        raise SecondreadError(out, "--masks-out must be a folder")
    if out is not None and root.is_dir() and out.resolve() == root.resolve():
        raise SecondreadError(out, "--masks-out must not be the data folder (masks would replace the images)")
    if root.is_file():
        items = [(root, Path(root.name))]
    else:
        found = find_images(root)
        if not found:
            raise SecondreadError(root, "no images found (expected PNG/TIF/DICOM/NIfTI slices, masks as *_mask.png)")
        items = [(p, p.relative_to(root)) for p in found]
    keep_patient = _split_filter(split, root)
    if split != "all" and not any(patient_of(rel) for _, rel in items):
        raise SecondreadError(root, f"--split {split} needs TCGA patient folders (like mri/lgg); use --split all")
    items = [(p, rel) for p, rel in items if keep_patient(patient_of(rel))]
    if not items:
        raise SecondreadError(root, f"no images of split {split!r} here"
                                    + (" (the LGG test patients are withheld)" if split == "test" else ""))
    per_image, failed, masks = [], [], {}
    start = time.perf_counter()
    for run in series_runs([(patient_of(rel), slice_number(rel)) for _, rel in items]):
        per_image += _segment_run(bundle, [items[i] for i in run], out, masks, failed)
    seconds = time.perf_counter() - start
    if not per_image and failed:
        raise SecondreadError(root, f"no image could be segmented ({len(failed)} failed; first: {failed[0]})")
    if predictions is not None:
        write_predictions(predictions, per_image)
    per_patient = patient_dice(per_image, masks)
    seen = patients_seen_in_training(bundle, {r["patient"] for r in per_image if r["patient"] and r["tumour"] is not None})
    return {"model": bundle.name, "bundle_sha256": bundle.sha256, "data": str(root), "split": split,
            "patients_seen_in_training": len(seen), "bundle_metrics": bundle.config.get("metrics"),
            "threshold": bundle.threshold, "low_threshold": bundle.low_threshold,
            "min_region_px_input": bundle.config["min_region_px"], "cut": "volume" if bundle.cuts_volumes else "slice",
            "slice_cut": bundle.config.get("slice_cut"),
            "test_time_flip": bundle.test_time_flip,
            "summary": summarise(per_image, per_patient), "per_patient_dice": per_patient,
            "per_image": per_image, "failed": failed, "masks_out": None if out is None else str(out),
            "predictions": None if predictions is None else str(predictions),
            "seconds": round(seconds, 2), "seconds_per_image": round(seconds / max(1, len(items)), 4),
            "conventions": "Dice: both empty = 1 (headline on tumour slices only); HD95 only where both masks "
                           "are non-empty (mm if spacing known, else px); fp_rate_empty = share of slices "
                           "without tumour given any predicted pixel; CIs: bootstrap over patients",
            "disclaimer": DISCLAIMER}


def _fmt_ci(m: dict, key: str, digits: int = 3) -> str:
    v, ci = m.get(key), m.get(f"{key}_ci95")
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}" + (f" (95% CI {ci[0]:.{digits}f}-{ci[1]:.{digits}f})" if ci else "")


# ============================================================================ command line
def _summary_lines(result: dict) -> list[str]:
    s = result["summary"]
    lines = [f"{result['model']} on {result['data']} (split {result['split']}): {s['images']} image(s), "
             f"{len(result['failed'])} failed, {result['seconds_per_image']:.3f} s/image"]
    if s["scored_images"]:
        lines += [f"  Dice on tumour slices   {_fmt_ci(s, 'dice_tumour')}  (n={s['tumour_images']}, "
                  f"missed {s['missed_tumour_images']})",
                  f"  HD95 on tumour slices   {_fmt_ci(s, 'hd95_tumour', 2)}  (px; mm where the spacing is known)",
                  f"  FP rate, empty slices   {_fmt_ci(s, 'fp_rate_empty')}  (n={s['empty_images']})",
                  f"  per-patient 3D Dice     {_fmt_ci(s, 'dice_patient_3d')}  ({s['patients']} patients)"]
    else:
        lines.append("  no expert masks found beside the images: nothing scored")
        for r in result["per_image"][:20]:
            lines.append(f"  {r['id']}: {len(r['regions'])} region(s), {r['pred_pixels']} px")
    if result.get("patients_seen_in_training"):
        m = result.get("bundle_metrics") or {}
        lines.append(f"  note: {result['patients_seen_in_training']} of these patients trained this model, so these "
                     f"figures are in-sample; its {m.get('split', 'held-out')} Dice on tumour slices is "
                     f"{_fmt_ci(m, 'dice_tumour')}")
    if result["masks_out"]:
        lines.append(f"  masks written under {result['masks_out']}")
    return lines


def cmd_segment(args: argparse.Namespace) -> int:
    """``secondread segment``: masks for a folder or a file, scored where expert masks exist."""
    result = segment_dataset(args.model, args.data, split=args.split, masks_out=args.masks_out,
                             predictions=args.predictions)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(_summary_lines(result)))
    for line in result["failed"]:
        print(f"secondread: error: {line}", file=sys.stderr)
    return 1 if result["failed"] else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``secondread segment`` on the top-level command line."""
    s = sub.add_parser("segment", help="lesion masks and regions, scored against expert masks (Dice, HD95)")
    s.add_argument("--model", required=True, help="segmentation bundle name or folder (brain-mri-seg)")
    s.add_argument("--data", required=True, metavar="PATH", help="a folder laid out like mri/lgg, or one image file")
    s.add_argument("--split", default="all", help="all, train, val, test (patients in neither) or fold<k>")
    s.add_argument("--masks-out", metavar="DIR", help="write each mask as PNG 0/255 at the image's relative path")
    s.add_argument("--predictions", metavar="OUT.csv", help="per-image rows id,dice,hd95,...")
    s.add_argument("--json", action="store_true", help="print the full result as JSON")
    s.set_defaults(func=cmd_segment)

"""Train a detection model on a MedMNIST split and write it as a model bundle.

Why: the shipped bundles must be rebuildable by anyone from the public data (``make models``), and
a figure in a model card is only trustworthy if the run that produced it is deterministic and used
the training split only. Everything is seeded, the preprocessing is the bundle's own declarative
spec applied with ``preprocess.apply``, and the validation split only selects (epoch, temperature,
thresholds) -- it is never trained on.

Each task is one row of :data:`DATASETS`: bundle name, the finding and which data set label means
it (``positive_class``: BreastMNIST's finding *malignant* is its label 0), the architecture, the
augmentation the modality tolerates and the optimiser settings. Hyper-parameters of the small sets
were chosen by cross-validation on the training split (:func:`cross_validate`), not on validation.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .errors import SecondreadError
from .evaluate import binary_metrics, expected_calibration_error, fit_temperature, medmnist_auc, operating_points
from .io.medmnist import load_split, locate, md5sum
from .models.bundle import batched_logits, calibrated, prepare_images, save_bundle
from .models.nets import build, torch_threads

THREADS = 2
RELIABILITY_FILE = "reliability.png"
MEDMNIST_CITATION = (
    "Jiancheng Yang, Rui Shi, Donglai Wei, Zequan Liu, Lin Zhao, Bilian Ke, Hanspeter Pfister, Bingbing Ni. "
    "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image classification. "
    "Scientific Data 10, 41 (2023). doi:10.1038/s41597-022-01721-8")
_VAL_LIMIT = ("Figures are on the validation split, which also chose the epoch, temperature and "
              "thresholds; the official test split was withheld and not used.")


# --- augmentation: what each modality tolerates -------------------------------------------------

def _uniform(n: int, gen: torch.Generator) -> Callable[[float, float], torch.Tensor]:
    return lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=gen)


def _affine_2d(x: torch.Tensor, gen: torch.Generator, *, flip: bool, degrees: float, scale: float,
               shift_px: float, gain: float, masks: torch.Tensor | None = None):
    """Random 2D affine (optional left-right flip, rotation +-``degrees``, scale +-``scale``, shift
    +-``shift_px``) then gain/offset +-``gain``: the one recipe every 2D modality uses with its own
    bounds. The random draws come in a fixed order (flip, angle, scale, shifts, gain, offset), so a
    seeded run gives the same batches, and so the same weights, as before.

    ``masks`` (``[N, 1, H, W]`` lesion fractions, for mask-supervised recipes) are moved with the
    same affine (no intensity change) and returned with the images: ``(images, masks)``."""
    n, _, h, w = x.shape
    u = _uniform(n, gen)
    mirror = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if flip else 1.0
    angle, zoom = u(-degrees, degrees) * math.pi / 180, u(1 - scale, 1 + scale)
    tx, ty = u(-shift_px, shift_px) * 2 / w, u(-shift_px, shift_px) * 2 / h
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * mirror, -sin, tx], 1), torch.stack([sin * mirror, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out * u(1 - gain, 1 + gain).view(n, 1, 1, 1) + u(-gain, gain).view(n, 1, 1, 1)
    if masks is None:
        return out
    return out, F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light chest-radiograph augmentation: rotation +-10 deg, shift +-2 px, scale +-5 %, and
    contrast/brightness jitter. No left-right flip: laterality (heart on the left) matters."""
    return _affine_2d(x, gen, flip=False, degrees=10, scale=0.05, shift_px=2, gain=0.1)


def _augment_ultrasound(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Breast ultrasound: left-right flip (a breast lesion has no laterality in the image, and the
    probe may face either way), rotation +-15 deg, scale +-10 %, shift +-2 px, gain/contrast +-15 %.
    No up-down flip: depth (skin at the top, shadowing below a lesion) carries meaning."""
    return _affine_2d(x, gen, flip=True, degrees=15, scale=0.1, shift_px=2, gain=0.15)


def _augment_adrenal_3d(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Adrenal shape volumes ``[N, 1, slices, rows, cols]``: mirror along the columns (the
    left-right axis), rotation +-10 deg in the axial plane, scale +-5 %, shift +-2 voxels.

    Why a left-right mirror is allowed here although laterality matters for chest films: each
    AdrenalMNIST3D volume is one gland cropped around itself, and the set holds left *and* right
    glands, so a mirrored left gland is a plausible right gland with the same label. Cranio-caudal
    and antero-posterior flips would produce anatomy that does not occur, so they are not used; no
    intensity jitter either, since the volumes are binary shape masks.
    """
    n, _, d, h, w = x.shape
    u = _uniform(n, gen)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    angle, scale = u(-10, 10) * math.pi / 180, u(0.95, 1.05)
    tx, ty, tz = u(-2, 2) * 2 / w, u(-2, 2) * 2 / h, u(-2, 2) * 2 / d
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zero, inv = torch.zeros(n), 1 / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, zero, tx], 1),   # x: columns
                         torch.stack([sin * flip, cos, zero, ty], 1),    # y: rows
                         torch.stack([zero, zero, inv, tz], 1)], 1)      # z: slices
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _augment_mri(x: torch.Tensor, gen: torch.Generator, masks: torch.Tensor | None = None):
    """Axial brain MRI slices: left-right flip (tumour *presence* has no side), rotation +-10 deg,
    scale +-10 %, shift +-3 px, and intensity gain/offset +-10 % (FLAIR has no absolute scale).
    No up-down flip: anterior-posterior orientation is fixed in these slices. ``masks`` (the
    experts' outlines of mask-supervised recipes) follow the same geometry."""
    return _affine_2d(x, gen, flip=True, degrees=10, scale=0.1, shift_px=3, gain=0.1, masks=masks)


AUGMENTATIONS: dict[str, tuple[Callable, str]] = {
    "chest_xray": (_augment, "rotation +-10 deg, shift +-2 px, scale +-5 %, contrast/brightness +-10 %; no flip"),
    "ultrasound": (_augment_ultrasound, "left-right flip, rotation +-15 deg, scale +-10 %, shift +-2 px, "
                                        "gain/contrast +-15 %; no up-down flip"),
    "adrenal_3d": (_augment_adrenal_3d, "left-right (column) mirror, axial rotation +-10 deg, scale +-5 %, "
                                        "shift +-2 voxels; no cranio-caudal or antero-posterior flip"),
    "mammography": (_augment_mri, "left-right flip (a left breast mirrored is a plausible right breast; "
                                  "abnormality has no side), rotation +-10 deg, scale +-10 %, shift +-3 px, "
                                  "intensity gain/offset +-10 %; no up-down flip"),
    "mri": (_augment_mri, "left-right flip, rotation +-10 deg, scale +-10 %, shift +-3 px, "
                          "intensity gain/offset +-10 %; no up-down flip"),
}


# --- the tasks ------------------------------------------------------------------------------------

DATASETS: dict[str, dict[str, Any]] = {
    "pneumoniamnist": {
        "name": "pneumonia", "finding": "pneumonia", "positive_label": "pneumonia", "positive_class": 1,
        "modalities": ["CR", "DX", "DR", "RG", "OT"],
        "labels": {"0": "normal", "1": "pneumonia"},
        "architecture": "seed_cnn", "arch_args": {"in_channels": 1, "input_size": 28, "hidden": 512},
        "augmentation": "chest_xray",
        "optim": {"epochs": 30, "batch_size": 128, "lr": 1e-3, "patience": 5, "weight_decay": 0.0,
                  "schedule": "constant"},
        "anchors": {"ResNet-50 (224)": [0.962, 0.884], "AutoML Vision": [0.991, 0.946]},
        "card": {
            "intended_use": ("Decision support for research: a second reader that flags paediatric chest "
                             "radiographs that may show pneumonia for a qualified reader to review. Not a "
                             "diagnosis and not a medical device."),
            "data": ("PneumoniaMNIST (MedMNIST v2): 5,856 paediatric chest X-rays (Kermany et al. 2018, "
                     "Guangzhou Women and Children's Medical Center) resized to 28 x 28 px; label 0 normal, "
                     "1 pneumonia (bacterial and viral merged)."),
            "licence": "CC BY 4.0 (MedMNIST v2)",
            "citation": MEDMNIST_CITATION,
            "limits": [
                "Trained at 28 x 28 px: fine detail (small consolidations, lines, tubes) is invisible to it.",
                "Paediatric patients (1-5 years) from one hospital (Guangzhou); adults and other sites, "
                "scanners and populations are untested.",
                "About 3:1 pneumonia to normal in training; predictive values change with prevalence.",
                "Only pneumonia versus normal: other findings are neither detected nor excluded.",
                _VAL_LIMIT,
            ],
        },
    },
    # Width chosen by 3-fold stratified cross-validation on the training split (60 epochs, cosine):
    # mean held-out AUC 0.837 at width 16, 0.865 at width 32; 90 epochs at width 32 gave 0.858.
    "breastmnist": {
        "name": "breast-us-28", "finding": "malignant", "positive_label": "malignant", "positive_class": 0,
        "modalities": ["US", "OT"],
        "labels": {"0": "malignant", "1": "normal or benign"},
        "architecture": "compact_resnet",
        "arch_args": {"in_channels": 1, "spatial_dims": 2, "width": 32, "blocks": 1, "dropout": 0.2},
        "augmentation": "ultrasound",
        "optim": {"epochs": 60, "batch_size": 32, "lr": 2e-3, "patience": 20, "weight_decay": 1e-4,
                  "schedule": "cosine"},
        "anchors": {"ResNet-18 (28)": [0.901, 0.863], "AutoML Vision": [0.919, 0.861]},
        "card": {
            "intended_use": ("Decision support for research: a second reader that estimates the probability "
                             "that a breast ultrasound image shows a malignant lesion, for a qualified reader "
                             "to review. Not a diagnosis and not a medical device."),
            "data": ("BreastMNIST (MedMNIST v2): 780 breast ultrasound images of women aged 25-75 (BUSI, "
                     "Al-Dhabyani et al. 2020, Baheya Hospital, Cairo) resized to 28 x 28 px; MedMNIST label 0 "
                     "malignant, 1 normal or benign. The finding is *malignant* (label 0), so the bundle's "
                     "probability is of malignancy; its AUC equals MedMNIST's AUC on the label-1 score."),
            "licence": "CC BY 4.0 (MedMNIST v2)",
            "citation": MEDMNIST_CITATION,
            "limits": [
                "Trained at 28 x 28 px on 546 images: lesion margins and echo texture are barely resolved.",
                "One hospital and one scanner family (BUSI); other sites and machines are untested.",
                "Normal and benign are merged: the model does not separate them.",
                "Only 78 validation images (21 malignant): the confidence intervals are wide.",
                _VAL_LIMIT,
            ],
        },
    },
    # 3D at 28^3 costs ~40x a 2D image per step: a stride-2 stem (features at 14^3, 7^3, 4^3) keeps
    # an epoch of 1,188 volumes to ~10-20 s on 2 cores; no cross-validation was affordable here.
    "adrenalmnist3d": {
        "name": "adrenal-ct-3d", "finding": "adrenal hyperplasia", "positive_label": "hyperplasia",
        "modalities": ["CT", "OT"], "input_kind": "binary mask",
        "positive_class": 1, "labels": {"0": "normal", "1": "hyperplasia"},
        "architecture": "compact_resnet",
        "arch_args": {"in_channels": 1, "spatial_dims": 3, "width": 16, "blocks": 1, "dropout": 0.2,
                      "stem_stride": 2},
        "augmentation": "adrenal_3d",
        "optim": {"epochs": 40, "batch_size": 32, "lr": 2e-3, "patience": 12, "weight_decay": 1e-4,
                  "schedule": "cosine"},
        "anchors": {"ResNet-18 + ACS (28)": [0.839, 0.754], "auto-sklearn": [0.828, 0.802]},
        "card": {
            "intended_use": ("Decision support for research: a second reader that estimates the probability "
                             "that an adrenal gland's 3D shape (segmented from abdominal CT) shows "
                             "hyperplasia, for a qualified reader to review. Not a diagnosis and not a "
                             "medical device."),
            "data": ("AdrenalMNIST3D (MedMNIST v2): 1,584 left and right adrenal glands segmented from "
                     "abdominal CT of 1,584 patients (Zhongshan Hospital, Fudan University), each a binary "
                     "shape mask centre-cropped to 64 mm and resized to 28 x 28 x 28 voxels; label 0 normal, "
                     "1 hyperplasia. Input is the mask volume [slices, rows, cols], not CT intensities."),
            "licence": "CC BY 4.0 (MedMNIST v2)",
            "citation": MEDMNIST_CITATION,
            "limits": [
                "Reads a segmentation mask of one adrenal gland at 28^3 voxels (about 2.3 mm), not the CT "
                "itself: it needs a gland segmentation upstream and sees no density or texture.",
                "One hospital; other populations, scanners and segmentation tools are untested.",
                "About 1:3.6 hyperplasia to normal; predictive values change with prevalence.",
                "Only 98 validation volumes (22 hyperplasia): the confidence intervals are wide.",
                _VAL_LIMIT,
            ],
        },
    },
}


# Folder data sets (``"kind": "folder"``) are read through their loader module in
# :mod:`secondread.datasets` with the saved per-patient split; ``input_size`` is the side the
# preprocessing resizes to (the npz rows use the MedMNIST 28 px default).
# LGG recipe chosen on the validation patients (no test patients here). Image-label CNNs
# (compact_resnet, 64 px, stride-2 stem): width 16, 14 epochs, lr 2e-3 gave val AUC 0.908; 96 px /
# 20 epochs 0.904; percentile (1-99.5) normalisation 0.918; width 24, 24 epochs, lr 3e-3 0.939 (the
# previous row). The experts' masks of the training patients then supervised a lesion map
# (LesionMapNet: image logit = mean of the map's top-k pixel logits, loss = image BCE + pixel
# Dice/BCE): 64 px, 4 levels, top 8, batch 32, lr 3e-3, 16 epochs gave 0.949 (epoch 7; 0.939 at
# the end); 128 px, 5 levels (channels 8-128, as brain-mri-seg), top 32, 20 epochs 0.956; the same
# with brain-mri-seg's optimisation (batch 8, lr 2e-3: four times the steps; this row) 0.977 (epoch 18).
# top_k = 32 because the shipped brain-mri-seg's own map ranks val slices best with its top 32
# logits (AUC 0.980 vs 0.977 for the single maximum): also a look at val. Four looks at val in all
# for this design, so its val figures are optimistic.
DATASETS["lgg"] = {
    "name": "brain-mri-tumour", "finding": "brain tumour", "positive_label": "tumour", "positive_class": 1,
    "kind": "folder", "loader": "lgg", "input_size": 128,
    "modalities": ["MR", "OT"],
    # the map shown to a reader: Grad-CAM at the lesion map's features *is* the lesion map above the
    # head's bias (the pooled gradient of each channel is its head weight; tests/test_lesion_map.py),
    # so it is chosen by construction, not by a look at any split
    "explain": {"layer": "features", "method": "gradcam",
                "chosen": "by construction: Grad-CAM at the U-Net's output features equals the model's own "
                          "lesion map (max(0, logit - bias)); Grad-CAM++ there weights channels differently"},
    "labels": {"0": "no tumour", "1": "tumour"},
    "architecture": "lesion_map", "supervision": "masks",
    "arch_args": {"in_channels": 1, "width": 8, "levels": 5, "num_res_units": 1, "map_channels": 8, "top_k": 32},
    "augmentation": "mri",
    "optim": {"epochs": 20, "batch_size": 8, "lr": 2e-3, "patience": 20, "weight_decay": 1e-4,
              "schedule": "cosine"},
    "anchors": {},
    "card": {
        "intended_use": ("Decision support for research: a second reader that estimates the probability that "
                         "an axial brain FLAIR MRI slice shows a lower-grade glioma's FLAIR abnormality, for a "
                         "qualified reader to review. Not a diagnosis and not a medical device."),
        "data": ("LGG segmentation data set (Buda, Saha, Mazurowski 2019; TCGA-LGG, TCIA): FLAIR slices "
                 "(256 x 256, 8-bit) of 36 lower-grade-glioma patients from 5 institutions, resized to "
                 "128 x 128; label 1 when the slice's manual FLAIR-abnormality mask is non-empty. Split by "
                 "patient (datasets/splits/lgg.json): 29 training, 7 validation patients. The experts' masks "
                 "of the training patients also supervise the model's lesion map (loss: image BCE + pixel "
                 "Dice/BCE); the image probability is the calibrated mean of the map's 32 highest pixel "
                 "logits, and the map (Grad-CAM at its features) is the explanation shown."),
        "licence": "CC BY-NC-SA 4.0 (Kaggle mateuszbuda/lgg-mri-segmentation); TCIA data usage policy",
        "citation": ("M. Buda, A. Saha, M. A. Mazurowski. Association of genomic subtypes of lower-grade gliomas "
                     "with shape features automatically extracted by a deep learning algorithm. Computers in "
                     "Biology and Medicine 109 (2019) 218-225. doi:10.1016/j.compbiomed.2019.05.002"),
        "limits": [
            "Reads single 2D FLAIR slices at 128 x 128 px: the smallest lesions (a few pixels at 256 px, at the "
            "top and bottom of a tumour) are hard to see; it has no 3D context and no other sequences.",
            "Every patient has a lower-grade glioma: slices without tumour come from tumour patients, so "
            "other abnormalities (stroke, MS, high-grade tumour) and healthy brains are untested.",
            "36 patients from 5 TCGA institutions; other scanners and protocols are untested.",
            "Validation is 7 patients; slices of one patient are correlated, so the slice-level bootstrap "
            "CI is optimistic.",
            "The recipe (mask supervision, 128 px, top 32 pixels, batch 8, lr 2e-3) was chosen by looking at "
            "the validation patients: four image-label CNNs (best 0.939), then three lesion-map variants "
            "(0.949, 0.956, then this one); see the comment above DATASETS['lgg'] in train.py.",
            _VAL_LIMIT.replace("the official test split was", "the test patients were"),
        ],
    },
}


# mini-MIAS: 142 training images. The bundle is a lesion detector trained on the experts' circles
# (secondread.mammo): its map is the explanation and its top heat the image probability. The recipe was
# chosen by 5-fold CV over the training women (benchmarks/mammo_recipe.py, val never read): top-3 hit
# 0.30 / AUC 0.53 for lesion weight 10 with the image term on every image, 0.37 / 0.56 for lesion weight
# 30 with the image term only on normal and unlocated images (this row).
DATASETS["mini-mias"] = {
    "name": "mammo-abnormal", "finding": "abnormal mammogram", "positive_label": "abnormal", "positive_class": 1,
    "kind": "folder", "loader": "minimias", "input_size": 256, "trainer": "heatmap",
    "modalities": ["MG", "OT"],
    "labels": {"0": "normal", "1": "abnormal"},
    # five detectors of seeds 0, 100, ... 400, their logit maps averaged: one detector's map is largely
    # its seed's (top-3 by CV 0.50-0.55 across seeds; the mean of their maps: benchmarks/mammo_ensemble.py)
    "architecture": "lesion_heatmap_ensemble",
    "arch_args": {"in_channels": 1, "width": 16, "blocks": 1, "dropout": 0.1, "stem_stride": 4, "members": 5},
    "explain": {"layer": "features_all", "method": "heatmap",
                "chosen": "the detector's own lesion map (trained on the experts' circles); Grad-CAM of "
                          "features_all (every member's merge.relu2) remains available"},
    "augmentation": "mammography",
    "optim": {"epochs": 40, "batch_size": 16, "lr": 2e-3, "patience": 40, "weight_decay": 1e-4,
              "schedule": "cosine", "sigma_factor": 0.5, "pos_weight": 30.0, "image_weight": 0.5,
              "located_image_weight": 0.0},
    # the best calcification cluster (secondread.calcifications) joins the map's peaks at rank 3;
    # chosen on the training women's out-of-fold images (benchmarks/mammo_calcifications.py)
    "calcifications": {"sigma_mm": 0.2, "threshold": 2.0, "radius_mm": 3.0, "min_specks": 1, "rank": 3},
    # no "recentre" rule (secondread.recentre, benchmarks/mammo_recentre.py): moving the peaks onto the
    # masses beside them gained 0.02 top-3 by nested CV and lost 0.03 on the validation women
    "anchors": {},
    "card": {
        "intended_use": ("Decision support for research: a second reader that estimates the probability that a "
                         "screen-film mammogram (MLO view) shows an abnormality (mass, calcification, "
                         "architectural distortion or asymmetry), for a qualified reader to review. Not a "
                         "diagnosis and not a medical device."),
        "data": ("mini-MIAS (Suckling et al. 1994): digitised MLO mammograms, 1024 x 1024 px at 200 micron, "
                 "resized to 256 x 256; five lesion detectors (seeds 0-400) trained on the experts' circles "
                 "(centre and radius of each abnormality, a Gaussian blob per circle on a 32 x 32 map), their "
                 "logit maps averaged; the image's probability is the map's maximum, label 1 when Info.txt "
                 "lists any abnormality (benign or malignant). Split by woman (both breasts together; datasets/splits/mini-mias.json)."),
        "licence": "MIAS licence: research use only, no resale; cite the database",
        "citation": ("J. Suckling et al. The Mammographic Image Analysis Society Digital Mammogram Database. "
                     "Excerpta Medica, International Congress Series 1069 (1994) 375-378."),
        "limits": [
            "Trained on 142 images (76 with a located lesion) at 256 x 256 px (4 px = 0.8 mm per pixel): "
            "microcalcifications are invisible at this size (a classical cluster finder at full resolution "
            "supplies the third candidate instead), and both the abnormal/normal AUC and the "
            "localisation (top-3 hit rate) are weak, with wide confidence intervals.",
            "Its map marks where it sees a lesion-like region; a cold map does not exclude a lesion.",
            "1990s screen-film mammograms from one UK programme; digital mammography is untested.",
            "Normal images are under-represented in this subset (the folder keeps all abnormal images).",
            _VAL_LIMIT.replace("the official test split was", "the test women were"),
        ],
    },
}


@contextlib.contextmanager
def seeded_training(seed: int):
    """Seed Python, NumPy and torch, fix the thread count and make torch deterministic, so the same
    seed gives the same weights on this machine; then give the caller back its own thread count
    and determinism flag (a trainer called from a service or a test must not change them)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    with torch_threads(THREADS):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic)


def bundle_config(info: dict, dataset: str, args: dict, input_shape, spec: list[dict], summary: dict,
                  training: dict, seconds: float, history: list, data_source: dict, **extra) -> dict[str, Any]:
    """The ``bundle.json`` every trainer writes (:func:`train_bundle`, the mammography detector):
    identity and date, network, preprocessing, labels, the validation ``summary`` (temperature,
    operating points, metrics), ``extra`` entries (a detector's ``localisation``), the training
    record (``training``: the trainer's own settings, from ``n_train`` to ``seed``), anchors,
    provenance and card."""
    from .mammo import RULES  # a detector's candidate rules travel with its bundle

    today = datetime.now(timezone.utc).date().isoformat()
    return {
        "name": info["name"], "version": today.replace("-", "."), "created": today,
        "architecture": info["architecture"], "arch_args": args, "input_shape": list(input_shape),
        "preprocessing": spec, "labels": info["labels"], "positive_label": info["positive_label"],
        "positive_class": int(info["positive_class"]), "finding": info["finding"],
        "modalities": info["modalities"], **{k: info[k] for k in ("input_kind", "explain", *RULES) if k in info},
        **summary, **extra,
        "training": {"dataset": dataset, "split_used": "train", **training, "threads": THREADS,
                     "time_seconds": round(seconds, 1), "torch_version": torch.__version__,
                     "cpu_capability": torch.backends.cpu.get_cpu_capability(), "history": history},
        "anchors": {k: {"auc": v[0], "accuracy": v[1]} for k, v in info.get("anchors", {}).items()},
        "data_source": data_source,
        "card": info["card"],
    }


def preprocessing_spec(train_images: np.ndarray, size: int = 28, first: dict | None = None) -> list[dict]:
    """The stored spec: per-image min-max, area resize to ``size`` (per axis, 2D or 3D), then the
    training set's mean/std.

    Min-max first makes the spec valid for any input range (uint8 MedMNIST or a full-size CR after
    VOI); the fixed mean/std are measured on the training split after the first two steps.
    """
    base = [dict(first or {"op": "normalise", "method": "minmax"}),
            {"op": "resize", "shape": [size] * (np.asarray(train_images[0]).ndim), "interpolation": "area"}]
    x = prepare_images(base, train_images)
    return base + [{"op": "normalise", "method": "fixed", "mean": float(x.mean()), "std": float(x.std())}]


def _subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded random subset of ``limit`` training images (all, in order, if None)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:int(limit)])


def _fit(model, x_tr, y_tr, x_val, y_val, *, epochs, batch_size, lr, seed, patience, progress,
         augment=_augment, weight_decay=0.0, schedule="constant", masks=None):
    """Adam(W) on BCE-with-logits with early stopping on validation AUC; returns the best-epoch state.

    ``y_tr``/``y_val`` are finding indicators (1 = finding). ``schedule="cosine"`` anneals the
    learning rate to zero over ``epochs`` (per step); ``"constant"`` keeps it (the pneumonia recipe,
    whose weights this path reproduces exactly). ``masks`` (``[N, 1, h, w]`` lesion fractions of
    the training images at the input grid) make it mask-supervised (:func:`_loss`).
    """
    opt = (torch.optim.Adam(model.parameters(), lr=lr) if not weight_decay else
           torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay))
    steps = epochs * math.ceil(len(x_tr) / batch_size)
    sched = (torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
             if schedule == "cosine" else None)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr.astype(np.float32))
    mt = None if masks is None else torch.from_numpy(masks)
    best = {"auc": -1.0, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    history, bar = [], tqdm(range(1, epochs + 1), desc="train", unit="epoch", file=sys.stderr,
                            disable=not progress, leave=True)
    for epoch in bar:
        model.train()
        order, total = torch.randperm(len(xt), generator=gen), 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2 and len(order) > 1:
                continue  # batch norm cannot train on a single image
            loss = _loss(model, augment, xt[idx], yt[idx], None if mt is None else mt[idx], gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += loss.item() * len(idx)
        auc = medmnist_auc(y_val, batched_logits(model, x_val).numpy())
        history.append({"epoch": epoch, "loss": total / len(xt), "val_auc": auc})
        if auc > best["auc"]:
            best = {"auc": auc, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        bar.set_postfix(loss=f"{total / len(xt):.4f}", val_auc=f"{auc:.4f}", best=best["epoch"])
        if epoch - best["epoch"] >= patience:
            break
    bar.close()
    return best, history


def _loss(model, augment, x, y, masks, gen) -> torch.Tensor:
    """BCE of the image logit; with ``masks`` (a :class:`~secondread.models.nets.LesionMapNet`)
    plus the pixel map's BCE and soft Dice against the experts' outlines (MONAI ``DiceCELoss``,
    Dice over the whole batch so that batches of slices without tumour stay defined)."""
    if masks is None:
        return F.binary_cross_entropy_with_logits(model(augment(x, gen)), y)
    from monai.losses import DiceCELoss

    x, masks = augment(x, gen, masks=masks)
    pixels = model.lesion_logits(x)
    return (F.binary_cross_entropy_with_logits(model.pool(pixels), y)
            + DiceCELoss(sigmoid=True, batch=True)(pixels, masks))


def lesion_fractions(samples, size: int) -> np.ndarray:
    """The experts' masks at the input grid, ``[N, 1, size, size]`` float32: the share of each cell
    that is lesion (area resize), so a lesion smaller than a cell still supervises its cell."""
    import cv2

    out = np.zeros((len(samples), 1, size, size), np.float32)
    for i, s in enumerate(samples):
        for lesion in s.lesions:
            if lesion.kind == "mask":
                m = np.asarray(lesion.mask, np.float32)
                out[i, 0] = np.maximum(out[i, 0], cv2.resize(m, (size, size), interpolation=cv2.INTER_AREA))
    return out


def _validation_summary(model, x_val, y_val, title: str) -> tuple[dict[str, Any], bytes]:
    """Temperature, operating points, metrics (on calibrated probabilities of the finding, all on
    validation) and the reliability diagram (PNG bytes) before/after temperature scaling."""
    from .plots import reliability_bins, reliability_diagram

    logits = batched_logits(model, x_val).numpy()
    temperature = fit_temperature(logits, y_val)
    probs, raw = calibrated(logits, temperature), calibrated(logits, 1.0)
    ops = operating_points(y_val, probs)
    metrics = binary_metrics(y_val, probs, ops["balanced"]["threshold"])
    metrics["ece_before_calibration"] = expected_calibration_error(y_val, raw)
    metrics["ece_after_calibration"] = metrics["ece"]
    png = reliability_diagram(y_val, {
        f"before (T=1), ECE {metrics['ece_before_calibration']:.3f}": raw,
        f"after (T={temperature:.2f}), ECE {metrics['ece_after_calibration']:.3f}": probs}, title)
    calibration = {"method": "temperature scaling (validation NLL)", "bins": 10,
                   "ece_before": metrics["ece_before_calibration"], "ece_after": metrics["ece_after_calibration"],
                   "reliability_diagram": RELIABILITY_FILE,
                   "reliability_bins_after": reliability_bins(y_val, probs)}
    return {"temperature": temperature, "operating_points": ops, "threshold": ops["balanced"]["threshold"],
            "metrics": metrics, "calibration": calibration}, png


def folder_samples(dataset: str, data_dir=None, split: str | None = None) -> list:
    """The :class:`~secondread.datasets.lesions.Sample` list of a folder data set's ``split``."""
    from importlib import import_module

    module = import_module(f".datasets.{DATASETS[dataset]['loader']}", __package__)
    return module.samples(data_dir, split)


def _pixels(samples) -> list[np.ndarray]:
    return [np.asarray(s.image.pixels) for s in samples]


def _load_folder_task(dataset: str, data_dir, limit, seed):
    """Folder data sets: the saved per-patient ``train``/``val`` splits, read through the loader."""
    info = DATASETS[dataset]
    train, val = folder_samples(dataset, data_dir, "train"), folder_samples(dataset, data_dir, "val")
    if limit is not None:  # a seeded subset of whole patients, so no patient is cut in two
        patients = sorted({s.patient for s in train})
        keep = set(np.array(patients)[_subset(len(patients), limit, seed)].tolist())
        train = [s for s in train if s.patient in keep]
    positive = int(info["positive_class"])
    return (train, _pixels(train), np.array([int(s.label == positive) for s in train], dtype=np.int64),
            val, _pixels(val), np.array([int(s.label == positive) for s in val], dtype=np.int64))


def _load_task(dataset: str, data_dir, limit, seed):
    """Training and validation arrays of ``dataset`` with finding indicators (1 = finding)."""
    info = DATASETS[dataset]
    if info.get("kind", "npz") == "folder":
        return _load_folder_task(dataset, data_dir, limit, seed)
    path = locate(dataset, data_dir)
    train_images, train_labels = load_split(path, "train")
    val_images, val_labels = load_split(path, "val")
    keep = _subset(len(train_images), limit, seed)
    train_images, train_labels = train_images[keep], train_labels[keep]
    positive = int(info["positive_class"])
    return (path, train_images, (train_labels == positive).astype(np.int64),
            path, val_images, (val_labels == positive).astype(np.int64))


def train_bundle(dataset: str = "pneumoniamnist", out: str | os.PathLike = "bundle",
                 data_dir: str | os.PathLike | None = None, epochs: int | None = None,
                 batch_size: int | None = None, lr: float | None = None, seed: int = 0,
                 patience: int | None = None, limit: int | None = None,
                 progress: bool = True, arch_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``dataset``'s network (its :data:`DATASETS` row) on the training split; save a bundle.

    Early stopping keeps the weights of the epoch with the best validation AUC; the temperature,
    operating points, metrics and reliability diagram are then fitted/measured on validation.
    ``epochs``, ``batch_size``, ``lr`` and ``patience`` default to the task's row; ``arch_args``
    overrides some of its architecture arguments (e.g. a narrower net for quick tests). ``limit``
    caps the number of training images (a seeded random subset). Returns the bundle's config.
    """
    if dataset not in DATASETS:
        raise SecondreadError(None, f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    if DATASETS[dataset].get("trainer") == "heatmap":  # a lesion detector (mini-MIAS): secondread.mammo
        from .mammo import train_detector

        return train_detector(dataset, out, data_dir, epochs, batch_size, lr, seed, patience, limit, progress, arch_args)
    info, started = DATASETS[dataset], time.perf_counter()
    opt = dict(info["optim"])
    opt.update({k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "lr": lr,
                                  "patience": patience}.items() if v is not None})
    augment, augmentation = AUGMENTATIONS[info["augmentation"]]
    with seeded_training(seed):
        path, train_images, y_tr, val_path, val_images, y_val = _load_task(dataset, data_dir, limit, seed)
        spec = preprocessing_spec(train_images, int(info.get("input_size", 28)), info.get("first_normalise"))
        x_tr, x_val = prepare_images(spec, train_images), prepare_images(spec, val_images)
        args = dict(info["arch_args"], **(arch_args or {}))
        torch.manual_seed(seed)
        model = build(info["architecture"], **args)
        masks = (lesion_fractions(path, int(info["input_size"])) if info.get("supervision") == "masks" else None)
        best, history = _fit(model, x_tr, y_tr, x_val, y_val, epochs=opt["epochs"], batch_size=opt["batch_size"],
                             lr=opt["lr"], seed=seed, patience=opt["patience"], progress=progress,
                             augment=augment, weight_decay=opt["weight_decay"], schedule=opt["schedule"],
                             masks=masks)
        model.load_state_dict(best["state"])
        train_seconds = time.perf_counter() - started
        summary, reliability_png = _validation_summary(model, x_val, y_val,
                                                       f"{info['name']}: validation (n={len(x_val)})")
    training = {"n_train": int(len(x_tr)), "n_val": int(len(x_val)), "limit": limit, "epochs_max": opt["epochs"],
                "epochs_run": len(history), "best_epoch": best["epoch"], "patience": opt["patience"],
                "batch_size": opt["batch_size"], "lr": opt["lr"],
                "optimizer": "AdamW" if opt["weight_decay"] else "Adam",
                "weight_decay": opt["weight_decay"], "schedule": opt["schedule"],
                "loss": ("BCEWithLogits of the image logit + MONAI DiceCELoss of the pixel map against "
                         "the experts' masks" if masks is not None else "BCEWithLogits"),
                "augmentation": augmentation, "seed": seed}
    config = bundle_config(info, dataset, args, x_tr.shape[2:], spec, summary, training, train_seconds, history,
                           _data_source(info, path, val_path, data_dir))
    save_bundle(out, model, config, extra_files={RELIABILITY_FILE: reliability_png})
    return config


def _data_source(info: dict, train, val, data_dir) -> dict[str, Any]:
    """Provenance: the npz file and its md5, or the folder set's index and the patients of each split
    (so anyone can check that no patient was both trained and validated on)."""
    if info.get("kind", "npz") != "folder":
        return {"file": train.name, "md5": md5sum(train)}
    from importlib import import_module

    module = import_module(f".datasets.{info['loader']}", __package__)
    folder = Path(train[0].source).parent if train else None
    while folder is not None and not (folder / "SOURCE.md").is_file() and folder != folder.parent:
        folder = folder.parent
    index = next((folder / f for f in ("index.csv", "info.csv") if folder and (folder / f).is_file()), None)
    return {"folder": module.FOLDER, "file": f"{module.FOLDER}/{index.name}" if index else None,
            "md5": md5sum(index) if index else None, "split_file": f"datasets/splits/{module.NAME}.json",
            "train_patients": sorted({s.patient for s in train}), "val_patients": sorted({s.patient for s in val}),
            "train_items": len(train), "val_items": len(val)}


def cross_validate(dataset: str, folds: int = 5, data_dir: str | os.PathLike | None = None, seed: int = 0,
                   epochs: int | None = None, arch_args: dict[str, Any] | None = None,
                   optim: dict[str, Any] | None = None, progress: bool = False) -> dict[str, Any]:
    """Stratified ``folds``-fold cross-validation on the *training* split only, no early stopping.

    Why: with 78 (BreastMNIST) or 98 (AdrenalMNIST3D) validation images, choosing hyper-parameters
    by repeated looks at validation would fit its noise. Each fold trains for ``epochs`` and records
    the held-out fold's AUC after every epoch; the mean curve chooses width, learning rate and the
    number of epochs. Returns ``{"mean_auc_by_epoch", "fold_auc_by_epoch", "best_epoch", "best_mean_auc"}``.
    """
    from sklearn.model_selection import StratifiedKFold

    info = DATASETS[dataset]
    opt = dict(info["optim"], **(optim or {}))
    if epochs is not None:
        opt["epochs"] = epochs
    augment, _ = AUGMENTATIONS[info["augmentation"]]
    curves = []
    with seeded_training(seed):
        _, images, y, _, _, _ = _load_task(dataset, data_dir, None, seed)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for k, (tr, te) in enumerate(splitter.split(np.zeros(len(y)), y)):
            spec = preprocessing_spec(images[tr])
            x_tr, x_te = prepare_images(spec, images[tr]), prepare_images(spec, images[te])
            torch.manual_seed(seed + k)
            model = build(info["architecture"], **dict(info["arch_args"], **(arch_args or {})))
            _, history = _fit(model, x_tr, y[tr], x_te, y[te], epochs=opt["epochs"], batch_size=opt["batch_size"],
                              lr=opt["lr"], seed=seed + k, patience=opt["epochs"], progress=progress,
                              augment=augment, weight_decay=opt["weight_decay"], schedule=opt["schedule"])
            curves.append([h["val_auc"] for h in history])
    mean = np.mean(curves, axis=0)
    return {"mean_auc_by_epoch": mean.tolist(), "fold_auc_by_epoch": curves,
            "best_epoch": int(np.argmax(mean)) + 1, "best_mean_auc": float(mean.max()),
            "final_mean_auc": float(mean[-1])}

"""The mini-MIAS lesion detector behind ``mammo-abnormal``: heat-map training on the experts'
circles, ranked candidates from the map's peaks, and the bundle it is shipped as.

Why a detector instead of a whole-image classifier: the classifier trained on ~140 mammograms had a
validation AUC of 0.63 and a Grad-CAM map that pointed at no lesion, so it could say neither
*whether* nor *where*. mini-MIAS gives every located lesion a centre and a radius; a fully
convolutional network (:class:`secondread.models.nets.LesionHeatmapNet`) trained to draw a blob on
each circle learns where lesions are, and the image's probability is its strongest location (the
"top heat", temperature-calibrated on validation like every bundle; the map itself stays the
per-cell probability it was trained to give). The explanation a reader sees is then the detector's
own map (``"explain": {"method": "heatmap"}`` in the bundle, served by
:func:`secondread.explain.gradcam`), and Grad-CAM / Grad-CAM++ of the same network stay available.

Training (:func:`train_detector`), on the ``train`` women only:

- **Targets**: per image a map at the network's output grid (1/8 of the input) holding, for every
  located lesion, a Gaussian of standard deviation ``sigma_factor`` x its radius (at least
  :data:`MIN_SIGMA_CELLS` cells), peak 1 at its centre; normal images are all-zero maps. Abnormal
  images whose lesion has no centre (mdb059 and the diffuse calcifications) keep only the
  image-level loss: nobody knows where their lesion is.
- **Loss**: per-cell binary cross-entropy against the soft target, lesion cells weighted
  ``1 + pos_weight x target`` (lesions cover ~1 % of the map), plus ``image_weight`` x the
  image-level cross-entropy of the map's maximum (the image's logit) against abnormal/normal.
- **Augmentation** (:func:`augment_with_targets`): image and target move together; left-right
  flip (a mirrored left breast is a plausible right breast), rotation +-10 deg, scale +-10 %,
  shift +-4 % of the side, and for the image only gain/offset +-10 % and gamma 0.8-1.25 (film
  density varies). No up-down flip: the pectoral muscle and nipple orientation of an MLO view
  are fixed.
- **Five members** (``"members"`` in the row's ``arch_args``;
  :class:`~secondread.models.nets.LesionHeatmapEnsemble`): the same recipe trained with seeds 0,
  100, ... 400 (:func:`member_seed`), each exactly as the single detector of that seed; the bundle's
  map is the mean of their logit maps. By 5-fold CV over all women one detector found 0.50-0.55 of
  the lesions in its top 3 depending on its seed (mean 0.52), the five averaged 0.57
  (``benchmarks/mammo_ensemble.py``).
- A fixed number of epochs with a cosine schedule, no early stopping: validation (35 images, 17
  with a located lesion) is too small to choose an epoch on; it only fits the temperature and the
  operating points. The recipe (lesion weight, image term on normal and unlocated images only) was
  chosen among a few by :func:`cross_validate_detector` (``benchmarks/mammo_recipe.py``): 5-fold
  cross-validation over the training women, top-3 hit 0.37 and AUC 0.56 there (the first recipe:
  0.30 / 0.53); validation was not looked at to choose it.

Candidates (:func:`map_candidates`): local maxima of the map at least ``min_distance`` apart
(non-maximum suppression), strongest first; centre = the peak, score = the map's per-cell
probability there, radius = the equivalent-circle radius of the region around the peak at half
its height (what the map calls the lesion's extent), in pixels of the original image. The map at
256 px cannot see microcalcifications, so the recipe's ``calcifications`` puts the best cluster of
:mod:`secondread.calcifications` (full resolution) at rank 3 (:func:`candidates`); chosen on the
training women's out-of-fold images (``benchmarks/mammo_calcifications.py``). A bundle may also
carry a ``recentre`` rule (:mod:`secondread.recentre`: peaks moved onto the masses beside them);
``mammo-abnormal`` does not, since it did not help the women it was not chosen on.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from skimage import feature, measure
from tqdm import tqdm

from .localise import TOP_K, Region, hits

MAP_STRIDE = 8
"""The detector's map is 1/8 of its input (:class:`~secondread.models.nets.LesionHeatmapNet`)."""
MIN_SIGMA_CELLS = 0.75
"""Smallest target Gaussian, in map cells: a 20 px lesion is still a blob, not a single cell."""
MIN_DISTANCE = 0.06
"""Non-maximum suppression: candidates at least this fraction of the image side apart (61 px of
1024, between the median lesion radius, 38 px, and its diameter). On the training images
(in-sample) the top-3 hit rate was 0.36 / 0.34 / 0.30 at 0.03 / 0.06 / 0.10: not sensitive."""
MEMBER_SEED_STEP = 100
"""Seeds of an ensemble's members: ``seed``, ``seed + 100``, ... (:func:`member_seed`)."""
CANDIDATE_FLOOR = 1e-4
"""Peaks below this probability are not candidates (the map is flat there)."""
AUGMENTATION = ("left-right flip, rotation +-10 deg, scale +-10 %, shift +-4 % (image and heat-map target "
                "together), gain/offset +-10 % and gamma 0.8-1.25 on the image only; no up-down flip")


# ----------------------------------------------------------------------------- targets
def lesion_target(lesions, image_shape: tuple[int, int], grid: int, sigma_factor: float) -> tuple[np.ndarray, bool]:
    """The heat-map target of one image on a ``grid x grid`` map, and whether its cells are known.

    Cell ``(i, j)`` covers the original pixels around ``((j + 0.5) * cell - 0.5, (i + 0.5) * cell - 0.5)``
    (the area-resize convention of the preprocessing). Returns ``(target, located)``: ``located``
    is False for an abnormal image whose lesion has no centre (its map must not be penalised).
    """
    h, w = image_shape
    target = np.zeros((grid, grid), np.float32)
    circles = [les for les in lesions if les.kind == "circle"]
    if lesions and not circles:
        return target, False
    cell_y, cell_x = h / grid, w / grid
    rows = (np.arange(grid) + 0.5) * cell_y - 0.5
    cols = (np.arange(grid) + 0.5) * cell_x - 0.5
    for les in circles:
        cx, cy = les.center
        sigma = max(sigma_factor * float(les.radius), MIN_SIGMA_CELLS * cell_x)
        g = np.exp(-((rows[:, None] - cy) ** 2 + (cols[None, :] - cx) ** 2) / (2 * sigma ** 2))
        target = np.maximum(target, (g / g.max()).astype(np.float32))  # the nearest cell is exactly 1
    return target, True


# ----------------------------------------------------------------------------- augmentation
def augment_with_targets(x: torch.Tensor, t: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random affine applied to images ``x`` ``[N, 1, S, S]`` and their targets ``t``
    ``[N, 1, S/8, S/8]`` alike (normalised grid coordinates are resolution-free), then intensity
    jitter on the images only. The draws come in a fixed order from ``gen``: seeded runs repeat."""
    n = x.shape[0]

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    mirror = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    angle, zoom = u(-10, 10) * math.pi / 180, u(0.9, 1.1)
    tx, ty = u(-0.08, 0.08), u(-0.08, 0.08)  # +-4 % of the side (grid units span 2)
    gain, offset, gamma = u(0.9, 1.1), u(-0.1, 0.1), torch.exp(u(math.log(0.8), math.log(1.25)))
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * mirror, -sin, tx], 1), torch.stack([sin * mirror, cos, ty], 1)], 1)
    xs = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), mode="bilinear",
                       padding_mode="border", align_corners=False)
    ts = F.grid_sample(t, F.affine_grid(theta, list(t.shape), align_corners=False), mode="bilinear",
                       padding_mode="zeros", align_corners=False)
    # gamma on the normalised image: shift to positive, bend, shift back (the preprocessing's z-score)
    lo = xs.amin(dim=(1, 2, 3), keepdim=True)
    span = (xs.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-6)
    xs = lo + span * ((xs - lo) / span) ** gamma.view(n, 1, 1, 1)
    return xs * gain.view(n, 1, 1, 1) + offset.view(n, 1, 1, 1), ts


# ----------------------------------------------------------------------------- training
def detector_loss(heat: torch.Tensor, target: torch.Tensor, located: torch.Tensor, label: torch.Tensor,
                  pos_weight: float, image_weight: float, located_image_weight: float = 1.0) -> torch.Tensor:
    """Weighted per-cell BCE on located images + ``image_weight`` x BCE of the map's maximum.

    ``located_image_weight`` scales the image term of images whose lesion is located: pushing up
    the map's maximum there rewards whichever cell is highest, right or wrong, so the recipe can
    leave those images to the cell term and keep the image term for normal images (push the
    strongest false alarm down) and unlocated lesions (somewhere there is one)."""
    weight = (1 + pos_weight * target) * located.view(-1, 1, 1, 1)
    cells = F.binary_cross_entropy_with_logits(heat, target, weight=weight, reduction="sum")
    cells = cells / weight.sum().clamp_min(1.0)
    per_image = torch.where((located > 0) & (label > 0), located_image_weight, 1.0)
    image = F.binary_cross_entropy_with_logits(heat.flatten(1).amax(dim=1), label, weight=per_image)
    return cells + image_weight * image


def fit_detector(model, x: np.ndarray, targets: np.ndarray, located: np.ndarray, labels: np.ndarray, *,
                 epochs: int, batch_size: int, lr: float, weight_decay: float, pos_weight: float,
                 image_weight: float, seed: int, progress: bool = False, monitor=None,
                 located_image_weight: float = 1.0, monitor_every: int = 1) -> list[dict]:
    """AdamW with a cosine schedule for ``epochs`` (no early stopping); returns the loss history.

    ``monitor(model) -> dict``, when given, is called after each epoch and its figures go into the
    history (a record only: nothing is chosen from it)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    xt, tt = torch.from_numpy(x), torch.from_numpy(targets[:, None])
    lt, yt = torch.from_numpy(located.astype(np.float32)), torch.from_numpy(labels.astype(np.float32))
    history = []
    for epoch in tqdm(range(1, epochs + 1), desc="train", unit="epoch", file=sys.stderr, disable=not progress):
        model.train()
        order, total = torch.randperm(len(xt), generator=gen), 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2:
                continue  # batch norm cannot train on a single image
            xb, tb = augment_with_targets(xt[idx], tt[idx], gen)
            loss = detector_loss(model.heatmap(xb), tb, lt[idx], yt[idx], pos_weight, image_weight,
                                 located_image_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        watch = monitor is not None and (epoch % monitor_every == 0 or epoch == epochs)
        history.append({"epoch": epoch, "loss": round(total / len(xt), 5), **(monitor(model) if watch else {})})
    return history


# ----------------------------------------------------------------------------- candidates
def probability_maps(model, x: np.ndarray, batch_size: int = 32, flip: bool = False) -> np.ndarray:
    """Per-cell probability map (as trained, not temperature-scaled) of every prepared image ``x``
    ``[N, 1, S, S]`` -> ``[N, S/8, S/8]``; with ``flip`` the mean with the map of the mirrored
    image, mirrored back (measured by :func:`cross_validate_detector`, ``test_time_flip``)."""
    model.eval()
    parts = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[i:i + batch_size])
            heat = model.probability_map(xb)[:, 0]
            if flip:
                heat = 0.5 * (heat + torch.flip(model.probability_map(torch.flip(xb, dims=[-1]))[:, 0], dims=[-1]))
            parts.append(heat)
    return torch.cat(parts).numpy() if parts else np.zeros((0, 1, 1), np.float32)


def upsample(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A map cell grid -> the original image's pixels (bilinear, cell centres as in the area resize)."""
    t = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(int(s) for s in shape), mode="bilinear", align_corners=False)[0, 0].numpy()


def map_candidates(heat: np.ndarray, top: int, min_distance: float = MIN_DISTANCE) -> list[Region]:
    """Ranked candidates of a lesion map at the image's size (see the module docstring).

    ``heat`` is the per-cell probability map upsampled to the original image; ``min_distance``
    is the non-maximum suppression distance as a fraction of the image's longer side.
    """
    if heat.size == 0 or float(heat.max()) <= CANDIDATE_FLOOR:
        return []
    distance = max(1, int(round(min_distance * max(heat.shape))))
    peaks = feature.peak_local_max(heat, min_distance=distance, threshold_abs=CANDIDATE_FLOOR,
                                   exclude_border=False, num_peaks=top)
    step = max(1, max(heat.shape) // 256)  # the extent is measured on a 4x coarser copy: same answer, 16x cheaper
    coarse = heat[::step, ::step]
    out = []
    for rank, (r, c) in enumerate(peaks, start=1):
        value = float(heat[r, c])
        labels = measure.label(coarse >= 0.5 * value, connectivity=2)
        own = labels[min(r // step, coarse.shape[0] - 1), min(c // step, coarse.shape[1] - 1)]
        area = float((labels == own).sum()) * step * step if own else float(step * step)
        out.append(Region(rank=rank, score=round(value, 5), x=float(c), y=float(r), radius=float(np.sqrt(area / np.pi))))
    return out


RULES = ("recentre", "calcifications")
"""The candidate rules a detector may carry after its map's peaks, applied in this order (keys of
its DATASETS row and of its bundle.json): :mod:`secondread.recentre` moves the peaks onto the masses
beside them, :mod:`secondread.calcifications` adds the best calcification cluster."""


def candidate_rules(config: dict) -> dict:
    """The :data:`RULES` a bundle's config (or a DATASETS row) carries."""
    return {k: config[k] for k in RULES if config.get(k)}


def candidates(heat: np.ndarray, image, top: int, min_distance: float = MIN_DISTANCE,
               rules: dict | None = None) -> list[Region]:
    """The detector's ranked candidates on one image: the peaks of its map (``heat``, already at the
    image's size: :func:`upsample`), then the :data:`RULES` in ``rules`` (:func:`candidate_rules`):
    the peaks moved to the mass centres beside them, and the best calcification cluster placed at its
    rule's rank."""
    rules = rules or {}
    regions = map_candidates(heat, top + 2 if "recentre" in rules else top, min_distance)  # spares for merged moves
    if "recentre" in rules:
        from .recentre import recentre

        regions = recentre(regions, image, rules["recentre"])
    if "calcifications" in rules:
        from .calcifications import merge, rule_clusters

        regions = merge(regions, rule_clusters(image, rules["calcifications"]), int(rules["calcifications"]["rank"]))
    return regions[:top]


def describe_rules(rules: dict) -> str:
    """The candidate rule in words, for ``bundle.json`` and the localise output."""
    text = f"peaks of the map >= {MIN_DISTANCE} x the image side apart"
    if "recentre" in rules:
        r = rules["recentre"]
        text += (f", each moved to the strongest {r['field']} point (sigma {', '.join(map(str, r['sigmas_mm']))} mm) "
                 f"within {r['radius_mm']} mm in the breast")
    if "calcifications" in rules:
        text += f", the best calcification cluster at rank {rules['calcifications']['rank']}"
    return text


def hit_rates(heat_maps: np.ndarray, samples, top: int = max(TOP_K), min_distance: float = MIN_DISTANCE,
              rules: dict | None = None) -> dict:
    """Pointing game and top-k hit rates of maps (``[N, g, g]``) over ``samples`` with located lesions,
    candidates taken as :func:`candidates` takes them; each image's entry keeps its ``regions``."""
    per = []
    for heat, s in zip(heat_maps, samples):
        circles = s.circles
        if not circles:
            continue
        regions = candidates(upsample(heat, s.image.shape), s.image, top, min_distance, rules)
        h = hits(regions, circles)
        per.append({"id": Path(s.source).name, "patient": s.patient, **{f"top{k}": bool(any(h[:k])) for k in TOP_K},
                    "regions": regions})
    return {"images": len(per), **{f"top{k}": round(float(np.mean([p[f"top{k}"] for p in per])), 4) if per else None
                                   for k in TOP_K}, "per_image": per}


# ----------------------------------------------------------------------------- the bundle
def _recipe(info: dict, **overrides) -> dict:
    opt = dict(info["optim"])
    opt.update({k: v for k, v in overrides.items() if v is not None})
    return opt


def _targets(samples, pixels, grid: int, sigma_factor: float) -> tuple[np.ndarray, np.ndarray]:
    pairs = [lesion_target(s.lesions, p.shape, grid, sigma_factor) for s, p in zip(samples, pixels)]
    return np.stack([t for t, _ in pairs]), np.array([k for _, k in pairs], dtype=bool)


def _fit_on(info: dict, opt: dict, args: dict, samples, pixels, labels, seed: int, progress: bool, monitor=None):
    """Preprocessing spec, targets and a trained model for one training set (bundle or CV fold)."""
    from .models.bundle import prepare_images
    from .models.nets import build
    from .train import preprocessing_spec

    size = int(opt.get("input_size", info["input_size"]))
    spec = preprocessing_spec(pixels, size, info.get("first_normalise"))
    x = prepare_images(spec, pixels)
    targets, located = _targets(samples, pixels, size // MAP_STRIDE, float(opt["sigma_factor"]))
    model = build(info["architecture"], **args)
    members = list(getattr(model, "members", [model]))
    histories = []
    for j, member in enumerate(members):  # each member as the single detector of its own seed
        torch.manual_seed(member_seed(seed, j))
        alone = build("lesion_heatmap", **{k: v for k, v in args.items() if k != "members"})
        histories.append(fit_detector(alone, x, targets, located, labels, epochs=int(opt["epochs"]),
                                      batch_size=int(opt["batch_size"]), lr=float(opt["lr"]),
                                      weight_decay=float(opt["weight_decay"]), pos_weight=float(opt["pos_weight"]),
                                      image_weight=float(opt["image_weight"]), seed=member_seed(seed, j),
                                      progress=progress, monitor=monitor if len(members) == 1 else None,
                                      located_image_weight=float(opt.get("located_image_weight", 1.0)),
                                      monitor_every=int(opt.get("monitor_every", 1))))
        member.load_state_dict(alone.state_dict())
    return model, spec, x, _mean_history(histories)


def member_seed(seed: int, member: int) -> int:
    """Member ``j`` of an ensemble trains as the single detector of seed ``seed + MEMBER_SEED_STEP * j``."""
    return int(seed) + MEMBER_SEED_STEP * int(member)


def _mean_history(histories: list[list[dict]]) -> list[dict]:
    """One history for the bundle: a single member's as is; for an ensemble, per epoch the members'
    mean loss."""
    if len(histories) == 1:
        return histories[0]
    return [{"epoch": rows[0]["epoch"], "loss": round(float(np.mean([r["loss"] for r in rows])), 5),
             "member_losses": [r["loss"] for r in rows]} for rows in zip(*histories)]


def train_detector(dataset: str = "mini-mias", out: str | os.PathLike = "bundle", data_dir=None,
                   epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
                   seed: int = 0, patience: int | None = None, limit: int | None = None, progress: bool = True,
                   arch_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train the detector of ``dataset``'s :data:`~secondread.train.DATASETS` row on its ``train``
    women and save it as a classifier bundle whose explanation is its own map.

    Same arguments as :func:`secondread.train.train_bundle` (which calls this for rows with
    ``"trainer": "heatmap"``); ``patience`` is accepted and ignored (no early stopping). Validation
    fits the temperature and operating points and is scored for localisation (top-k hit rates),
    recorded in ``bundle.json`` under ``localisation``.
    """
    from .models.bundle import prepare_images, save_bundle
    from .train import (DATASETS, RELIABILITY_FILE, _data_source, _load_folder_task, _validation_summary,
                        bundle_config, seeded_training)

    info, started = DATASETS[dataset], time.perf_counter()
    opt = _recipe(info, epochs=epochs, batch_size=batch_size, lr=lr)
    args = dict(info["arch_args"], **(arch_args or {}))
    with seeded_training(seed):
        train, train_px, y_tr, val, val_px, y_val = _load_folder_task(dataset, data_dir, limit, seed)
        model, spec, x_tr, history = _fit_on(info, opt, args, train, train_px, y_tr, seed, progress)
        train_seconds = time.perf_counter() - started
        x_val = prepare_images(spec, val_px)
        summary, reliability_png = _validation_summary(model, x_val, y_val, f"{info['name']}: validation (n={len(x_val)})")
        localisation = val_localisation(model, x_val, val, candidate_rules(info))
    training = {"n_train": int(len(x_tr)), "n_val": int(len(x_val)), "limit": limit, "epochs_max": int(opt["epochs"]),
                "epochs_run": len(history), "best_epoch": len(history), "patience": None,
                "batch_size": int(opt["batch_size"]), "lr": float(opt["lr"]), "optimizer": "AdamW",
                "weight_decay": float(opt["weight_decay"]), "schedule": "cosine",
                "loss": (f"per-cell BCE on Gaussian circle targets (sigma {opt['sigma_factor']} x radius, lesion "
                         f"weight 1 + {opt['pos_weight']} x target) + {opt['image_weight']} x image BCE of the "
                         "map's maximum"),
                "augmentation": AUGMENTATION, "seed": seed,
                "member_seeds": [member_seed(seed, j) for j in range(int(args.get("members", 1)))]}
    config = bundle_config(info, dataset, args, x_tr.shape[2:], spec, summary, training, train_seconds, history,
                           _data_source(info, train, val, data_dir), localisation=localisation)
    save_bundle(out, model, config, extra_files={RELIABILITY_FILE: reliability_png})
    return config


def val_localisation(model, x_val: np.ndarray, val, rules: dict) -> dict:
    """``bundle.json``'s ``localisation``: top-k hit rates of the candidates on the validation images."""
    found = hit_rates(probability_maps(model, x_val), val, rules=rules)
    return {"split": "val", "images_with_located_lesion": found["images"],
            **{f"top{k}": found[f"top{k}"] for k in TOP_K},
            **{f"top{k}_ci95": _women_ci([p[f"top{k}"] for p in found["per_image"]],
                                         [p["patient"] for p in found["per_image"]]) for k in TOP_K},
            "hit_rule": "a candidate centre within an expert circle's radius", "candidates": describe_rules(rules)}


def refresh_localisation(folder: str | os.PathLike, dataset: str = "mini-mias", data_dir=None) -> dict:
    """Give a trained detector bundle its row's current candidate rules (:data:`RULES`) and
    re-score its validation ``localisation`` with it, keeping the weights.

    Why not retrain: the candidate rule runs after the network, and retraining on another host gives
    other weights (other floating-point kernels), which would change every figure quoted for them."""
    from .atomic import write_bytes
    from .models.bundle import CARD_FILE, CONFIG_FILE, load_bundle, model_card, prepare_images
    from .train import DATASETS, folder_samples

    info, bundle = DATASETS[dataset], load_bundle(folder)
    val = folder_samples(dataset, data_dir, "val")
    x_val = prepare_images(bundle.preprocessing, [np.asarray(s.image.pixels) for s in val])
    rules = candidate_rules(info)
    config = {k: v for k, v in bundle.config.items() if k not in RULES}
    config.update(rules, card=info["card"], localisation=val_localisation(bundle.model, x_val, val, rules))
    write_bytes(Path(folder) / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode("utf-8"))
    write_bytes(Path(folder) / CARD_FILE, model_card(config).encode("utf-8"))
    return config["localisation"]


def _women_ci(values, groups) -> list[float] | None:
    from .localise import _bootstrap_ci

    return _bootstrap_ci(np.asarray(values, dtype=float), list(groups)) if values else None


# ----------------------------------------------------------------------------- recipe choice
def out_of_fold_maps(dataset: str = "mini-mias", data_dir=None, seed: int = 0, folds=None, progress: bool = False,
                     arch_args: dict | None = None, women: str = "train", **overrides) -> dict:
    """Each held-out image's map and logit by cross-validation over the saved folds: each fold's
    women are held out in turn and a detector trained on the rest maps them. ``women`` is
    ``"train"`` (the training women's folds; validation is never read) or ``"all"`` (training and
    validation women; the test women stay withheld). ``overrides`` change the row's ``optim``
    entries (``epochs``, ``sigma_factor``, ``input_size``, ``test_time_flip``...).

    Returns ``samples`` (held out, fold by fold), ``maps`` ``[N, g, g]`` (per-cell probability),
    ``logits``, ``labels``, ``fold`` (per image), the ``recipe`` and ``seconds``. Maps are kept, not
    only candidates, so that ensembles of several seeds' maps can be scored
    (``benchmarks/mammo_ensemble.py``)."""
    from .datasets.splits import load
    from .models.bundle import batched_logits, prepare_images
    from .train import DATASETS, folder_samples, seeded_training

    info = DATASETS[dataset]
    opt = _recipe(info, **overrides)
    args = dict(info["arch_args"], **(arch_args or {}))
    n_folds = len(load(info.get("split_name", dataset))["folds"])
    if women not in ("train", "all"):
        raise ValueError(f"women must be 'train' or 'all', not {women!r}")
    samples = folder_samples(dataset, data_dir, "train") + (folder_samples(dataset, data_dir, "val") if women == "all" else [])
    pixels = [np.asarray(s.image.pixels) for s in samples]
    labels = np.array([int(s.label == int(info["positive_class"])) for s in samples])
    held_out, maps, logits, fold, start = [], [], [], [], time.perf_counter()
    with seeded_training(seed):
        for k in (folds if folds is not None else range(n_folds)):
            held = {s.patient for s in folder_samples(dataset, data_dir, f"fold{k}")}
            tr = [i for i, s in enumerate(samples) if s.patient not in held]
            te = [i for i, s in enumerate(samples) if s.patient in held]
            model, spec, _, _ = _fit_on(info, opt, args, [samples[i] for i in tr], [pixels[i] for i in tr],
                                        labels[tr], seed + k, progress)
            x_te = prepare_images(spec, [pixels[i] for i in te])
            logits.append(batched_logits(model, x_te).numpy())
            maps.append(probability_maps(model, x_te, flip=bool(opt.get("test_time_flip"))))
            held_out += te
            fold += [k] * len(te)
    return {"samples": [samples[i] for i in held_out], "maps": np.concatenate(maps), "logits": np.concatenate(logits),
            "labels": labels[held_out], "fold": np.array(fold), "recipe": {**opt, **args}, "women": women,
            "seconds": round(time.perf_counter() - start, 1)}


def score_out_of_fold(run: dict, maps: np.ndarray | None = None, rules: dict | None = None,
                      min_distance: float = MIN_DISTANCE) -> dict:
    """Top-k hit rates (pooled over folds, CIs over women) and the AUC per fold of an
    :func:`out_of_fold_maps` run, or of other ``maps`` of the same images (an ensemble's)."""
    from sklearn.metrics import roc_auc_score

    maps = run["maps"] if maps is None else maps  # the image's score: its logit, or another map's maximum
    logits = run["logits"] if maps is run["maps"] else maps.reshape(len(maps), -1).max(axis=1)
    folds = sorted(set(run["fold"].tolist()))
    aucs = [float(roc_auc_score(run["labels"][run["fold"] == k], logits[run["fold"] == k])) for k in folds]
    per = []
    for k in folds:
        idx = np.flatnonzero(run["fold"] == k)
        found = hit_rates(maps[idx], [run["samples"][i] for i in idx], min_distance=min_distance, rules=rules)
        per += [dict(p, fold=k) for p in found["per_image"]]
    out = {"folds": len(folds), "images_with_located_lesion": len(per), "auc_by_fold": [round(a, 4) for a in aucs],
           "auc_mean": round(float(np.mean(aucs)), 4)}
    for key in (f"top{k}" for k in TOP_K):
        out[key] = round(float(np.mean([p[key] for p in per])), 4)
        out[f"{key}_ci95"] = _women_ci([p[key] for p in per], [p["patient"] for p in per])
    out["per_image"] = per
    return out


def cross_validate_detector(dataset: str = "mini-mias", data_dir=None, seed: int = 0, folds=None,
                            progress: bool = False, arch_args: dict | None = None, women: str = "train",
                            rules: dict | None = None, **overrides) -> dict:
    """The recipe's localisation and AUC by cross-validation over the saved folds of the *training*
    women (by default; validation is then never read): :func:`out_of_fold_maps` scored by
    :func:`score_out_of_fold`. Hits are pooled over folds.

    ``women="all"`` folds the training *and* validation women (the test women stay withheld): more
    held-out lesions (93 against 76) for measuring, once nothing is being chosen on validation.
    ``rules`` replaces the row's candidate rules (:func:`candidate_rules`; ``{}``: the map's peaks alone)."""
    from .train import DATASETS

    run = out_of_fold_maps(dataset, data_dir, seed, folds, progress, arch_args, women, **overrides)
    rules = candidate_rules(DATASETS[dataset]) if rules is None else rules
    scored = score_out_of_fold(run, rules=rules, min_distance=float(run["recipe"].get("min_distance", MIN_DISTANCE)))
    return {"recipe": run["recipe"], "women": women, **scored, "seconds": run["seconds"]}
